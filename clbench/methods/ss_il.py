"""SS-IL, separated softmax for incremental learning (Ahn et al., ICCV 2021), as in its authors' code
(hongjoon0805/SS-IL-Official 8c32381, trainer/ssil.py; rivals.md section 1).

Step, task t (C classes per task, P = tC past classes, S = (t+1)C), one training-mode forward of
the stream batch (B rows) concatenated with a replay minibatch (R rows, from task 1 on):
- ``ce``: (sum over stream rows of CE(z[:, P:S], y) + sum over replayed rows of CE(z[:, :P], y))
  / (B + R): the stream rows' softmax is over the current task's classes only, the replayed rows'
  over the past classes only (the current task excluded); task 0: the stream term over B.
- ``kd``: task-wise distillation from the network as it was at the end of the previous task
  (evaluation mode, no gradient) on the same rows: for each past task k < t,
  KL(softmax(old[:, block k] / 2) || softmax(z[:, block k] / 2)), summed over k, mean over the B + R
  rows, times T^2 = 4; option ``distill`` (1, the authors' code) weighs it (0 switches it off, as the
  AML re-implementation's best configurations do).

Memory, written at task ends only (replay sees past classes only): k = ceil(M / S) per class;
the task's new classes take the first k of their training samples in the training set's order,
old classes keep their first k (storage order); if that exceeds M, one row is dropped (the last)
from each of the (total - M) largest classes (a stable sort, ties to the higher class).

Where the general mask acts: nowhere. The stream term already is the masked softmax at m = -inf
(every class outside the row's task excluded, exactly; tests/test_methods.py), and the replayed
rows' softmax is sliced to the past classes: a general mask either changes nothing or replaces
SS-IL's own rule, so any mask is refused (compare SS-IL with ER under ``--mask``).

Departs from the authors' code, and why: the protocol's optimiser and schedule for every method
alike (plain SGD at the preset lr, the benchmark's epochs; the authors use momentum 0.9, weight
decay 1e-4, lr / (t + 1) and fewer epochs from task 1 on); replayed rows are the protocol's
uniform draws without replacement from the memory each step (the authors cycle a shuffled list of
exemplars); rows are augmented as the benchmark augments (no augmentation on seq-fmnist).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from clbench.lockstep.buffer import Memory
from clbench.lockstep.step import Step, concat, per_run_mean
from clbench.methods.base import Method, MethodContext, MethodOutput, TaskEnd

TEACHER, TEACHER_BN = "teacher.", "teacher_bn."
KD_TEMPERATURE = 2.0  # hard-coded in the authors' code


def teacher_of(state) -> tuple[dict, dict]:
    """The frozen network's parameters and BatchNorm statistics stored in a method state."""
    params = {k[len(TEACHER) :]: v for k, v in state.items() if k.startswith(TEACHER)}
    bn = {k[len(TEACHER_BN) :]: v for k, v in state.items() if k.startswith(TEACHER_BN)}
    return params, bn


def with_teacher(ctx: MethodContext) -> dict[str, torch.Tensor]:
    """``ctx.state`` with the teacher replaced by a copy of the current network."""
    state = {k: v for k, v in ctx.state.items() if not k.startswith((TEACHER, TEACHER_BN))}
    state.update({TEACHER + k: v.detach().clone() for k, v in ctx.params.items()})
    state.update({TEACHER_BN + k: v.detach().clone() for k, v in ctx.bn.items()})
    return state


def taskwise_kd(z: torch.Tensor, old: torch.Tensor, n_past_tasks: int, per_task: int) -> torch.Tensor:
    """(R, N): sum over past tasks k of KL(softmax(old_k / T) || softmax(z_k / T)), T = 2, per row."""
    shape = (*z.shape[:-1], n_past_tasks, per_task)
    cols = n_past_tasks * per_task
    log_new = F.log_softmax(z[..., :cols].reshape(shape) / KD_TEMPERATURE, -1)
    log_old = F.log_softmax(old[..., :cols].reshape(shape) / KD_TEMPERATURE, -1)
    return (log_old.exp() * (log_old - log_new)).sum((-1, -2))


def ssil_memory(ctx: MethodContext) -> Memory:
    """SS-IL's end-of-task memory (see the module docstring), for every run."""
    mem, data, t = ctx.memory, ctx.data, ctx.task
    seen = (t + 1) * ctx.classes_per_task
    train_y = data.train_y.cpu().numpy()
    x, y, task = mem.x.clone(), mem.y.clone(), mem.task.clone()
    held = np.zeros(ctx.n_runs, dtype=np.int64)
    for r, size in enumerate(ctx.buffer_sizes):
        k = math.ceil(size / seen)
        stored = mem.y[r, : mem.held[r]].cpu().numpy()
        rows: list[tuple[np.ndarray, np.ndarray]] = []  # per class: (memory slots, training rows)
        for c in range(seen):
            if c < t * ctx.classes_per_task:
                rows.append((np.flatnonzero(stored == c)[:k], np.zeros(0, dtype=np.int64)))
            else:
                rows.append((np.zeros(0, dtype=np.int64), np.flatnonzero(train_y == c)[:k]))
        counts = np.array([len(a) + len(b) for a, b in rows])
        for c in np.argsort(counts, kind="stable")[len(counts) - max(int(counts.sum()) - size, 0) :]:
            a, b = rows[c]
            rows[c] = (a[:-1], b) if len(a) else (a, b[:-1])
        slots = torch.from_numpy(np.concatenate([a for a, _ in rows])).to(mem.y.device)
        new = torch.from_numpy(np.concatenate([b for _, b in rows])).to(mem.y.device)
        old_x, old_y = mem.x[r, slots], mem.y[r, slots]
        # Classes in order: the old ones' kept rows, then the new classes' first samples.
        n_old, n_new = len(slots), len(new)
        x[r, :n_old], y[r, :n_old] = old_x, old_y
        x[r, n_old : n_old + n_new], y[r, n_old : n_old + n_new] = data.train_x[new], data.train_y[new]
        task[r, : n_old + n_new] = data.class_task[y[r, : n_old + n_new]]
        held[r] = n_old + n_new
    return Memory(x, y, task, mem.logits, held)


class SSIL(Method):
    name = "ss_il"
    replay_draws = 1
    replay_from_task = 1  # the memory is written at task ends
    uses_buffer = True
    inserts_stream = False
    mask_acts_on = ()  # its softmaxes are already sliced (stream rows: the mask at m = -inf)
    options = {"distill": 1.0}
    loss_terms_names = ("ce", "kd")
    run_notes = (
        "ss_il: SS-IL's stream cross-entropy is the masked softmax at m = -inf (current task's classes), "
        "its replayed rows' is over the past classes only: no general mask; plain SGD under the protocol "
        "(no momentum, weight decay or lr / (t + 1)); memory rebuilt at task ends, ceil(M / S) per class",
    )

    def loss_terms(self, step: Step) -> MethodOutput:
        t, ct = step.task, step.class_task
        batch = concat(step.stream, step.replay[0]) if step.replay else step.stream
        z = step.forward(batch)
        own = torch.where(batch.from_buffer.unsqueeze(-1), ct < t, ct == t)  # (N, K) the row's softmax
        if batch.valid is not None:  # padding rows (weight 0) keep every class: no -inf target
            own = own | (batch.valid == 0).unsqueeze(-1)
        ce = step.cross_entropy(z, batch, inactive=~own)
        if t == 0 or not step.replay:
            return MethodOutput({"ce": ce, "kd": torch.zeros_like(ce)})
        params, bn = teacher_of(step.state)
        with torch.no_grad():
            old, _ = step.net.forward(params, bn, batch.x, train=False)
        c = ct.numel() // step.n_tasks
        kd = KD_TEMPERATURE**2 * per_run_mean(taskwise_kd(z, old, t, c), batch.valid)
        return MethodOutput({"ce": ce, "kd": float(step.options["distill"]) * kd})

    def end_task(self, ctx: MethodContext) -> TaskEnd:
        return TaskEnd(with_teacher(ctx), ssil_memory(ctx))
