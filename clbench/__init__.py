"""clbench: the general masked softmax (arXiv 2309.14808) benchmarked on replay-based continual learning.

The library API the CLI and the reports stand on, importable from here:

- ``masked_cross_entropy``: the general masked softmax as a pure function (``clbench.masking``).
- ``MaskSpec``, ``RunConfig`` -> ``resolve`` -> ``ResolvedConfig``: what a run is (``clbench.runs``).
- ``train_runs``: resolve, plan and train runs in lockstep groups (``clbench.sweep.driver``), the same
  planning and executor path as ``clbench run``; ``train_group`` trains one group
  (``clbench.engine.loop``).
- ``RunResult``: accuracy matrices and everything measured (``clbench.runs.results``).
- ``load_runs``, ``load_matrices``, ``load_histograms``, ``load_curves`` (evaluations during training): the
  registry as DataFrames (``clbench.store``); ``list_runs``: what ``clbench runs`` lists, read from an
  SQLite file without pandas or SQLAlchemy (``clbench.store.listing``).
- ``clbench.metrics``: FAA, forgetting, BWT as functions of an accuracy matrix.

Each name is imported when first used (PEP 562), so that ``import clbench.cli`` and the commands
that train nothing do not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from clbench.version import __version__

# No OpenMP settings are forced here: torch's default (waiting threads spin for a few ms) is the
# fastest alone (10-seed ER group 6.9 s, against 14.1 s with OMP_WAIT_POLICY=PASSIVE), but two
# busy processes on 2 cores then slow each other 5x (34 s each); one thread each (--threads 1)
# takes 12 s there. Measured by benchmarks/threads.py (benchmarks/README.md, "Threads").

# The public API: name -> the module that defines it.
_API = {
    "BENCHMARKS": "clbench.data.specs",
    "DataNotFoundError": "clbench.data.sources",
    "MaskSpec": "clbench.runs.mask",
    "METHODS": "clbench.methods",
    "Progress": "clbench.engine.progress",
    "ResolvedConfig": "clbench.runs.resolved",
    "RunConfig": "clbench.runs.config",
    "RunResult": "clbench.runs.results",
    "SyntheticOptions": "clbench.data.specs",
    "load_benchmark": "clbench.data.loading",
    "load_curves": "clbench.store.measures",
    "load_histograms": "clbench.store.measures",
    "load_matrices": "clbench.store.queries",
    "load_runs": "clbench.store.queries",
    "list_runs": "clbench.store.listing",
    "masked_cross_entropy": "clbench.masking",
    "plan_groups": "clbench.sweep.plan",
    "resolve": "clbench.runs.config",
    "train_group": "clbench.engine.loop",
    "train_runs": "clbench.sweep.driver",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'clbench' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
