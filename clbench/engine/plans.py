"""The random plans of a lockstep group: every draw a run makes, from its own streams.

Each run's randomness comes from generators derived from its seed alone (``RunRandomness``), so a
run's results do not depend on which runs share its group. The draws are made ahead of the steps
that use them: an epoch's order, augmentation and buffer slots when the epoch starts
(``draw_epoch``), the replayed rows and the method's draws for a chunk of ``PLAN_CHUNK_STEPS`` steps
(``replay_plan``, ``stacked_draws``), bounding their memory whatever the task's length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from clbench.data.augment import draw_crop_flip
from clbench.lockstep.buffer import BufferDraw, ReservoirBuffer, sample_without_replacement
from clbench.methods import Method

PLAN_CHUNK_STEPS = 256  # replay plans are drawn this many steps at a time (bounded memory)


class RunRandomness:
    """A run's independent random streams, all derived from its seed alone."""

    # What a checkpoint saves (init is used once). ``method``: the method's hooks' draws.
    NUMPY_STREAMS = ("order", "reservoir", "replay", "augment", "method")

    def __init__(self, seed: int):
        # The sixth child is new: spawning six leaves the first five (and every earlier run) as they were.
        init, order, reservoir, replay, augment, method = np.random.SeedSequence(seed).spawn(6)
        self.init = torch.Generator().manual_seed(int(init.generate_state(1, np.uint64)[0] >> 1))
        self.order = np.random.default_rng(order)
        self.reservoir = np.random.default_rng(reservoir)
        self.replay = np.random.default_rng(replay)
        self.augment = np.random.default_rng(augment)
        self.method = np.random.default_rng(method)


@dataclass
class EpochDraws:
    """What an epoch draws up front for every run: its order of the task's samples, their
    augmentation, and the buffer slots they go to."""

    samples: torch.Tensor  # (R, n) indices into the training set, in each run's order
    aug: torch.Tensor | None  # (R, n, 3)
    slots: torch.Tensor | None  # (R, n), -1 = not stored


def draw_epoch(
    rand: list[RunRandomness],
    pool: torch.Tensor,
    *,
    augment: bool,
    buffer: ReservoirBuffer | None,
    sizes: np.ndarray,
    batch_size: int,
    method: Method,
    train_y: torch.Tensor,
    device: torch.device,
) -> EpochDraws:
    """Each run's order of the samples of ``pool`` ((n,), or (R, n) per run), their augmentation
    and buffer slots (``method.plan_insertions``), for one epoch, from that run's own generators."""
    n = pool.shape[-1]
    order = torch.from_numpy(np.stack([r.order.permutation(n) for r in rand])).to(device)
    samples = pool[order] if pool.dim() == 1 else pool.gather(1, order)
    aug = None
    if augment:
        aug = torch.from_numpy(np.stack([draw_crop_flip(r.augment, (n,)) for r in rand])).to(device)
    slots = None
    if buffer is not None and method.inserts_stream:
        labels, memory = train_y[samples].cpu().numpy(), buffer.y.cpu().numpy()
        slots = torch.from_numpy(
            np.stack(
                [
                    method.plan_insertions(r.reservoir, labels[i], memory[i, :s], buffer.n_seen, int(s), batch_size)
                    for i, (r, s) in enumerate(zip(rand, sizes))
                ]
            )
        ).to(device)
    return EpochDraws(samples, aug, slots)


@dataclass(frozen=True)
class PlannedDraw:
    """One step's replay rows, all draws side by side (draw d is columns ``d*M .. (d+1)*M``)."""

    rows: BufferDraw  # (R, draws*M, ...)
    aug: torch.Tensor | None  # (R, draws*M, 3)
    padded: bool  # some run has fewer than M samples to draw from: ``rows.valid`` matters
    idx: torch.Tensor  # (R, draws*M) the buffer slot of each row, -1 = padding

    def slots(self, n_draws: int) -> tuple[torch.Tensor, ...]:
        """Per replay draw, the buffer slot of each row (R, M), -1 = padding."""
        m = self.idx.shape[1] // n_draws
        return tuple(self.idx[:, i * m : (i + 1) * m] for i in range(n_draws))


@dataclass(frozen=True)
class ReplayPlan:
    """Which buffer rows each run replays in a chunk of steps, and how they are augmented."""

    idx: torch.Tensor  # (steps, R, draws*M), -1 = padding
    padded: np.ndarray  # (steps,) bool: some run has fewer than M samples to draw from
    aug: torch.Tensor | None  # (steps, R, draws*M, 3)

    def draw(self, buffer: ReservoirBuffer, step: int) -> PlannedDraw:
        aug = self.aug[step] if self.aug is not None else None
        return PlannedDraw(buffer.draw(self.idx[step]), aug, bool(self.padded[step]), self.idx[step])


def replay_avail(
    buffer: ReservoirBuffer,
    sizes: np.ndarray,
    n_seen: int,
    first_step: int,
    n_plan_steps: int,
    batch_size: int,
    n: int,
    method: Method,
) -> np.ndarray:
    """How many rows each run's buffer holds before each step of a chunk: (R, steps)."""
    if not method.inserts_stream:  # written by the method at task ends: constant during a task
        return np.repeat(buffer.available()[:, None], n_plan_steps, axis=1)
    # ``n_seen``: samples the buffer had seen when this epoch started (not when this chunk starts).
    # Before step s of this epoch the buffer has seen n_seen + s * batch_size samples.
    seen = n_seen + np.arange(first_step, first_step + n_plan_steps, dtype=np.int64) * batch_size
    seen = np.minimum(seen, n_seen + n)
    return np.minimum(seen[None, :], sizes[:, None])


def replay_plan(
    rand: list[RunRandomness], avail: np.ndarray, minibatch: int, n_draws: int, augment: bool, device: torch.device
) -> ReplayPlan:
    """Each run's replay rows (``avail`` (R, steps): rows its buffer holds) and their augmentation."""
    n_plan_steps = avail.shape[1]
    idx = np.stack(
        [
            np.stack([sample_without_replacement(r.replay, avail[i], minibatch) for _ in range(n_draws)])
            for i, r in enumerate(rand)
        ],
        axis=1,
    )  # (draws, R, steps, M)
    n_runs = len(rand)
    idx = idx.transpose(2, 1, 0, 3).reshape(n_plan_steps, n_runs, n_draws * minibatch)
    aug = None
    if augment:
        aug = np.stack([draw_crop_flip(r.augment, (n_draws, n_plan_steps, minibatch)) for r in rand], axis=1)
        aug = aug.transpose(2, 1, 0, 3, 4).reshape(n_plan_steps, n_runs, n_draws * minibatch, 3)
        aug = torch.from_numpy(aug).to(device)
    return ReplayPlan(torch.from_numpy(idx).to(device), (avail < minibatch).any(axis=0), aug)


def stacked_draws(per_run: list[dict[str, np.ndarray]], device: torch.device) -> dict[str, torch.Tensor] | None:
    """The runs' draws side by side: name -> (steps, R, ...); None when the method draws nothing."""
    if not per_run or not per_run[0]:
        return None
    return {k: torch.from_numpy(np.stack([d[k] for d in per_run], axis=1)).to(device) for k in per_run[0]}


def step_slice(draws: dict[str, torch.Tensor] | None, step: int) -> dict[str, torch.Tensor]:
    """One step's rows of ``stacked_draws``: name -> (R, ...)."""
    return {} if draws is None else {k: v[step] for k, v in draws.items()}
