"""LODE on ER, loss decoupling (Liang & Li, NeurIPS 2023), as in its authors' code
(liangyanshuo/Loss-Decoupling-for-Task-Agnostic-Continual-Learning 10c72cd, code/models/lode_er.py;
rivals.md section 2).

"Old" classes are the past tasks' [0, P), "new" ones the rest [P, K) (the current task's and the
future ones). Step, task t >= 1, buffer non-empty, stream logits z:
- ``ce`` (LODE's intra term): CE(z with the old classes excluded, y), a softmax over the current
  and future classes, mean over the stream rows;
- ``inter``: rho / t x the mean over the stream rows of CE over the two scores
  [LSE(z[old]), LSE(z[new])] with target "new" (= LSE(z) - LSE(z[new])); with rho / t = 1,
  ``ce`` + ``inter`` is exactly the stream's plain cross-entropy over all K classes;
- ``replay_ce``: CE over all K classes on a replay minibatch (a separate forward);
- LODE-ER halves the sum: loss = (inter + ce + replay_ce) / 2 (each term is recorded halved).
Task 0 with a non-empty buffer: (CE(z, y) + replay_ce) / 2; the very first step (empty buffer):
CE(z, y). Reservoir insertion after every step, as ER. Option ``rho`` (0.1: the authors'
best_args for seq-cifar10 with buffer 500, the split closest to seq-fmnist's 5 x 2; they have no
default and no MNIST presets).

Where the general mask acts: the stream term ``ce`` (stream rows) and ``replay_ce`` (buffer
rows), as for ER. On stream rows the mask replaces LODE's own rule on the columns it masks (the
old classes and, unlike LODE, the future ones: m = -inf makes ``ce`` a softmax over the current
task only); the ``inter`` term is never masked.

Departs from the authors' code: old classes are excluded with -inf where they lower them by 1e9
(the same softmax in float32: their share underflows to 0 either way).
"""

from __future__ import annotations

import torch

from clbench.lockstep.step import Step
from clbench.methods.base import Method, MethodOutput


def lode_stream_terms(step: Step, z: torch.Tensor, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LODE's two stream terms (R,), unweighted by LODE-ER's halving: the intra-new cross-entropy
    (old classes excluded, the general mask on top) and rho / t x the old-vs-new term. Task 0:
    the plain (masked) cross-entropy and zero."""
    t, ct = step.task, step.class_task
    if t == 0:
        ce = step.cross_entropy(z, step.stream)
        return ce, torch.zeros_like(ce)
    old = ct < t
    intra = step.cross_entropy(z, step.stream, inactive=old)
    lse_new = z.masked_fill(old, float("-inf")).logsumexp(-1)
    inter_row = z.logsumexp(-1) - lse_new  # CE over [LSE(old), LSE(new)], target "new"
    valid = step.stream.valid
    inter = inter_row.mean(1) if valid is None else (inter_row * valid).sum(1) / valid.sum(1).clamp(min=1)
    return intra, (rho / t) * inter


class LODE(Method):
    name = "lode"
    replay_draws = 1
    uses_buffer = True
    options = {"rho": 0.1}
    loss_terms_names = ("ce", "inter", "replay_ce")

    def loss_terms(self, step: Step) -> MethodOutput:
        z = step.forward(step.stream)
        ce, inter = lode_stream_terms(step, z, float(step.options["rho"]))
        if not step.replay:  # the first step: nothing to replay, CE alone (no halving)
            return MethodOutput({"ce": ce, "inter": inter, "replay_ce": torch.zeros_like(ce)})
        buf = step.replay[0]
        replay_ce = step.cross_entropy(step.forward(buf), buf)
        return MethodOutput({"ce": ce / 2, "inter": inter / 2, "replay_ce": replay_ce / 2})
