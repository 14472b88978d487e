"""ER-AML, experience replay with an asymmetric metric-learning loss on the incoming data (Caccia
et al., ICLR 2022), as in its authors' code (pclucas14/AML 7c92936, methods/er_aml.py, buffer.py
sample_pos_neg; rivals.md section 6), task-aware (task_free 0).

Step, task 0: ``ce`` = CE of the stream batch (all K classes) and, once the buffer holds samples,
``replay_ce`` = CE of a replay minibatch (all K classes, a separate forward), as ER-AML's ER part.
From task 1 on the stream rows get no cross-entropy: for each stream sample a positive (same
class, not itself) and a negative (another class of the current task) are drawn uniformly from
the candidates; samples without both are dropped. ``supcon`` = SupCon between the L2-normalised
penultimate features (x / (|x| + 1e-5)) of the kept stream samples (anchors) and those of their
positives and negatives (the contrast set, every kept anchor's pair): per anchor, minus the mean
over the contrast rows of its class of log softmax(anchor . contrast / T) over the contrast rows,
times T / 0.07, mean over the anchors (option ``temperature`` T, 0.2: the AML code's default).
Three forwards per step (stream features, positive/negative features, replay logits); reservoir
insertion after the step, as ER.

Where the general mask acts: the replayed rows' cross-entropy (``--mask-on buffer``). A mask on the
stream (``stream`` or ``both``) is refused: after task 0 the stream rows have no softmax at all, and a
placement must act on every row it names.

Departs from the authors' code, and why: the candidates for positives and negatives are the
step's own rows, the stream batch and its replay minibatch, not the whole buffer plus the batch
(clbench's steps see the buffer through their replay draws only, so a run's draws stay those of
its seed alone in any group); negatives of the current task come mostly from the stream batch
either way. The authors' anchors are repeated twice, which leaves the mean unchanged. The
original uses a bias-free cosine head (10 x cosine): ``--head cosine`` gives it; the protocol's
linear head is the default, as for every method.
"""

from __future__ import annotations

import numpy as np
import torch

from clbench.lockstep.step import Batch, Step, concat
from clbench.methods.base import Method, MethodOutput

BASE_TEMPERATURE = 0.07  # the AML code's SupCon base temperature


def normalize(f: torch.Tensor) -> torch.Tensor:
    """The AML code's L2 normalisation: f / (|f| + 1e-5), per row."""
    return f / (f.norm(dim=-1, keepdim=True) + 1e-5)


def pick(candidates: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(R, B): for each row of ``candidates`` (R, B, P) bool, the candidate at rank floor(u n) among
    its n true ones (u (R, B) in [0, 1): a uniform choice); 0 where there is none."""
    n = candidates.sum(-1)
    rank = (u * n).floor().long().clamp(max=(n - 1).clamp(min=0))
    hit = candidates & (candidates.long().cumsum(-1) == (rank + 1).unsqueeze(-1))
    return hit.long().argmax(-1)


def supcon(
    anchors: torch.Tensor,
    anchor_y: torch.Tensor,
    contrast: torch.Tensor,
    contrast_y: torch.Tensor,
    keep: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """(R,) the AML code's SupCon over the kept anchors (``keep`` (R, B)); the contrast rows
    (R, 2B, D) are the anchors' positives then negatives, kept where their anchor is."""
    kept = torch.cat([keep, keep], 1)  # (R, 2B)
    logits = torch.bmm(anchors, contrast.transpose(1, 2)) / temperature  # (R, B, 2B)
    logits = logits.masked_fill(~kept.unsqueeze(1), float("-inf"))
    log_prob = logits - logits.logsumexp(-1, keepdim=True)
    same = (anchor_y.unsqueeze(-1) == contrast_y.unsqueeze(1)) & kept.unsqueeze(1)
    mean_pos = torch.where(same, log_prob, 0.0).sum(-1) / same.sum(-1).clamp(min=1)
    per_anchor = -(temperature / BASE_TEMPERATURE) * mean_pos
    return torch.where(keep, per_anchor, 0.0).sum(1) / keep.sum(1).clamp(min=1)


class ERAML(Method):
    name = "er_aml"
    replay_draws = 1
    uses_buffer = True
    mask_acts_on = ("buffer",)  # after task 0 the stream rows have no softmax cross-entropy
    options = {"temperature": 0.2}
    loss_terms_names = ("ce", "supcon", "replay_ce")
    run_notes = (
        "er_aml: no cross-entropy on stream rows after task 0 (SupCon on features), so the general mask acts "
        "on the replayed rows only; positives and negatives drawn from "
        "the step's stream batch and replay minibatch (the authors: the whole buffer and the batch)",
    )

    def train_draws(self, rng, n_steps, replay_rows, options):
        # One seed per step: the positive/negative choices of that step (its sizes vary) come from it alone.
        return {"seed": rng.integers(0, 2**62, size=n_steps, dtype=np.int64)}

    def loss_terms(self, step: Step) -> MethodOutput:
        if step.task == 0:
            ce = step.cross_entropy(step.forward(step.stream), step.stream)
            replay_ce = torch.zeros_like(ce)
            if step.replay:
                replay_ce = step.cross_entropy(step.forward(step.replay[0]), step.replay[0])
            return MethodOutput({"ce": ce, "supcon": torch.zeros_like(ce), "replay_ce": replay_ce})
        stream, buf = step.stream, step.replay[0]
        pairs, keep = self._pairs(step, concat(stream, buf))
        anchors = normalize(step.features(stream))
        contrast = normalize(step.features(pairs))
        loss = supcon(anchors, stream.y, contrast, pairs.y, keep, float(step.options["temperature"]))
        replay_ce = step.cross_entropy(step.forward(buf), buf)
        return MethodOutput({"ce": torch.zeros_like(loss), "supcon": loss, "replay_ce": replay_ce})

    @staticmethod
    def _pairs(step: Step, pool: Batch) -> tuple[Batch, torch.Tensor]:
        """Each stream row's positive and negative from ``pool`` (the stream rows, then the replayed
        ones), as one batch (positives, then negatives), and which stream rows have both."""
        r, b, device = pool.y.shape[0], len(step.stream), pool.y.device
        ok = torch.ones_like(pool.y, dtype=torch.bool) if pool.valid is None else pool.valid > 0
        same = step.stream.y.unsqueeze(-1) == pool.y.unsqueeze(1)  # (R, B, P)
        itself = torch.eye(b, pool.y.shape[1], dtype=torch.bool, device=device)
        positive = same & ~itself & ok.unsqueeze(1)
        negative = ~same & (pool.task == step.task).unsqueeze(1) & ok.unsqueeze(1)
        keep = positive.any(-1) & negative.any(-1)
        u = torch.stack(
            [torch.rand((2, b), generator=torch.Generator().manual_seed(int(s))) for s in step.draws["seed"].tolist()]
        ).to(device)
        idx = torch.cat([pick(positive, u[:, 0]), pick(negative, u[:, 1])], 1)  # (R, 2B)
        rows = torch.arange(r, device=device).unsqueeze(1)
        pairs = Batch(
            pool.x[rows, idx],
            pool.y.gather(1, idx),
            pool.task.gather(1, idx),
            torch.zeros(2 * b, dtype=torch.bool, device=device),
        )
        return pairs, keep
