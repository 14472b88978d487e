"""WA, weight aligning (Zhao et al., CVPR 2020, arXiv 1911.07053), as in PyCIL's code
(G-U-N/PyCIL 87cc411, models/wa.py; rivals.md section 5), on experience replay.

Step, task t (C classes per task, P = tC past classes, S = (t+1)C seen), lambda = P / S:
- ``ce``: (1 - lambda) x CE over the seen classes [0, S) (the future ones excluded: PyCIL's head has
  only S outputs), mean over the stream batch concatenated with a replay minibatch (as ER);
- ``kd``: lambda x the mean over the same rows of -sum_{c < P} softmax(old_c / 2) log softmax(z_c / 2),
  old = the network as it was at the previous task's end (after its alignment; evaluation mode, no
  gradient); T = 2, no T^2 factor (PyCIL's _KD_loss). Task 0: lambda = 0, plain CE.
End of task t >= 1, weight aligning: gamma = mean L2 norm of the old classes' rows [0, P) of the
classifier's weight / mean norm of the new classes' rows [P, S); the new rows are multiplied by
gamma (per run). The classifier's bias, the future classes' rows and the rest of the network are
untouched; the network trains on from the aligned weights and becomes the next task's teacher.

Where the general mask acts: stream and replayed rows, on the CE (as ER): on the rows it masks the
mask replaces WA's own exclusion of the future classes by m on the columns it masks; KD is never
masked.

Departs from PyCIL's code, and why: replay is ER's (a reservoir buffer written after every step,
a uniform minibatch drawn each step, concatenated with the stream batch) where PyCIL merges a
herding memory of M / S exemplars per class into the task's training set: the protocol's buffer
for every method alike; the protocol's optimiser and epochs (plain SGD, no momentum, weight decay
or schedule; PyCIL: SGD momentum 0.9, a separate first-task schedule); the alignment is applied
once per task end (PyCIL calls it twice, the second gamma ~ 1); the head has K outputs from the
start with the future classes excluded from the CE (the same softmax as a head grown to S).
The end-of-task alignment runs between two checkpoints: an interruption there redoes it from the
checkpoint before it (the same bits), it is not checkpointed inside.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from clbench.lockstep.backbones import Params
from clbench.lockstep.step import Batch, Step, concat, per_run_mean
from clbench.methods.base import Method, MethodContext, MethodOutput, TaskEnd
from clbench.methods.ss_il import teacher_of, with_teacher

KD_TEMPERATURE = 2.0  # PyCIL's T


def seen_cross_entropy(step: Step, z: torch.Tensor, batch: Batch) -> torch.Tensor:
    """(R,) CE over the classes of tasks 0..t (future classes excluded, -inf; padding rows keep all)."""
    future = (step.class_task > step.task).view(1, 1, -1)
    if batch.valid is not None:  # a padding row (weight 0) may carry any label: no -inf target
        future = future & (batch.valid > 0).unsqueeze(-1)
    return step.cross_entropy(z, batch, inactive=future)


def past_kd(z: torch.Tensor, old: torch.Tensor, n_past: int, valid: torch.Tensor | None) -> torch.Tensor:
    """(R,) mean over rows of -sum_{c < P} softmax(old_c / T) log softmax(z_c / T), T = 2."""
    target = F.softmax(old[..., :n_past] / KD_TEMPERATURE, -1)
    per_row = -(target * F.log_softmax(z[..., :n_past] / KD_TEMPERATURE, -1)).sum(-1)
    return per_run_mean(per_row, valid)


def teacher_logits(step: Step, batch: Batch) -> torch.Tensor:
    """The frozen network's logits (evaluation mode, no gradient) of ``batch``."""
    params, bn = teacher_of(step.state)
    with torch.no_grad():
        return step.net.forward(params, bn, batch.x, train=False)[0]


def head_weight(params: Params) -> tuple[str, int]:
    """The classifier's weight and its class axis: the MLP's last ``w{i}`` (R, K, D), the ResNet's
    ``fc.weight`` (R, D, K)."""
    if "fc.weight" in params:
        return "fc.weight", 2
    last = max(int(k[1:]) for k in params if k.startswith("w"))
    return f"w{last}", 1


def align_weights(params: Params, n_past: int, n_seen: int) -> Params:
    """``params`` with the new classes' rows [P, S) of the classifier's weight scaled by gamma = mean
    norm of the old rows [0, P) / mean norm of the new rows (per run); nothing else changes."""
    name, axis = head_weight(params)
    w = params[name]
    norms = w.norm(dim=3 - axis)  # (R, K): the L2 norm of each class's row
    gamma = norms[:, :n_past].mean(1) / norms[:, n_past:n_seen].mean(1)  # (R,)
    scale = torch.ones_like(norms)
    scale[:, n_past:n_seen] = gamma.unsqueeze(1)
    out = dict(params)
    out[name] = w * scale.unsqueeze(3 - axis)
    return out


class WA(Method):
    name = "wa"
    replay_draws = 1
    uses_buffer = True
    loss_terms_names = ("ce", "kd")
    run_notes = (
        "wa: ER's replay with PyCIL's WA loss ((1 - P/S) CE over seen classes + P/S KD at T = 2 from the "
        "previous task's network) and weight aligning of the new classes' head rows at every task end; "
        "plain SGD under the protocol (no momentum, weight decay or schedule)",
    )

    def loss_terms(self, step: Step) -> MethodOutput:
        t = step.task
        batch = concat(step.stream, step.replay[0]) if step.replay else step.stream
        z = step.forward(batch)
        ce = seen_cross_entropy(step, z, batch)
        if t == 0:
            return MethodOutput({"ce": ce, "kd": torch.zeros_like(ce)})
        c = step.class_task.numel() // step.n_tasks
        lam = t / (t + 1)  # P / S
        kd = past_kd(z, teacher_logits(step, batch), t * c, batch.valid)
        return MethodOutput({"ce": (1 - lam) * ce, "kd": lam * kd})

    def end_task(self, ctx: MethodContext) -> TaskEnd:
        if ctx.task == 0:
            return TaskEnd(with_teacher(ctx))
        c = ctx.classes_per_task
        params = align_weights(ctx.params, ctx.task * c, (ctx.task + 1) * c)
        return TaskEnd(with_teacher(dataclasses.replace(ctx, params=params)), params=params)
