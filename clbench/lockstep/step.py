"""What a method sees of one training step: the batches, the network and the loss layer.

The loss layer is where the general masked softmax is applied, for every method alike: a method
asks for ``step.cross_entropy(logits, batch)`` and the trainer's per-run mask specs decide which
rows are masked (stream rows, buffer rows or both) and with which value. Methods never mask.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from clbench.masking import masked_cross_entropy, task_active_mask

if TYPE_CHECKING:  # a run's mask spec, read for its value and placement (clbench.runs is a layer above)
    from clbench.runs.mask import MaskSpec


@dataclass(frozen=True)
class Batch:
    """Rows for every run of a group; inputs already augmented and normalised."""

    x: torch.Tensor  # (R, N, C, H, W) float
    y: torch.Tensor  # (R, N) int64
    task: torch.Tensor  # (R, N) int64: the task each row's class belongs to
    from_buffer: torch.Tensor  # (N,) bool: replayed (True) or incoming stream (False) rows
    valid: torch.Tensor | None = None  # (R, N) float 1/0; None = all rows valid
    logits: torch.Tensor | None = None  # (R, N, K) logits stored with buffer rows (DER)

    def __len__(self) -> int:
        return self.y.shape[1]


def concat(a: Batch, b: Batch) -> Batch:
    """Rows of ``a`` then rows of ``b`` (e.g. ER's stream batch + buffer minibatch)."""

    def cat(u, v, fill):
        if u is None and v is None:
            return None
        u = u if u is not None else torch.full(a.y.shape, fill, device=a.y.device)
        v = v if v is not None else torch.full(b.y.shape, fill, device=b.y.device)
        return torch.cat([u, v], dim=1)

    return Batch(
        x=torch.cat([a.x, b.x], dim=1),
        y=torch.cat([a.y, b.y], dim=1),
        task=torch.cat([a.task, b.task], dim=1),
        from_buffer=torch.cat([a.from_buffer, b.from_buffer]),
        valid=cat(a.valid, b.valid, 1.0),
        logits=None,
    )


def per_run_mean(per_row: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean over each run's valid rows: (R, N) -> (R,). Zero for a run with no valid row."""
    if valid is None:
        return per_row.mean(dim=1)
    return (per_row * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)


def batch_present_classes(batch: Batch, n_classes: int) -> torch.Tensor:
    """(R, N, K) bool: the ``batch`` keep-set (ER-ACE's rule). For each run, a stream row keeps the
    classes present among that run's valid stream rows of the batch, a replayed row those present
    among its valid replayed rows; every row keeps its own class (a padding row's target stays live)."""
    onehot = F.one_hot(batch.y, n_classes).bool()  # (R, N, K)
    valid = torch.ones_like(batch.y, dtype=torch.bool) if batch.valid is None else batch.valid > 0
    present = [
        (onehot & (valid & (batch.from_buffer == side)).unsqueeze(-1)).any(dim=1, keepdim=True)  # (R, 1, K)
        for side in (False, True)
    ]
    by_row = torch.where(batch.from_buffer.view(1, -1, 1), present[1], present[0])
    return by_row | onehot


class LossLayer:
    """The trainer's loss functions, with each run's mask spec applied."""

    def __init__(self, masks: Sequence[MaskSpec], class_task: torch.Tensor):
        device = class_task.device
        self.class_task = class_task
        self.n_tasks = int(class_task.max()) + 1 if class_task.numel() else 0  # once per group, on the host
        self.any_masked = any(m.enabled for m in masks)
        # Unmasked runs get m = 0, never used: every class is active for their rows.
        self.mask_value = torch.tensor([m.value if m.enabled else 0.0 for m in masks], device=device).view(-1, 1)
        self.on_stream = torch.tensor([m.on_stream for m in masks], device=device).view(-1, 1)
        self.on_buffer = torch.tensor([m.on_buffer for m in masks], device=device).view(-1, 1)
        # Keep-sets other than the row's task (None while every run keeps its task: today's computation).
        keeps = [m.keep if m.enabled else "task" for m in masks]
        self.keeps = None if all(k == "task" for k in keeps) else keeps

    def cross_entropy(
        self, logits: torch.Tensor, batch: Batch, inactive: torch.Tensor | None = None, task: int | None = None
    ) -> torch.Tensor:
        """Per-run mean cross-entropy (R,), general masked softmax on the rows the specs select.

        ``inactive`` (broadcastable to logits, bool) lets a method exclude classes by its own rule
        (ER-ACE): those logits become -inf, no gradient, before the general mask is applied.
        ``task`` is the task being trained (the ``seen`` keep-set: the classes of tasks 0..task).
        """
        z = logits if inactive is None else logits.masked_fill(inactive, float("-inf"))
        if self.any_masked:
            masked_rows = torch.where(batch.from_buffer, self.on_buffer, self.on_stream)  # (R, N)
            active = self.kept(batch, task) | ~masked_rows.unsqueeze(-1)
            per_row = masked_cross_entropy(z, batch.y, active, self.mask_value, reduction="none", validate=False)
        else:
            per_row = F.cross_entropy(z.flatten(0, 1), batch.y.flatten(), reduction="none").view(batch.y.shape)
        return per_run_mean(per_row, batch.valid)

    def kept(self, batch: Batch, task: int | None) -> torch.Tensor:
        """(R, N, K) bool: the classes each run's keep-set leaves live on each row (when it is masked)."""
        by_task = task_active_mask(batch.task, self.class_task)
        if self.keeps is None:
            return by_task
        if "seen" in self.keeps and task is None:
            raise ValueError("the 'seen' keep-set needs the task being trained (LossLayer.cross_entropy's task)")
        n_runs, n_rows, k = by_task.shape
        choice = {
            "task": by_task,
            "batch": batch_present_classes(batch, k),
            "seen": (self.class_task <= (task if task is not None else -1)).expand(n_runs, n_rows, k),
        }
        return torch.stack([choice[keep][r] for r, keep in enumerate(self.keeps)])

    @staticmethod
    def logit_mse(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-run mean squared error to the stored logits (R,); never masked (DER's targets are raw)."""
        if batch.logits is None:
            raise ValueError("logit_mse needs a batch drawn from a buffer that stores logits")
        return per_run_mean((logits - batch.logits).pow(2).mean(dim=-1), batch.valid)


@dataclass(frozen=True, kw_only=True)
class Step:
    """One training step of a lockstep group, as handed to ``Method.loss_terms`` (keywords only: it is wide)."""

    task: int  # the task being trained (0-based)
    stream: Batch
    replay: tuple[Batch, ...]  # the method's independent buffer draws; empty while none is made
    alpha: torch.Tensor  # (R,)
    beta: torch.Tensor  # (R,)
    seen_classes: torch.Tensor  # (R, K) bool: classes seen in the stream so far, this batch included
    forward: Callable[[Batch], torch.Tensor]  # batch -> logits (R, N, K), training mode
    loss: LossLayer
    # What the methods that need more than batches read (the defaults: nothing).
    state: Mapping[str, torch.Tensor] = field(default_factory=dict)  # the method's state (Method.init_state)
    replay_slots: tuple[torch.Tensor, ...] = ()  # per replay draw, (R, M) buffer slot of each row, -1 = padding
    draws: Mapping[str, torch.Tensor] = field(default_factory=dict)  # this step's Method.train_draws, (R, ...)
    options: Mapping[str, Any] = field(default_factory=dict)  # the method's options (config)
    net: Any = None  # the backbone (BatchedBackbone): forward with other parameters (a frozen teacher)
    params: Mapping[str, torch.Tensor] = field(default_factory=dict)  # the parameters being trained
    # batch -> penultimate features (R, N, D), training mode (ER-AML's contrastive term); None: not offered.
    features: Callable[[Batch], torch.Tensor] | None = None

    @property
    def class_task(self) -> torch.Tensor:
        """(K,) the task of each class."""
        return self.loss.class_task

    @property
    def n_tasks(self) -> int:
        return self.loss.n_tasks

    def cross_entropy(self, logits: torch.Tensor, batch: Batch, inactive: torch.Tensor | None = None) -> torch.Tensor:
        return self.loss.cross_entropy(logits, batch, inactive, self.task)

    def logit_mse(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.loss.logit_mse(logits, batch)
