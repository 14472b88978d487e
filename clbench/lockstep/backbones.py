"""Backbones with a leading run axis: R independent networks evaluated as one computation.

A backbone is stateless: ``init(generators)`` returns the stacked parameters (one slice per run,
each drawn from that run's own generator, so a run's weights do not depend on its group) and
buffers (BatchNorm running statistics); ``forward`` is a pure function of them that returns the
logits ``(R, N, K)`` and the updated buffers. The trainer owns the tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from clbench.lockstep import HEADS

Params = dict[str, torch.Tensor]


class BatchedBackbone(Protocol):
    n_classes: int
    feature_dim: int
    head: str  # "linear" or "cosine" (see ``HEADS``)
    # True when each row's output depends on that row alone (no batch statistics), so several
    # batches may be forwarded as one.
    row_independent: bool

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

    def features(
        self,
        params: Params,
        buffers: Params,
        x: torch.Tensor,
        *,
        train: bool,
        row_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Params]:
        """The penultimate features ``(R, N, feature_dim)`` the classifier head reads (iCaRL's
        nearest-mean classifier), and the new buffers, as in ``forward``."""

    def head_logits(self, params: Params, features: torch.Tensor) -> torch.Tensor:
        """The classifier head: logits ``(R, N, K)`` of penultimate ``features`` (``forward`` is
        ``features`` then this, so the two paths give the same numbers)."""


def xavier_uniform(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Mammoth's MLP initialisation: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); shape (in, out)."""
    fan_in, fan_out = shape
    a = math.sqrt(6.0 / (fan_in + fan_out))
    return (torch.rand(shape, generator=generator) * 2 - 1) * a


# Per-run GEMMs of at least this many multiply-adds go to oneDNN (see ``batched_linear``).
ONEDNN_MIN_MACS = 1 << 22


def _onednn_linear_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._linear_pointwise.default is not None
    except (AttributeError, RuntimeError):
        return False


_ONEDNN = _onednn_linear_available()


def _onednn_mm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w.T + b`` for 2-D ``x`` (M, K) and ``w`` (N, K) (strided views allowed), by oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


class _BatchedLinear(torch.autograd.Function):
    """``y[r] = x[r] @ w[r].T + b[r]`` for every run r, as one MKL ``baddbmm`` or as one oneDNN
    GEMM per run; gradients come out in the parameters' own (contiguous) layout, so the SGD
    update reads them at full speed."""

    @staticmethod
    def forward(ctx, x, w, b, onednn: bool):  # x (R, M, D), w (R, H, D), b (R, H)
        ctx.save_for_backward(x, w)
        ctx.onednn = onednn
        if onednn:
            return torch.stack([_onednn_mm(x[r], w[r], b[r]) for r in range(x.shape[0])])
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        gx = gw = gb = None
        if ctx.onednn:
            runs = range(x.shape[0])
            gx = torch.stack([_onednn_mm(gy[r], w[r].t()) for r in runs]) if need_x else None
            gw = torch.stack([_onednn_mm(gy[r].t(), x[r].t()) for r in runs]) if need_w else None
        else:
            gx = torch.bmm(gy, w) if need_x else None
            gw = torch.bmm(gy.transpose(1, 2), x) if need_w else None
        if need_b:
            gb = gy.sum(1)
        return gx, gw, gb, None


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x @ w.T + b`` for 2-D ``x``: oneDNN on CPU when available (see ``batched_linear``)."""
    if _ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32:
        return _onednn_mm(x, w, b)
    return F.linear(x, w, b)


def batched_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x[r] @ w[r].T + b[r]`` for every run r: x (R, M, D), w (R, H, D), b (R, H) -> (R, M, H).

    torch's CPU matmuls call MKL, whose sgemm runs its AVX2 code on AMD CPUs; oneDNN JITs AVX-512
    and measured 1.6-1.7x faster forward + backward on this project's Zen 5 for the MLP's first
    layer (M=266), but costs ~15 us more per call, so only large per-run GEMMs take it. The choice
    depends on one run's shape, never on R, so a run computes the same way in any group.
    """
    _, m, d = x.shape
    onednn = _ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and m * d * w.shape[1] >= ONEDNN_MIN_MACS
    return _BatchedLinear.apply(x, w, b, onednn)


COSINE_SCALE = 10.0  # ER-ACE's original head (Caccia et al. 2022, "distLinear"): 10 * cosine similarity
COSINE_EPS = 1e-5


def cosine_logits(features: torch.Tensor, weight: torch.Tensor, feature_dim: int = -1) -> torch.Tensor:
    """``COSINE_SCALE * cos(feature, class weight)``, bias-free: features ``(R, N, D)`` and the class
    weights (``(R, K, D)``, or ``(R, D, K)`` with ``feature_dim=1``) both divided by their L2 norm plus
    ``COSINE_EPS``; the normalisation is differentiated through. -> ``(R, N, K)``."""
    f = features / (features.norm(dim=-1, keepdim=True) + COSINE_EPS)
    w = weight / (weight.norm(dim=feature_dim, keepdim=True) + COSINE_EPS)
    return COSINE_SCALE * torch.bmm(f, w if feature_dim == 1 else w.transpose(1, 2))


def check_head(head: str) -> str:
    if head not in HEADS:
        raise ValueError(f"unknown classifier head {head!r}: valid heads are {', '.join(HEADS)}")
    return head


class BatchedMLP:
    """Mammoth's MNIST MLP, ``in-100-100-K`` with ReLU, as batched matrix products over runs.

    Weights are stored ``(R, out, in)`` (``nn.Linear``'s layout, which oneDNN takes without a copy).
    Rows are independent (no batch statistics): the trainer may forward several batches as one.
    ``head="cosine"`` makes the classifier bias-free cosine logits (``cosine_logits``).
    """

    row_independent = True

    def __init__(self, in_features: int, n_classes: int, hidden: Sequence[int] = (100, 100), head: str = "linear"):
        self.in_features = in_features
        self.n_classes = n_classes
        self.sizes = [in_features, *hidden, n_classes]
        self.feature_dim = self.sizes[-2]
        self.head = check_head(head)

    def init(self, generators, device="cpu"):
        per_layer: dict[str, list[torch.Tensor]] = {}
        for g in generators:
            for i, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
                per_layer.setdefault(f"w{i}", []).append(xavier_uniform((fan_in, fan_out), g).t())
                per_layer.setdefault(f"b{i}", []).append(torch.zeros(fan_out))
        if self.head == "cosine":
            del per_layer[f"b{len(self.sizes) - 2}"]
        params = {k: torch.stack(v).to(device).requires_grad_(True) for k, v in per_layer.items()}
        return params, {}

    def features(self, params, buffers, x, *, train, row_weight=None):
        """The penultimate activations ``(R, N, hidden[-1])`` (after the last ReLU) and the buffers."""
        if x.dim() > 3:
            x = x.flatten(2)
        h = None
        for i in range(len(self.sizes) - 2):
            w, b = params[f"w{i}"], params[f"b{i}"]
            if h is None and x.stride(0) == 0:
                # One input set shared by every run (evaluation: a zero stride on the run axis):
                # one GEMM of that set with every run's weights side by side.
                r, out, d = w.shape
                h = _linear(x[0], w.reshape(r * out, d), b.reshape(-1)).view(-1, r, out).transpose(0, 1)
            else:
                h = batched_linear(x if h is None else F.relu(h), w, b)
        return F.relu(h), buffers

    def forward(self, params, buffers, x, *, train, row_weight=None):
        features, buffers = self.features(params, buffers, x, train=train, row_weight=row_weight)
        return self.head_logits(params, features), buffers

    def head_logits(self, params, features):
        last = len(self.sizes) - 2
        if self.head == "cosine":
            return cosine_logits(features, params[f"w{last}"])
        return batched_linear(features, params[f"w{last}"], params[f"b{last}"])
