"""The general masked softmax (Kim, Kwon & Kim, arXiv 2309.14808), in one place.

Everything clbench knows about masking lives here: the loss itself (a pure function usable
without the rest of clbench), the mask specification of a run, and the active-class sets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def masked_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    active: torch.Tensor,
    mask_value: float | torch.Tensor | None,
    reduction: str = "mean",
    validate: bool = True,
) -> torch.Tensor:
    r"""Softmax cross-entropy with the general masked softmax.

    For logits ``z`` (``... x K``), a boolean ``active`` matrix of the same shape and a mask
    value ``m``::

        z~_ij  = z_ij  if active_ij  else  m          (m is a constant: stop-gradient)
        loss_i = -z_{i,y_i} + log( sum_{j active} exp(z_ij) + (K - |A_i|) * exp(m) )
        d loss_i / d z_ij = softmax(z~_i)_j - [j == y_i]   for active j,   0 for masked j

    ``m = -inf`` gives the classical masked softmax (a softmax over the active classes only); a
    finite ``m`` adds ``(K - |A_i|) e^m`` to the denominator, which scales the gradient on the
    active classes while masked classes receive none; ``mask_value=None`` is the unmasked
    baseline (``active`` is ignored).

    Args:
        logits: float tensor ``(..., K)``.
        targets: int64 tensor ``(...)``; each target must be active.
        active: bool tensor broadcastable to ``logits``.
        mask_value: a float (``-inf`` allowed, ``+inf``/NaN not), ``None``, or a tensor
            broadcastable to ``logits.shape[:-1]`` (one value per row, e.g. per run).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-row losses, shape ``(...)``).
        validate: check that ``mask_value`` is not NaN/+inf and that no target class is masked,
            raising ``ValueError`` (costs a device sync; the trainer validates configs instead).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if mask_value is None:
        masked = logits
    else:
        m = torch.as_tensor(mask_value, dtype=logits.dtype, device=logits.device)
        if validate:
            if bool(torch.isnan(m).any()) or bool((m == math.inf).any()):
                raise ValueError("mask_value must be -inf or a finite number, not NaN or +inf")
            target_active = torch.broadcast_to(active, logits.shape).gather(-1, targets.unsqueeze(-1))
            if not bool(target_active.all()):
                raise ValueError("every target class must be active (it is masked in some row)")
        # torch.where routes no gradient to the logits it does not select: the stop-gradient.
        masked = torch.where(active, logits, m.unsqueeze(-1) if m.dim() > 0 else m)
    k = logits.shape[-1]
    per_row = F.cross_entropy(masked.reshape(-1, k), targets.reshape(-1), reduction="none")
    per_row = per_row.reshape(targets.shape)
    if reduction == "none":
        return per_row
    return per_row.sum() if reduction == "sum" else per_row.mean()


def task_active_mask(task_ids: torch.Tensor, class_task: torch.Tensor) -> torch.Tensor:
    """Active-class matrix ``(..., K)``: class j is active for a row of task t iff it belongs to t.

    ``class_task[j]`` is the task of class j. Both earlier and later tasks' classes are inactive.
    """
    return class_task == task_ids.unsqueeze(-1)
