"""The reservoir buffer, batched over runs, and the per-run random plans that drive it.

Each run's randomness (which slots its samples go to, which samples it replays) is drawn ahead
of time, a chunk of steps at a time, from that run's own numpy generator. The per-step work is
then a fixed-size gather and scatter, whose cost depends on the batch sizes only, never on the
buffer size, and no random call happens in the hot loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


def reservoir_slots(rng: np.random.Generator, n_seen: int, n_new: int, size: int, batch_size: int) -> np.ndarray:
    """Reservoir sampling (Vitter's algorithm R, as in Mammoth) for ``n_new`` incoming samples.

    Sample k is the ``n = n_seen + k``-th ever seen: it fills slot n while the buffer is not full,
    then replaces slot j ~ U{0..n} if j < size, else is dropped (-1). Within one step (a batch of
    ``batch_size`` consecutive samples) a later sample may land on the slot of an earlier one;
    sequential insertion keeps the later one, so the earlier write is dropped here too.
    """
    n = n_seen + np.arange(n_new, dtype=np.int64)
    j = rng.integers(0, n + 1)
    slots = np.where(n < size, n, np.where(j < size, j, -1))
    # Last write wins within a step: keep only the last occurrence of each (step, slot) pair.
    step = np.arange(n_new) // batch_size
    key = np.where(slots >= 0, step * (size + 1) + slots, -1)
    rev = key[::-1]
    _, first_in_rev = np.unique(rev, return_index=True)
    keep = np.zeros(n_new, dtype=bool)
    keep[n_new - 1 - first_in_rev] = True
    return np.where(keep & (slots >= 0), slots, -1)


def sample_without_replacement(rng: np.random.Generator, avail: np.ndarray, m: int) -> np.ndarray:
    """For each step s, ``min(m, avail[s])`` distinct indices in ``[0, avail[s])``; -1 pads to m.

    Uniform without replacement, like Mammoth's ``np.random.choice(..., replace=False)``. Cost
    per step is ``O(min(m**2, avail))``: Floyd's algorithm when m is small against the buffer,
    random keys + argpartition when the buffer is small, so it is bounded as the buffer grows.
    """
    avail = np.asarray(avail, dtype=np.int64)
    n_steps = len(avail)
    out = np.full((n_steps, m), -1, dtype=np.int64)
    if n_steps == 0 or m == 0:
        return out
    k = np.minimum(m, avail)
    full = avail >= m
    use_keys = full & (avail <= m * m)
    # Random keys: for each row, the m smallest of avail uniform keys form a uniform m-subset.
    for a in np.unique(avail[use_keys]):
        rows = np.nonzero(use_keys & (avail == a))[0]
        keys = rng.random((len(rows), int(a)))
        out[rows] = np.argpartition(keys, m - 1, axis=1)[:, :m]
    # Floyd's algorithm, vectorised over steps: for j = a-k .. a-1, draw t ~ U{0..j}; take t
    # unless already taken, else j.
    rows = np.nonzero(~use_keys & (k > 0))[0]
    if len(rows):
        a, kk = avail[rows], k[rows]
        chosen = np.full((len(rows), m), -1, dtype=np.int64)
        for i in range(m):
            live = i < kk
            j = a - kk + i
            t = np.floor(rng.random(len(rows)) * np.maximum(j + 1, 1)).astype(np.int64)
            taken = (chosen[:, :i] == t[:, None]).any(axis=1)
            chosen[:, i] = np.where(live, np.where(taken, j, t), -1)
        out[rows] = chosen
    return out


@dataclass(frozen=True)
class BufferDraw:
    """Rows drawn from the buffer: raw inputs and what was stored with them."""

    x: torch.Tensor  # (R, M, *item_shape), raw (uint8) inputs
    y: torch.Tensor  # (R, M)
    task: torch.Tensor  # (R, M)
    logits: torch.Tensor | None  # (R, M, K), logits at insertion (DER, DER++)
    valid: torch.Tensor  # (R, M) float, 1 for real rows, 0 for padding (buffer holds fewer than M)


class ReservoirBuffer:
    """One reservoir buffer per run, stored as stacked tensors with a leading run axis.

    Runs may have different sizes; storage is allocated for the largest plus one scratch slot
    that absorbs the writes of dropped samples, so insertion is one fixed-shape ``index_copy_``.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        item_shape: tuple[int, ...],
        n_classes: int,
        *,
        store_logits: bool,
        x_dtype: torch.dtype = torch.uint8,
        device: torch.device | str = "cpu",
    ):
        self.sizes = tuple(int(s) for s in sizes)
        self.n_runs = len(self.sizes)
        self.capacity = max(self.sizes)
        self.scratch = self.capacity  # index of the scratch slot
        slots = self.capacity + 1
        r = self.n_runs
        self.x = torch.zeros((r, slots, *item_shape), dtype=x_dtype, device=device)
        self.y = torch.zeros((r, slots), dtype=torch.int64, device=device)
        self.task = torch.zeros((r, slots), dtype=torch.int64, device=device)
        self.logits = torch.zeros((r, slots, n_classes), device=device) if store_logits else None
        self.n_seen = 0  # incoming samples seen so far: the same for every run of a group
        self._run_offset = torch.arange(r, device=device).unsqueeze(1) * slots

    def available(self, n_seen: int | None = None) -> np.ndarray:
        """How many samples each run's buffer holds after ``n_seen`` incoming samples."""
        seen = self.n_seen if n_seen is None else n_seen
        return np.minimum(seen, np.array(self.sizes, dtype=np.int64))

    def insert(self, slots: torch.Tensor, x: torch.Tensor, y: torch.Tensor, task: torch.Tensor, logits: torch.Tensor | None) -> None:
        """Write incoming rows to their planned slots (``slots`` (R, b), -1 = not stored)."""
        flat = (torch.where(slots >= 0, slots, self.scratch) + self._run_offset).reshape(-1)
        n = flat.numel()
        self.x.view(-1, *self.x.shape[2:]).index_copy_(0, flat, x.reshape(n, *x.shape[2:]))
        self.y.view(-1).index_copy_(0, flat, y.reshape(n))
        self.task.view(-1).index_copy_(0, flat, task.reshape(n))
        if self.logits is not None:
            if logits is None:
                raise ValueError("this buffer stores logits: pass the stream logits")
            self.logits.view(-1, self.logits.shape[-1]).index_copy_(0, flat, logits.detach().reshape(n, -1))
        self.n_seen += slots.shape[1]

    def draw(self, idx: torch.Tensor) -> BufferDraw:
        """Gather planned rows (``idx`` (R, M), -1 = padding) from every run's buffer."""
        valid = idx >= 0
        flat = (idx.clamp(min=0) + self._run_offset).reshape(-1)
        r, m = idx.shape
        x = self.x.view(-1, *self.x.shape[2:]).index_select(0, flat).view(r, m, *self.x.shape[2:])
        y = self.y.view(-1).index_select(0, flat).view(r, m)
        task = self.task.view(-1).index_select(0, flat).view(r, m)
        logits = None
        if self.logits is not None:
            logits = self.logits.view(-1, self.logits.shape[-1]).index_select(0, flat).view(r, m, -1)
        return BufferDraw(x, y, task, logits, valid.to(torch.float32))
