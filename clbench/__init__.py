"""clbench: the general masked softmax (arXiv 2309.14808) benchmarked on replay-based continual learning.

The library API the CLI and the reports stand on:

- ``masked_cross_entropy``: the general masked softmax as a pure function (``clbench.masking``).
- ``RunConfig`` -> ``resolve`` -> ``ResolvedConfig``: what a run is (``clbench.config``).
- ``train_runs`` / ``train_group`` / ``plan_groups``: lockstep training (``clbench.trainer``).
- ``RunResult``: accuracy matrices and everything measured (``clbench.results``).
- ``clbench.metrics``: FAA, forgetting, BWT as functions of an accuracy matrix.
"""

__version__ = "0.1.0"

# No OpenMP settings are forced here: torch's default (waiting threads spin for a few ms) is the
# fastest alone (10-seed ER group 6.9 s, against 14.1 s with OMP_WAIT_POLICY=PASSIVE), but two
# busy processes on 2 cores then slow each other 5x (34 s each); one thread each (--threads 1)
# takes 12 s there. Measured by benchmarks/threads.py (benchmarks/README.md, "Threads").

from .config import METHODS, ResolvedConfig, RunConfig, resolve
from .data import BENCHMARKS, DataNotFoundError, SyntheticOptions, load_benchmark
from .masking import MaskSpec, masked_cross_entropy
from .registry import load_histograms, load_runs
from .results import RunResult
from .trainer import Progress, plan_groups, train_group, train_runs

__all__ = [
    "BENCHMARKS", "METHODS", "DataNotFoundError", "MaskSpec", "Progress", "ResolvedConfig", "RunConfig",
    "RunResult", "SyntheticOptions", "load_benchmark", "masked_cross_entropy", "plan_groups", "resolve",
    "train_group", "train_runs", "load_histograms", "load_runs",
]
