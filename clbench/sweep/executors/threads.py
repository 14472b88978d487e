"""How many CPU threads torch uses for a group, chosen from what the cores are doing.

torch's OpenMP threads spin for a while when they run out of work. Alone on the cores that is the
fastest; beside another busy process the spinning threads take the cores from it and both slow
down about 5x (benchmarks/README.md, "Threads"). How threads wait is fixed when torch starts, but
how many there are is not: so before each group the local executor looks at how much CPU the
*other* processes used on this process's cores lately and leaves those cores to them
(``choose_threads``). On a quiet machine that is every core; beside one busy process on two cores,
one thread; beside a niced one (``nice`` > 0), which gives way, every core.

The thread count changes a run's numbers at rounding level (reductions split differently), so
the count a group used is recorded with its runs (``clbench.environment``); ``--threads N`` (or
``OMP_NUM_THREADS``) pins it, for bit-for-bit repeats on a loaded machine.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

# Environment variables by which a user has already chosen torch's threads (or how they wait):
# then clbench chooses nothing.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")

# A core counts as taken when other processes kept it busy at least this fraction of the time
# (a quiet machine's daemons use ~0.02 core; a busy process beside spinning threads still gets
# ~0.3-0.5 of a core).
TAKEN_FRACTION = 0.25
MIN_WINDOW_S = 0.25  # a shorter look is filled up by waiting

_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def usable_cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class CpuUse:
    """A reading of the CPU time spent so far: by everything on this process's cores, and by it."""

    at: float  # time.monotonic()
    busy_s: float  # CPU-seconds the cores this process may use were busy since boot (any process)
    own_s: float  # CPU-seconds this process used (all its threads)


def cpu_use(stat_path: str = "/proc/stat", count_niced: bool | None = None) -> CpuUse | None:
    """Read the CPU time now; ``None`` where the OS does not say (no ``/proc/stat``).

    Time of niced processes (``nice`` > 0) is left out when this process is not niced itself
    (``count_niced`` left ``None``): they give way to it, so they take no core from it (benchmark 6:
    the 10-seed ER group beside a busy process at nice 19 is as fast as alone). Time stolen by the
    hypervisor is left out too: no process on these cores took it.
    """
    if count_niced is None:
        count_niced = hasattr(os, "nice") and os.nice(0) > 0
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    busy = 0
    try:
        with open(stat_path) as f:
            for line in f:
                name, *fields = line.split()
                if not name.startswith("cpu") or name == "cpu":
                    continue
                if cores is not None and int(name[3:]) not in cores:
                    continue
                # user nice system idle iowait irq softirq steal ...
                user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
                busy += user + system + irq + softirq + (nice if count_niced else 0)
    except (OSError, ValueError, IndexError):
        return None
    t = os.times()
    return CpuUse(time.monotonic(), busy / _TICKS_PER_S, t.user + t.system)


def others_busy(before: CpuUse, after: CpuUse) -> float:
    """Cores the other processes kept busy on average between two readings (>= 0)."""
    window = after.at - before.at
    if window <= 0:
        return 0.0
    return max(0.0, ((after.busy_s - before.busy_s) - (after.own_s - before.own_s)) / window)


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cores: int
    others: float | None  # cores other processes used lately; None: unknown

    def describe(self) -> str:
        if self.others is None:
            return f"{self.threads} thread{'s' if self.threads != 1 else ''} (the CPU load is unknown here)"
        if self.threads == self.cores:
            return f"{self.threads} thread{'s' if self.threads != 1 else ''}: the {self.cores} cores are free"
        return (
            f"{self.threads} thread{'s' if self.threads != 1 else ''}: other processes keep {self.others:.1f} of "
            f"{self.cores} cores busy (--threads N chooses)"
        )


def choose_threads(cores: int, others: float | None) -> ThreadChoice:
    """Every core the other processes leave free (a core counts as taken from ``TAKEN_FRACTION``
    of its time on), at least one."""
    if others is None:
        return ThreadChoice(cores, cores, None)
    taken = max(0, math.ceil(others - TAKEN_FRACTION))
    return ThreadChoice(max(1, min(cores, cores - taken)), cores, others)


def user_chose_threads(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return any(env.get(name) for name in THREAD_ENV)


class ThreadChooser:
    """Chooses the threads for each group from the other processes' CPU use since the previous
    look (``look``); ``note_progress`` keeps the window recent during a long group."""

    def __init__(self, cores: int | None = None):
        self.cores = cores or usable_cpu_cores()
        self.readings: list[CpuUse] = []
        reading = cpu_use()
        if reading is not None:
            self.readings.append(reading)

    def note_progress(self) -> None:
        """Called during training: keeps a reading from the last few seconds (at most one a second)."""
        if self.readings and time.monotonic() - self.readings[-1].at >= 1.0:
            reading = cpu_use()
            if reading is not None:
                self.readings = [self.readings[-1], reading]

    def look(self) -> ThreadChoice:
        if not self.readings:
            return choose_threads(self.cores, None)
        start = self.readings[0]
        wait = MIN_WINDOW_S - (time.monotonic() - start.at)
        if wait > 0:
            time.sleep(wait)
        now = cpu_use()
        if now is None:
            return choose_threads(self.cores, None)
        self.readings = [now]
        return choose_threads(self.cores, others_busy(start, now))
