"""Per-batch augmentation on the training device: random crop (zero padding 4) + horizontal flip.

The random parameters are drawn per run from that run's own generator (see ``draw_crop_flip``)
and applied here to a whole (R, N, C, H, W) batch with two gathers, no per-sample loop.
As in torchvision's RandomCrop(padding=4) on the unnormalised image followed by
RandomHorizontalFlip, padding is zero in [0, 1] space: normalisation comes after.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PAD = 4


def draw_crop_flip(rng: np.random.Generator, shape: tuple[int, ...], pad: int = PAD) -> np.ndarray:
    """int64 array ``(*shape, 3)``: crop offsets (dy, dx) in [0, 2*pad] and a flip flag."""
    out = np.empty((*shape, 3), dtype=np.int64)
    out[..., :2] = rng.integers(0, 2 * pad + 1, size=(*shape, 2))
    out[..., 2] = rng.random(shape) < 0.5
    return out


def crop_flip(x: torch.Tensor, params: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """Apply crops/flips to ``x`` (..., C, H, W) with ``params`` (..., 3) from ``draw_crop_flip``."""
    *lead, c, h, w = x.shape
    xb = x.reshape(-1, c, h, w)
    p = params.reshape(-1, 3)
    xp = F.pad(xb, (pad, pad, pad, pad))
    n = xb.shape[0]
    rows = p[:, 0:1] + torch.arange(h, device=x.device)  # (n, h)
    cols = p[:, 1:2] + torch.arange(w, device=x.device)  # (n, w)
    cols = torch.where(p[:, 2:3].bool(), cols.flip(-1), cols)  # flip after crop = read columns backwards
    out = xp.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * pad))
    out = out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))
    return out.reshape(*lead, c, h, w)
