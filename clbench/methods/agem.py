"""A-GEM (Chaudhry et al. 2019, arXiv 1812.00420), as in Mammoth's agem.

Step: g = gradient of the cross-entropy of the incoming batch (all classes); once the memory holds
samples, g_ref = gradient of the cross-entropy of a replayed minibatch, and the applied gradient
is g - (g.g_ref / g_ref.g_ref) g_ref where g.g_ref < 0, else g. Dot products are over all
parameters of the run, per run. Both forwards move BatchNorm statistics; the logged loss is the
stream cross-entropy alone (``ce``).

Where the general mask acts: on the stream cross-entropy, the loss (``--mask-on stream``). The
buffer's cross-entropy only sets the projection's reference and is never part of the loss, so a
mask on the buffer (``--mask-on buffer`` or ``both``) is refused: it would change the reference, never a
loss the mask is about.

Memory: written at task ends only, ``floor(M / T)`` samples of the task drawn uniformly without
replacement (DER-paper version of Mammoth, [M20]); current Mammoth keeps the task's first
mini-batch whatever M is, which would make the buffer size meaningless. Task t's samples are
appended after the rows already held, raw (replays are augmented like every replayed row).

Checked against the DER-paper Mammoth's rule step by step (tests/test_agem_reference.py: from the
same weights, stream batch and memory rows, the stream gradient, the reference gradient, the
applied gradient and the update agree to float32 rounding, through MKL and oneDNN alike; the
memory holds M / T raw rows per earlier task; a plain reference run from the same start on the
same draws ends at the same weights). A run's numbers are chaotic in that rounding: the
projection amplifies it (relative error of an update against float64 up to 1e-2, the same for a
plain float32 implementation of the rule), so two exact implementations on identical draws end
seeds apart (seq-fmnist, M 200, seed 3: class-IL FAA 47.4 here, 38.6 for the plain reference).
Compare A-GEM with any other implementation by means over many seeds (about 6 points of standard
deviation per seed there; a 4-point gap at 16 seeds a side was gone at 40).
"""

from __future__ import annotations

import numpy as np
import torch

from clbench.lockstep.buffer import Memory
from clbench.lockstep.step import Step
from clbench.methods.base import Method, MethodContext, MethodOutput, TaskEnd


def project(grads, reference) -> tuple[torch.Tensor, ...]:
    """A-GEM's projection, per run: ``g - (g.r / r.r) r`` for the runs whose ``g.r < 0``, else ``g``
    (a run with a zero reference keeps ``g``). Per-parameter tensors with a leading run axis."""
    dot = sum((g * r).flatten(1).sum(1) for g, r in zip(grads, reference))
    ref_sq = sum(r.flatten(1).pow(2).sum(1) for r in reference)
    coef = torch.where(dot < 0, dot / torch.where(ref_sq > 0, ref_sq, 1.0), 0.0)
    return tuple(g - coef.view(-1, *([1] * (g.dim() - 1))) * r for g, r in zip(grads, reference))


class AGEM(Method):
    name = "agem"
    replay_draws = 1
    replay_from_task = 1
    uses_buffer = True
    inserts_stream = False
    reads_task_rows = True  # fills its memory from the task's (n,) rows
    mask_acts_on = ("stream",)  # the buffer's cross-entropy is only the projection's reference
    loss_terms_names = ("ce",)

    def loss_terms(self, step: Step) -> MethodOutput:
        ce = step.cross_entropy(step.forward(step.stream), step.stream)
        if not step.replay:
            return MethodOutput({"ce": ce})
        buf = step.replay[0]
        return MethodOutput({"ce": ce}, reference={"replay_ce": step.cross_entropy(step.forward(buf), buf)})

    def edit_gradients(self, step, grads, reference):
        return project(grads, reference)

    def end_task(self, ctx: MethodContext) -> TaskEnd:
        mem, data, t = ctx.memory, ctx.data, ctx.task
        rows = data.train_task_idx[t].cpu().numpy()
        quota = [size // data.n_tasks for size in ctx.buffer_sizes]
        width = max(quota)
        chosen = np.full((ctx.n_runs, width), -1, dtype=np.int64)
        for r, (rng, q) in enumerate(zip(ctx.rngs, quota)):
            chosen[r, :q] = rows[rng.choice(len(rows), size=min(q, len(rows)), replace=False)] if q else []
        chosen_t = torch.from_numpy(chosen).to(data.device)
        take = chosen_t >= 0
        src = chosen_t.clamp(min=0)
        # Appended after the rows already held: task t's samples fill the next slots.
        slots = torch.from_numpy(mem.held).to(data.device).unsqueeze(1) + torch.arange(width, device=data.device)
        x, y, task = mem.x.clone(), mem.y.clone(), mem.task.clone()
        for r in range(ctx.n_runs):  # a few rows per run, once per task
            keep = take[r]
            x[r, slots[r, keep]] = data.train_x[src[r, keep]]
            y[r, slots[r, keep]] = data.train_y[src[r, keep]]
            task[r, slots[r, keep]] = data.class_task[data.train_y[src[r, keep]]]
        held = mem.held + take.sum(1).cpu().numpy()
        return TaskEnd(dict(ctx.state), Memory(x, y, task, mem.logits, held))
