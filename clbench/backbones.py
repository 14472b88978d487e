"""Backbones with a leading run axis: R independent networks evaluated as one computation.

A backbone is stateless: ``init(generators)`` returns the stacked parameters (one slice per run,
each drawn from that run's own generator, so a run's weights do not depend on its group) and
buffers (BatchNorm running statistics); ``forward`` is a pure function of them that returns the
logits ``(R, N, K)`` and the updated buffers. The trainer owns the tensors.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F

Params = dict[str, torch.Tensor]


class BatchedBackbone(Protocol):
    n_classes: int

    def init(self, generators: Sequence[torch.Generator], device: torch.device | str = "cpu") -> tuple[Params, Params]:
        """Stacked (params, buffers) for ``len(generators)`` runs; params are leaf tensors."""

    def forward(
        self,
        params: Params,
        buffers: Params,
        x: torch.Tensor,
        *,
        train: bool,
        row_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Params]:
        """Logits ``(R, N, K)`` for inputs ``x`` ``(R, N, C, H, W)`` (float, normalised).

        ``row_weight`` ``(R, N)`` (1 valid / 0 padding) keeps padding rows out of batch statistics;
        rows with weight 0 still get (ignored) logits. Returns the new buffers (running statistics
        move only when ``train``).
        """


def xavier_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Mammoth's MLP initialisation: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); shape (in, out)."""
    fan_in, fan_out = shape
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return (torch.rand(shape, generator=generator) * 2 - 1) * a


class BatchedMLP:
    """Mammoth's MNIST MLP, ``in-100-100-K`` with ReLU, as batched matrix products over runs."""

    def __init__(self, in_features: int, n_classes: int, hidden: Sequence[int] = (100, 100)):
        self.in_features = in_features
        self.n_classes = n_classes
        self.sizes = [in_features, *hidden, n_classes]

    def init(self, generators, device="cpu"):
        per_layer: dict[str, list[torch.Tensor]] = {}
        for g in generators:
            for i, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
                per_layer.setdefault(f"w{i}", []).append(xavier_uniform((fan_in, fan_out), g))
                per_layer.setdefault(f"b{i}", []).append(torch.zeros(fan_out))
        params = {k: torch.stack(v).to(device).requires_grad_(True) for k, v in per_layer.items()}
        return params, {}

    def forward(self, params, buffers, x, *, train, row_weight=None):
        n_layers = len(self.sizes) - 1
        if x.dim() > 3:
            x = x.flatten(2)
        # x may be one input set shared by every run (evaluation): a zero stride on the run axis.
        shared = x.stride(0) == 0
        h = x[0] if shared else x
        for i in range(n_layers):
            w, b = params[f"w{i}"], params[f"b{i}"]
            if h.dim() == 2:  # shared inputs: (N, D) @ (R, D, H) broadcasts to (R, N, H)
                h = torch.matmul(h, w) + b.unsqueeze(1)
            else:
                h = torch.baddbmm(b.unsqueeze(1), h, w)
            if i < n_layers - 1:
                h = F.relu(h)
        return h, buffers
