"""What a training group tells its caller as it goes: progress reports and, opt-in, the wall time
of each phase of training. Torch-free (``PhaseTimes`` imports torch only to time a CUDA device),
so the sweep and the CLI can name these without loading the engine."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Progress:
    """A progress report from a training group (passed to the ``progress`` callback)."""

    phase: str  # "resume" (from a checkpoint, at its position), "train" (during a task), "checkpoint" (one was
    # saved at this position), "end_of_task" (during a method's end-of-task passes), "evaluate", "task_done"
    group_size: int
    task: int
    n_tasks: int
    epoch: int
    n_epochs: int
    step: int  # steps done in this epoch
    n_steps: int  # steps per epoch of this task
    elapsed_s: float  # since the group started


ProgressCallback = Callable[[Progress], None]
PhaseTimer = Callable[[str], contextlib.AbstractContextManager]


class PhaseTimes:
    """Opt-in wall-clock split of ``train_group`` by phase (``train_group(..., phases=PhaseTimes())``),
    for ``benchmarks/efficiency.py``. Each phase synchronises a CUDA device at its edges, so this
    perturbs GPU timing a little; without it the trainer times nothing but whole tasks."""

    def __init__(self, device="cpu"):
        self.seconds: dict[str, float] = defaultdict(float)
        self.cuda = str(device).startswith("cuda")

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.cuda:
            import torch  # noqa: PLC0415 - only a CUDA device is synchronised

            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds[name] += time.perf_counter() - t0


_UNTIMED = contextlib.nullcontext()


def untimed(name: str) -> contextlib.AbstractContextManager:
    """The phase timer of a group nobody profiles: times nothing."""
    return _UNTIMED
