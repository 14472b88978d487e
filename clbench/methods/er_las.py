"""ER-LAS, experience replay with a logit-adjusted softmax (Huang et al., TMLR 2024,
arXiv 2311.06460), as in its authors' code (K1nght/online_CL_logit_adjusted_softmax 5629441,
models/er_las.py; rivals.md section 3).

Step: X = the stream batch concatenated with a replay minibatch (once the buffer holds samples),
Y their labels. count[c] = how many rows of Y (stream and replayed, padding excluded) have class
c; the window keeps the last ``window`` steps' counts (option, 1: this step's only) and
record = their sum. ``ce`` = CE(f(X) + tau ln(record), Y) over all K classes, mean over the joint
batch (one forward, as ER). Classes absent from the window get tau ln(0) = -inf: the authors add
1e-50 to a float32 record, which underflows to 0, so absent classes are excluded exactly (rivals.md
reads it as -115 tau; in float32 it is -inf). Evaluation uses the plain network (no adjustment).
Reservoir insertion after every step, as ER. Options ``tau`` 1.0 and ``window`` 1 (the authors'
defaults and their README's examples; no tuned values per buffer exist).

Where the general mask acts: stream and buffer rows, on the adjusted logits, as for ER: on the
rows it masks the mask replaces the adjustment of the columns outside the row's task by m (the
two define those columns differently; the mask, when asked for, wins).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clbench.lockstep.step import Batch, Step, concat
from clbench.methods.base import Method, MethodContext, MethodOutput


def label_counts(batch: Batch, n_classes: int) -> torch.Tensor:
    """(R, K) how many valid rows of each run's batch have each class."""
    hot = F.one_hot(batch.y, n_classes).to(torch.float32)
    if batch.valid is not None:
        hot = hot * batch.valid.unsqueeze(-1)
    return hot.sum(1)


class ERLAS(Method):
    name = "er_las"
    replay_draws = 1
    uses_buffer = True
    options = {"tau": 1.0, "window": 1}
    loss_terms_names = ("ce",)

    def init_state(self, ctx: MethodContext) -> dict[str, torch.Tensor]:
        window = int(ctx.options["window"])
        if window < 1:
            raise ValueError(f"er_las: window must be at least 1 step, got {window}")
        return {"counts": torch.zeros((ctx.n_runs, window, ctx.data.n_classes), device=ctx.data.device)}

    def loss_terms(self, step: Step) -> MethodOutput:
        batch = concat(step.stream, step.replay[0]) if step.replay else step.stream
        z = step.forward(batch)
        history = step.state["counts"]
        counts = torch.cat([history[:, 1:], label_counts(batch, z.shape[-1]).unsqueeze(1)], 1)
        record, tau = counts.sum(1).unsqueeze(1), float(step.options["tau"])  # (R, 1, K)
        adjusted = z + tau * torch.log(record.clamp(min=1.0))
        # tau ln 0 = -inf: absent classes excluded (not on padding rows, weight 0, whose class may be absent).
        absent = (record == 0) & (tau > 0)
        if batch.valid is not None:
            absent = absent & (batch.valid > 0).unsqueeze(-1)
        return MethodOutput({"ce": step.cross_entropy(adjusted, batch, inactive=absent)}, state={"counts": counts})
