"""The reduced ResNet-18 of the continual-learning literature, batched over a leading run axis.

This is Mammoth's ``resnet18`` (as used by GEM, ER, DER): a 3x3 stem without max-pool, four
stages of two BasicBlocks (widths ``nf, 2nf, 4nf, 8nf``, strides ``1, 2, 2, 2``), global average
pooling and a linear classifier. ``nf`` defaults to 64 (about 11M parameters per run).

Layout trick: R independent networks are evaluated as *one* network whose activations are laid
out ``(N, R*C, H, W)``, i.e. the runs' channel blocks sit side by side along the channel axis.
Then

* a convolution of run r's block with run r's weights is a grouped convolution with
  ``groups=R`` and the weights stacked ``(R*C_out, C_in, k, k)``: group r only ever sees
  channels ``[r*C_in, (r+1)*C_in)``, so runs cannot leak into each other;
* BatchNorm over ``(N, R*C, H, W)`` normalises each of the ``R*C`` channels over ``(N, H, W)``,
  which is exactly per-run per-channel batch statistics, so ``F.batch_norm`` with the runs'
  weights/biases/running statistics flattened to ``R*C`` is the per-run BatchNorm.

The only per-forward copies are at the edges (the input permutation to ``(N, R*C, H, W)`` and the
pooled features back to ``(R, N, 8nf)``); activation memory is R times one run's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clbench.lockstep.backbones import Params, check_head, cosine_logits

BN_MOMENTUM = 0.1
BN_EPS = 1e-5


@dataclass(frozen=True)
class _ConvSpec:
    """One bias-free convolution followed by BatchNorm: ``{name}.conv.weight`` and ``{name}.bn.*``."""

    name: str
    c_in: int
    c_out: int
    kernel: int


@dataclass(frozen=True)
class _BlockSpec:
    """A BasicBlock; ``shortcut`` is set when the identity cannot be used (stride or width change)."""

    name: str
    c_in: int
    c_out: int
    stride: int
    conv1: _ConvSpec
    conv2: _ConvSpec
    shortcut: _ConvSpec | None


class BatchedResNet18:
    """Mammoth's reduced ResNet-18 for R runs at once (a :class:`~clbench.backbones.BatchedBackbone`).

    Parameters (each with a leading run axis R):

    * ``stem.conv.weight`` ``(R, nf, C_in, 3, 3)``, ``stem.bn.weight`` / ``stem.bn.bias`` ``(R, nf)``;
    * for each block ``layer{s}.{b}`` (s in 1..4, b in 0..1): ``.conv1.conv.weight``,
      ``.conv1.bn.{weight,bias}``, ``.conv2.conv.weight``, ``.conv2.bn.{weight,bias}`` and, for the
      first block of stages 2-4, ``.shortcut.conv.weight`` (1x1) and ``.shortcut.bn.{weight,bias}``;
    * ``fc.weight`` ``(R, 8nf, K)`` (input-major, like :class:`~clbench.backbones.BatchedMLP`, so
      the classifier is one ``baddbmm``) and ``fc.bias`` ``(R, K)``.

    Buffers: ``{bn}.running_mean`` / ``{bn}.running_var`` ``(R, C)`` for every BatchNorm ``{bn}``.
    """

    row_independent = False  # BatchNorm: a row's output depends on its batch

    def __init__(self, n_classes: int, in_channels: int = 3, width: int = 64, head: str = "linear"):
        self.n_classes = n_classes
        self.head = check_head(head)
        self.in_channels = in_channels
        self.width = width
        self.stem = _ConvSpec("stem", in_channels, width, 3)
        self.blocks: list[_BlockSpec] = []
        c_in = width
        for stage, (mult, first_stride) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2)), start=1):
            c_out = width * mult
            for b, stride in enumerate((first_stride, 1)):
                name = f"layer{stage}.{b}"
                shortcut = None
                if stride != 1 or c_in != c_out:
                    shortcut = _ConvSpec(f"{name}.shortcut", c_in, c_out, 1)
                self.blocks.append(
                    _BlockSpec(
                        name,
                        c_in,
                        c_out,
                        stride,
                        _ConvSpec(f"{name}.conv1", c_in, c_out, 3),
                        _ConvSpec(f"{name}.conv2", c_out, c_out, 3),
                        shortcut,
                    )
                )
                c_in = c_out
        self.feature_dim = c_in

    # ------------------------------------------------------------------ initialisation

    def conv_specs(self) -> list[_ConvSpec]:
        """All conv+BN units in the fixed order in which their weights are drawn."""
        specs = [self.stem]
        for blk in self.blocks:
            specs += [blk.conv1, blk.conv2]
            if blk.shortcut is not None:
                specs.append(blk.shortcut)
        return specs

    def _init_run(self, g: torch.Generator) -> tuple[Params, Params]:
        """One run's parameters, drawn only from ``g`` in a fixed order (group-independent).

        Matches a fresh ``nn.Conv2d`` / ``nn.Linear``: ``kaiming_uniform_(a=sqrt(5))`` gives
        ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights, and the Linear bias uses the same bound.
        """
        params: Params = {}
        buffers: Params = {}
        for spec in self.conv_specs():
            fan_in = spec.c_in * spec.kernel * spec.kernel
            shape = (spec.c_out, spec.c_in, spec.kernel, spec.kernel)
            params[f"{spec.name}.conv.weight"] = _uniform(shape, 1.0 / math.sqrt(fan_in), g)
            params[f"{spec.name}.bn.weight"] = torch.ones(spec.c_out)
            params[f"{spec.name}.bn.bias"] = torch.zeros(spec.c_out)
            buffers[f"{spec.name}.bn.running_mean"] = torch.zeros(spec.c_out)
            buffers[f"{spec.name}.bn.running_var"] = torch.ones(spec.c_out)
        bound = 1.0 / math.sqrt(self.feature_dim)
        # Drawn as nn.Linear's (K, D) weight, then stored transposed (D, K).
        params["fc.weight"] = _uniform((self.n_classes, self.feature_dim), bound, g).t().contiguous()
        params["fc.bias"] = _uniform((self.n_classes,), bound, g)
        if self.head == "cosine":  # bias-free; drawn all the same, so the generator's stream is the linear head's
            del params["fc.bias"]
        return params, buffers

    def init(self, generators: Sequence[torch.Generator], device: torch.device | str = "cpu") -> tuple[Params, Params]:
        """Stacked ``(params, buffers)`` for ``len(generators)`` runs; params are leaf tensors."""
        runs = [self._init_run(g) for g in generators]
        params = {k: torch.stack([p[k] for p, _ in runs]).to(device).requires_grad_(True) for k in runs[0][0]}
        buffers = {k: torch.stack([b[k] for _, b in runs]).to(device) for k in runs[0][1]}
        return params, buffers

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        params: Params,
        buffers: Params,
        x: torch.Tensor,
        *,
        train: bool,
        row_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Params]:
        """Logits ``(R, N, K)`` for ``x`` ``(R, N, C, H, W)``, and the new buffers.

        Pure: params, buffers and ``x`` are never modified; in train mode the returned running
        statistics are new tensors (momentum 0.1, unbiased batch variance, as ``nn.BatchNorm2d``),
        in eval mode ``buffers`` is returned as is. ``row_weight`` ``(R, N)`` (1 valid / 0 padding)
        restricts each run's train-mode batch statistics to its valid rows, so its valid logits
        equal those of the run alone on those rows; padding rows must hold finite values.
        """
        features, new_buffers = self.features(params, buffers, x, train=train, row_weight=row_weight)
        return self.head_logits(params, features), new_buffers

    def head_logits(self, params: Params, features: torch.Tensor) -> torch.Tensor:
        """The classifier head's logits ``(R, N, K)`` of pooled ``features`` (see :meth:`forward`)."""
        if self.head == "cosine":
            return cosine_logits(features, params["fc.weight"], feature_dim=1)
        return torch.baddbmm(params["fc.bias"].unsqueeze(1), features, params["fc.weight"])

    def features(
        self,
        params: Params,
        buffers: Params,
        x: torch.Tensor,
        *,
        train: bool,
        row_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Params]:
        """Pooled penultimate features ``(R, N, 8nf)`` and the new buffers (see :meth:`forward`)."""
        if x.dim() != 5:
            raise ValueError(f"expected x of shape (R, N, C, H, W), got {tuple(x.shape)}")
        R, N = x.shape[0], x.shape[1]
        if row_weight is not None and tuple(row_weight.shape) != (R, N):
            raise ValueError(f"row_weight must be (R, N) = {(R, N)}, got {tuple(row_weight.shape)}")
        ctx = _Ctx(params, buffers, dict(buffers) if train else buffers, R, train, row_weight if train else None)

        # Stem. With one input set shared by all runs (a zero stride on the run axis) the stem
        # is a plain (groups=1) convolution of that set with all runs' filters concatenated along
        # the output channels, which directly yields the (N, R*C_out, H, W) layout without ever
        # materialising R copies of the input.
        w = params["stem.conv.weight"]
        w = w.reshape(R * w.shape[1], *w.shape[2:])
        if x.stride(0) == 0:
            h = F.conv2d(x[0], w, padding=1)
        else:
            # (R, N, C, H, W) -> (N, R, C, H, W) -> (N, R*C, H, W): the only copy of the input.
            h = F.conv2d(x.transpose(0, 1).reshape(N, R * x.shape[2], *x.shape[3:]), w, padding=1, groups=R)
        h = F.relu(ctx.bn(h, "stem.bn"))

        for blk in self.blocks:
            out = F.relu(ctx.bn(ctx.conv(h, blk.conv1.name, blk.stride, 1), blk.conv1.name + ".bn"))
            out = ctx.bn(ctx.conv(out, blk.conv2.name, 1, 1), blk.conv2.name + ".bn")
            if blk.shortcut is None:
                short = h
            else:
                short = ctx.bn(ctx.conv(h, blk.shortcut.name, blk.stride, 0), blk.shortcut.name + ".bn")
            h = F.relu(out + short)

        # Global average pool over whatever spatial size is left (4x4 for 32x32, 8x8 for 64x64).
        pooled = h.mean(dim=(2, 3)).reshape(N, R, -1).transpose(0, 1)  # (R, N, 8nf)
        return pooled, ctx.new_buffers


class _Ctx:
    """Per-forward state shared by the layer helpers (run count, mode, buffers being rebuilt)."""

    def __init__(
        self,
        params: Params,
        buffers: Params,
        new_buffers: Params,
        R: int,
        train: bool,
        row_weight: torch.Tensor | None,
    ):
        self.params = params
        self.buffers = buffers
        self.new_buffers = new_buffers
        self.R = R
        self.train = train
        self.row_weight = row_weight

    def conv(self, h: torch.Tensor, name: str, stride: int, padding: int) -> torch.Tensor:
        """Run r's conv applied to channel block r of ``h`` for every r: a grouped convolution."""
        w = self.params[f"{name}.conv.weight"]  # (R, C_out, C_in, k, k)
        return F.conv2d(h, w.reshape(self.R * w.shape[1], *w.shape[2:]), stride=stride, padding=padding, groups=self.R)

    def bn(self, h: torch.Tensor, name: str) -> torch.Tensor:
        """Per-run BatchNorm of ``h`` ``(N, R*C, H, W)``; records the new running statistics."""
        weight = self.params[f"{name}.weight"].reshape(-1)
        bias = self.params[f"{name}.bias"].reshape(-1)
        rm = self.buffers[f"{name}.running_mean"]
        rv = self.buffers[f"{name}.running_var"]
        if not self.train:
            return F.batch_norm(h, rm.reshape(-1), rv.reshape(-1), weight, bias, False, 0.0, BN_EPS)
        if self.row_weight is None:
            # F.batch_norm updates running statistics in place: hand it fresh copies (whose
            # flat views share storage with them) so the caller's buffers stay untouched.
            new_rm = rm.detach().clone(memory_format=torch.contiguous_format)
            new_rv = rv.detach().clone(memory_format=torch.contiguous_format)
            out = F.batch_norm(h, new_rm.view(-1), new_rv.view(-1), weight, bias, True, BN_MOMENTUM, BN_EPS)
        else:
            out, new_rm, new_rv = _masked_batch_norm(h, self.row_weight, weight, bias, rm, rv)
        self.new_buffers[f"{name}.running_mean"] = new_rm
        self.new_buffers[f"{name}.running_var"] = new_rv
        return out


def _masked_batch_norm(
    h: torch.Tensor,
    row_weight: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train-mode BatchNorm whose statistics for run r use only the rows with ``row_weight[r] > 0``.

    ``h`` is ``(N, R*C, H, W)``; ``row_weight`` ``(R, N)``. This reproduces ``F.batch_norm`` on the
    valid rows alone (biased variance to normalise, unbiased variance for the running update).
    A run with no valid row keeps its running statistics (as if it had not been forwarded) and is
    normalised with them.
    """
    R, N = row_weight.shape
    C = h.shape[1] // R
    hv = h.reshape(N, R, C, h.shape[2], h.shape[3])
    w = row_weight.to(h.dtype).t().reshape(N, R, 1, 1, 1)
    count = row_weight.to(h.dtype).sum(dim=1) * (h.shape[2] * h.shape[3])  # (R,) valid elements
    denom = count.clamp_min(1.0).unsqueeze(1)
    # A run with no valid row has no batch statistics: it is normalised with its running ones
    # (as in eval mode) so its ignored outputs stay finite instead of blowing up by 1/sqrt(eps).
    # torch.where on (R, C) rather than a Python branch: no device sync per layer.
    has_rows = (count > 0).unsqueeze(1)
    mean = torch.where(has_rows, (hv * w).sum(dim=(0, 3, 4)) / denom, running_mean)  # (R, C)
    diff = hv - mean[None, :, :, None, None]
    var = torch.where(has_rows, (diff.square() * w).sum(dim=(0, 3, 4)) / denom, running_var)  # biased
    scale = torch.rsqrt(var + BN_EPS) * weight.reshape(R, C)
    out = diff * scale[None, :, :, None, None] + bias.reshape(R, C)[None, :, :, None, None]
    with torch.no_grad():
        unbiased = var * (count / (count - 1).clamp_min(1.0)).unsqueeze(1)
        new_rm = torch.where(has_rows, (1 - BN_MOMENTUM) * running_mean + BN_MOMENTUM * mean, running_mean)
        new_rv = torch.where(has_rows, (1 - BN_MOMENTUM) * running_var + BN_MOMENTUM * unbiased, running_var)
    return out.reshape(h.shape), new_rm.detach(), new_rv.detach()


def _uniform(shape: tuple[int, ...], bound: float, g: torch.Generator) -> torch.Tensor:
    """``U(-bound, bound)`` drawn from ``g`` (CPU, so the stream is device-independent)."""
    return torch.empty(shape).uniform_(-bound, bound, generator=g)
