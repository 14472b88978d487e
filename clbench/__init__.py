"""clbench: the general masked softmax (arXiv 2309.14808) benchmarked on replay-based continual learning.

The library API the CLI and the reports stand on:

- ``masked_cross_entropy``: the general masked softmax as a pure function (``clbench.masking``).
- ``RunConfig`` -> ``resolve`` -> ``ResolvedConfig``: what a run is (``clbench.config``).
- ``train_runs`` / ``train_group`` / ``plan_groups``: lockstep training (``clbench.trainer``).
- ``RunResult``: accuracy matrices and everything measured (``clbench.results``).
- ``clbench.metrics``: FAA, forgetting, BWT as functions of an accuracy matrix.
"""

__version__ = "0.1.0"

import os as _os

# OpenMP threads that spin while waiting make torch 10-50x slower as soon as another process
# competes for the cores (measured here: a 10-seed ER group took 156 s spinning, 17 s passive,
# beside one other busy process). Passive waiting costs little alone. Takes effect only if torch
# is not imported yet; the user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import METHODS, ResolvedConfig, RunConfig, resolve  # noqa: E402
from .data import BENCHMARKS, DataNotFoundError, SyntheticOptions, load_benchmark  # noqa: E402
from .masking import MaskSpec, masked_cross_entropy  # noqa: E402
from .results import RunResult  # noqa: E402
from .trainer import Progress, plan_groups, train_group, train_runs  # noqa: E402
from .registry import load_runs  # noqa: E402

__all__ = [
    "BENCHMARKS", "METHODS", "DataNotFoundError", "MaskSpec", "Progress", "ResolvedConfig", "RunConfig",
    "RunResult", "SyntheticOptions", "load_benchmark", "masked_cross_entropy", "plan_groups", "resolve",
    "train_group", "train_runs", "load_runs",
]
