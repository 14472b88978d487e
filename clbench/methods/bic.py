"""BiC, bias correction (Wu et al., CVPR 2019), as in Mammoth's code (aimagelab/mammoth, models/bic.py;
rivals.md section 4), on experience replay.

Step, task t (C classes per task, P = tC past classes, S = (t+1)C seen), lambda = 1 / (t + 1)
(Mammoth; 0 on task 0), one forward of the stream batch concatenated with a replay minibatch (as ER):
- ``ce``: (1 - lambda) x CE over the seen classes [0, S) (the future ones excluded), mean over the rows;
- ``kd``: lambda x T^2 x the mean over the rows of -sum_{c < P} softmax(old_c / T) log softmax(z_c / T),
  T = ``temperature`` (2), old = the network as it was at the previous task's end (evaluation mode,
  no gradient) with that task's bias correction applied to its block (``distill_after_bias`` 1,
  Mammoth's distill_after_bic).
Validation set: at the end of task t - 1, round(``val_split`` x the rows the buffer holds) of task t's
training rows are drawn (each run from its own generator) and held out of task t's training (and so
of the buffer); at the end of task t the same number of the buffer's rows of past classes are drawn
beside them (Mammoth: each buffer row with probability ``val_split``, and as many current rows).
Bias stage, end of task t >= 1: the network fixed (evaluation mode), two parameters per run (alpha,
beta) = (1, 0) on the newest block's logits, z[P:S] -> alpha z[P:S] + beta; Adam (lr ``bias_lr``
1e-3, Mammoth's betas and eps) on CE over [0, S) of the corrected logits, ``bias_epochs`` (250)
passes over the validation set in a fresh order each (each run's own generator), batches of the
benchmark's batch size. At evaluation the newest block's logits are corrected (Mammoth deletes the
correction at the next task's start; it then only corrects the teacher's outputs).

Where the general mask acts: stream and replayed rows, on the CE (as ER): on the rows it masks the
mask replaces BiC's own exclusion of the future classes by m on the columns it masks. KD and the
bias stage's CE (a calibration on held-out rows) are never masked.

Departs from Mammoth's code, and why: replay is ER's (a reservoir buffer written after every step, a
uniform minibatch each step) where Mammoth merges its buffer into the task's training set and rebuilds
the buffer at task ends: the protocol's buffer for every method alike; so the buffer's validation
rows are drawn at the task's end and were replayed during the task (Mammoth holds them out of the
task's training), only the current task's validation rows are held out; a fixed number of validation
rows (Mammoth: a random number, each buffer row with probability val_split); the protocol's optimiser
and epochs; Adam is written out (torch's Adam formula, with a step count per run, so that a run
whose validation rows are used up takes no step and its numbers do not depend on its group); the
validation rows are not augmented. Other implementations differ (rivals.md section 4: FACIL, PyCIL and the
SS-IL authors' BiC use lambda = P / S and no T^2, SGD for the bias stage, a bias layer per task).
The bias stage is the trainer's end-of-task passes (``end_pass``: one pass over the validation rows
each, its tensors and Adam's moments in the method state), checkpointed between passes like steps:
a group stopped inside it resumes to the same bits.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from clbench.data.loading import prepare_inputs
from clbench.lockstep.step import Step, concat, per_run_mean
from clbench.methods.base import Method, MethodContext, MethodOutput, TaskEnd
from clbench.methods.ss_il import with_teacher
from clbench.methods.wa import seen_cross_entropy, teacher_logits

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch's Adam defaults, as Mammoth uses them


def corrected(z: torch.Tensor, bias: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """``z`` (R, N, K) with the ``block`` (K,) columns mapped to alpha z + beta, ``bias`` (R, 2) = (alpha, beta)."""
    alpha, beta = bias[:, 0].view(-1, 1, 1), bias[:, 1].view(-1, 1, 1)
    return torch.where(block, z * alpha + beta, z)


def kd_with_temperature(z: torch.Tensor, old: torch.Tensor, n_past: int, temp: float, valid) -> torch.Tensor:
    """(R,) mean over rows of -sum_{c < P} softmax(old_c / T) log softmax(z_c / T)."""
    target = F.softmax(old[..., :n_past] / temp, -1)
    return per_run_mean(-(target * F.log_softmax(z[..., :n_past] / temp, -1)).sum(-1), valid)


STAGE = "stage."  # the bias stage's tensors in the method state, while it runs


def bias_pass(stage: dict[str, torch.Tensor], block: torch.Tensor, rngs, lr: float, batch: int) -> dict:
    """One pass of the bias stage over the validation rows in a fresh order (each run's valid rows
    from its own generator, its padding rows after them), Adam on CE over the seen classes of the
    corrected logits. ``stage``: ``z`` (R, n, S) logits, ``y`` (R, n), ``w`` (R, n) 1/0, ``bias``
    (R, 2) = (alpha, beta), Adam's ``m``, ``v`` (R, 2) and ``k`` (R, 1) steps taken; returns the new one."""
    z, y, valid = stage["z"], stage["y"], stage["w"]
    bias, m, v, k = stage["bias"], stage["m"], stage["v"], stage["k"]
    n, n_seen, (b1, b2) = y.shape[1], z.shape[-1], ADAM_BETAS
    counts = valid.sum(1).to(torch.int64).tolist()
    order = np.stack([np.concatenate([rng.permutation(c), np.arange(c, n)]) for rng, c in zip(rngs, counts)])
    order_t = torch.from_numpy(order).to(z.device)
    for s in range(math.ceil(max(counts) / batch)):
        idx = order_t[:, s * batch : (s + 1) * batch]
        w = valid.gather(1, idx)
        p = bias.clone().requires_grad_(True)
        zb = corrected(z.gather(1, idx.unsqueeze(-1).expand(-1, -1, n_seen)), p, block[:n_seen])
        ce = F.cross_entropy(zb.flatten(0, 1), y.gather(1, idx).flatten(), reduction="none").view(idx.shape)
        (g,) = torch.autograd.grad(per_run_mean(ce, w).sum(), p)
        step = w.sum(1, keepdim=True) > 0  # a run whose rows are done takes no step
        k = k + step.to(k.dtype)
        m = torch.where(step, m * b1 + g * (1 - b1), m)
        v = torch.where(step, v * b2 + g * g * (1 - b2), v)
        kk = k.clamp(min=1.0)
        denom = (v.sqrt() / (1 - b2**kk).sqrt()) + ADAM_EPS
        bias = torch.where(step, bias - (lr / (1 - b1**kk)) * m / denom, bias)
    return {**stage, "bias": bias.detach(), "m": m, "v": v, "k": k}


def start_stage(z: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
    """The bias stage before its first pass: (alpha, beta) = (1, 0), Adam's moments zero."""
    bias = torch.tensor([[1.0, 0.0]] * y.shape[0], device=z.device)
    k = torch.zeros((y.shape[0], 1), device=z.device)
    return {"z": z, "y": y, "w": valid, "bias": bias, "m": torch.zeros_like(bias), "v": torch.zeros_like(bias), "k": k}


def fit_bias(
    z: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, block: torch.Tensor, n_seen: int, rngs, options, batch: int
) -> torch.Tensor:
    """(R, 2) (alpha, beta) after ``bias_epochs`` passes of ``bias_pass`` over the validation rows
    (logits ``z`` (R, n, K), labels ``y``, ``valid`` (R, n) 1/0)."""
    stage = start_stage(z[..., :n_seen], y, valid)
    for _ in range(int(options["bias_epochs"])):
        stage = bias_pass(stage, block, rngs, float(options["bias_lr"]), batch)
    return stage["bias"]


class BiC(Method):
    name = "bic"
    replay_draws = 1
    uses_buffer = True
    group_by_buffer_size = True  # the held-out rows' count follows the buffer: equal pools per group
    reads_task_rows = True  # holds out rows of the next task's (n,) rows
    options = {"bias_epochs": 250, "bias_lr": 1e-3, "temperature": 2.0, "val_split": 0.1, "distill_after_bias": 1}
    option_ranges = {
        "bias_epochs": ">= 0",
        "bias_lr": ">= 0",
        "temperature": "> 0",  # divides the logits
        "val_split": "0..<1",  # the share of each class's memory held out; all of it leaves none to replay
        "distill_after_bias": "0..1",  # a switch
    }
    loss_terms_names = ("ce", "kd")
    run_notes = (
        "bic: ER's replay with Mammoth's BiC loss ((1 - 1/(t+1)) CE over seen classes + 1/(t+1) T^2 KD from "
        "the previous task's bias-corrected network) and a two-parameter bias layer on the newest task's "
        "logits fitted at every task end on held-out rows; plain SGD under the protocol",
    )

    def init_state(self, ctx: MethodContext) -> dict[str, torch.Tensor]:
        o = ctx.options
        if not 0 <= float(o["val_split"]) < 1 or int(o["bias_epochs"]) < 0 or not float(o["temperature"]) > 0:
            raise ValueError(
                f"bic: val_split must be in [0, 1), bias_epochs at least 0 and temperature above 0, got "
                f"{o['val_split']}, {o['bias_epochs']} and {o['temperature']}"
            )
        device = ctx.data.device
        return {
            "bias": torch.tensor([[1.0, 0.0]] * ctx.n_runs, device=device),
            "val_rows": torch.zeros((ctx.n_runs, 0), dtype=torch.int64, device=device),
        }

    def task_rows(self, ctx: MethodContext, rows: torch.Tensor) -> torch.Tensor | None:
        held_out = ctx.state["val_rows"]
        if ctx.task == 0 or held_out.shape[1] == 0:
            return None
        return torch.stack([rows[~torch.isin(rows, held_out[r])] for r in range(ctx.n_runs)])

    def loss_terms(self, step: Step) -> MethodOutput:
        t = step.task
        batch = concat(step.stream, step.replay[0]) if step.replay else step.stream
        z = step.forward(batch)
        ce = seen_cross_entropy(step, z, batch)
        if t == 0:
            return MethodOutput({"ce": ce, "kd": torch.zeros_like(ce)})
        old = teacher_logits(step, batch)
        if int(step.options["distill_after_bias"]):
            old = corrected(old, step.state["bias"], step.class_task == t - 1)
        lam, temp = 1 / (t + 1), float(step.options["temperature"])
        c = step.class_task.numel() // step.n_tasks
        kd = kd_with_temperature(z, old, t * c, temp, batch.valid)
        return MethodOutput({"ce": (1 - lam) * ce, "kd": lam * temp**2 * kd})

    def end_task(self, ctx: MethodContext) -> TaskEnd:
        """The teacher, the next task's held-out rows and, from task 1 on, the bias stage's start
        (its passes are ``end_pass``; the held-out rows take the current ones' place after the last)."""
        state = with_teacher(ctx)
        nxt = self._held_out_rows(ctx)
        if ctx.task >= 1 and int(ctx.options["bias_epochs"]) > 0 and ctx.state["val_rows"].shape[1] > 0:
            state.update({STAGE + k: v for k, v in self._validation(ctx).items()})
            state["next_val_rows"] = nxt
        else:
            state["bias"], state["val_rows"] = torch.tensor([[1.0, 0.0]] * ctx.n_runs, device=nxt.device), nxt
        return TaskEnd(state)

    def end_passes(self, options) -> int:
        return int(options["bias_epochs"])

    def end_pass(self, ctx: MethodContext, i: int) -> dict[str, torch.Tensor]:
        if STAGE + "z" not in ctx.state:  # task 0 (or no validation rows): no bias stage
            return dict(ctx.state)
        stage = {k[len(STAGE) :]: v for k, v in ctx.state.items() if k.startswith(STAGE)}
        block = ctx.data.class_task == ctx.task
        stage = bias_pass(stage, block, ctx.rngs, float(ctx.options["bias_lr"]), ctx.batch_size)
        state = {k: v for k, v in ctx.state.items() if not k.startswith(STAGE)}
        if i + 1 < self.end_passes(ctx.options):
            return {**state, **{STAGE + k: v for k, v in stage.items()}}
        state["bias"], state["val_rows"] = stage["bias"], state.pop("next_val_rows")
        return state

    def _validation(self, ctx: MethodContext) -> dict[str, torch.Tensor]:
        """The bias stage's start on this task's held-out rows and as many buffer rows of past classes."""
        data, mem, new = ctx.data, ctx.memory, ctx.state["val_rows"]
        n, n_past, n_seen = new.shape[1], ctx.task * ctx.classes_per_task, (ctx.task + 1) * ctx.classes_per_task
        slots = np.zeros((ctx.n_runs, n), dtype=np.int64)
        valid = np.zeros((ctx.n_runs, 2 * n), dtype=np.float32)
        valid[:, :n] = 1.0
        for r, rng in enumerate(ctx.rngs):
            past = np.flatnonzero(mem.y[r, : mem.held[r]].cpu().numpy() < n_past)
            pick = rng.choice(past, size=min(n, len(past)), replace=False)
            slots[r, : len(pick)], valid[r, n : n + len(pick)] = pick, 1.0
        slots_t = torch.from_numpy(slots).to(data.device)
        runs = torch.arange(ctx.n_runs, device=data.device).unsqueeze(1)
        x = torch.cat([data.train_x[new], mem.x[runs, slots_t]], 1)
        y = torch.cat([data.train_y[new], mem.y[runs, slots_t]], 1)
        z = ctx.forward(prepare_inputs(x, data.spec))[..., :n_seen]
        return start_stage(z, y, torch.from_numpy(valid).to(data.device))

    def _held_out_rows(self, ctx: MethodContext) -> torch.Tensor:
        """The next task's training rows held out for its bias stage, per run (R, n)."""
        data, t = ctx.data, ctx.task
        if t + 1 >= data.n_tasks:
            return torch.zeros((ctx.n_runs, 0), dtype=torch.int64, device=data.device)
        rows = data.train_task_idx[t + 1]
        counts = {min(round(float(ctx.options["val_split"]) * int(h)), len(rows) - 1) for h in ctx.memory.held}
        if len(counts) != 1:
            raise ValueError(f"bic: the runs of a group hold different numbers of buffer rows: {sorted(counts)}")
        n = counts.pop()
        picks = [torch.from_numpy(rng.choice(len(rows), size=n, replace=False)).to(rows.device) for rng in ctx.rngs]
        return torch.stack([rows[p] for p in picks])

    def classifier(self, ctx: MethodContext):
        if ctx.task == 0:
            return None
        bias, block = ctx.state["bias"], ctx.data.class_task == ctx.task

        def scores(x: torch.Tensor) -> torch.Tensor:
            return corrected(ctx.net.forward(ctx.params, ctx.bn, x, train=False)[0], bias, block)

        return scores
