"""The reservoir buffer, batched over runs, and the per-run random plans that drive it.

Each run's randomness (which slots its samples go to, which samples it replays) is drawn ahead
of time, a chunk of steps at a time, from that run's own numpy generator. The per-step work is
then a fixed-size gather and scatter, whose cost depends on the batch sizes only, never on the
buffer size, and no random call happens in the hot loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    return last_write_per_step(slots, size, batch_size)


def last_write_per_step(slots: np.ndarray, size: int, batch_size: int) -> np.ndarray:
    """Sequential writes, done at once per step: of the samples of one step (``batch_size``
    consecutive ones) that go to the same slot only the last is kept (it overwrites the others);
    the earlier writes become -1. ``slots`` in ``[-1, size)``."""
    n_new = len(slots)
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
class Memory:
    """The contents of every run's buffer (what a method's end-of-task hook reads and returns): run
    r's rows are slots ``[0, held[r])``; the tensors keep the buffer's shape (capacity + 1 slots)."""

    x: torch.Tensor  # (R, slots, *item_shape) raw (uint8) inputs
    y: torch.Tensor  # (R, slots)
    task: torch.Tensor  # (R, slots): the task of each row's class
    logits: torch.Tensor | None  # (R, slots, K) or None
    held: np.ndarray  # (R,) int64

    def valid(self) -> torch.Tensor:
        """(R, slots) bool: the slots that hold a row."""
        slots = torch.arange(self.y.shape[1], device=self.y.device)
        return slots < torch.as_tensor(self.held, device=self.y.device).unsqueeze(1)


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
        # Rows held per run when a method writes the buffer itself (``replace``); None: filled by
        # insertion, so each run holds min(n_seen, size).
        self.held: np.ndarray | None = None
        self._run_offset = torch.arange(r, device=device).unsqueeze(1) * slots

    def available(self, n_seen: int | None = None) -> np.ndarray:
        """How many samples each run's buffer holds (after ``n_seen`` incoming samples, for a
        buffer filled by insertion)."""
        if self.held is not None:
            return self.held.copy()
        seen = self.n_seen if n_seen is None else n_seen
        return np.minimum(seen, np.array(self.sizes, dtype=np.int64))

    def holds_any(self) -> bool:
        if self.held is None:  # filled by insertion (asked every step: no arrays)
            return self.n_seen > 0 and max(self.sizes) > 0
        return bool(self.held.max() > 0)

    def contents(self) -> Memory:
        """The buffer's tensors as they are (not copies: a hook must not write into them)."""
        return Memory(self.x, self.y, self.task, self.logits, self.available())

    def replace(self, memory: Memory) -> None:
        """Take ``memory`` (same shapes) as the buffer's contents; from now on it holds ``memory.held``."""
        for name in ("x", "y", "task"):
            if getattr(memory, name).shape != getattr(self, name).shape:
                raise ValueError(
                    f"memory.{name} has shape {tuple(getattr(memory, name).shape)}, "
                    f"the buffer {tuple(getattr(self, name).shape)}"
                )
        held = np.asarray(memory.held, dtype=np.int64)
        if held.shape != (self.n_runs,) or (held < 0).any() or (held > np.array(self.sizes)).any():
            raise ValueError(f"memory.held must give 0..size rows for each of the {self.n_runs} runs, got {held}")
        self.x, self.y, self.task = memory.x, memory.y, memory.task
        if self.logits is not None:
            self.logits = memory.logits
        self.held = held

    def insert(
        self, slots: torch.Tensor, x: torch.Tensor, y: torch.Tensor, task: torch.Tensor, logits: torch.Tensor | None
    ) -> None:
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
