"""Executors: where and how a sweep's lockstep groups are computed.

``clbench.sweep.execute`` is the driver (the registry's only writer); an executor only computes
groups and reports how they go (``base.Executor``). ``local.LocalExecutor`` trains them in this
process (the default); ``ray.RayExecutor`` as tasks on a Ray cluster. A new executor (e.g. SLURM
through submitit) is one more module implementing ``Executor.run``.

This package never imports Ray itself: ``clbench.executors.ray`` imports it when an executor
starts, and ``make_executor`` imports that module only when asked for ``"ray"``.
"""

from __future__ import annotations

from clbench.sweep.executors.base import (
    DataSource,
    Executor,
    ExecutorUnavailable,
    GroupEvent,
    GroupFailed,
    GroupOutcome,
    GroupProgress,
    GroupStarted,
    GroupTask,
    TrainOptions,
    compute_group,
)
from clbench.sweep.executors.local import LocalExecutor

EXECUTORS = ("local", "ray")


def make_executor(name: str = "local", **options) -> Executor:
    """An executor by name: ``local`` (``LocalExecutor``'s option ``threads``) or ``ray``
    (``RayExecutor``'s options). Raises ``ValueError`` with one line for an unknown name or option value."""
    if name == "local":
        unknown = sorted(set(options) - {"threads"})
        if unknown:
            raise ValueError(f"the local executor takes only the option threads (got {', '.join(unknown)})")
        return LocalExecutor(**options)
    if name == "ray":
        from clbench.sweep.executors.ray import RayExecutor

        return RayExecutor(**options)
    raise ValueError(f"unknown executor {name!r}: valid executors are {', '.join(EXECUTORS)}")


__all__ = [
    "DataSource",
    "EXECUTORS",
    "Executor",
    "ExecutorUnavailable",
    "GroupEvent",
    "GroupFailed",
    "GroupOutcome",
    "GroupProgress",
    "GroupStarted",
    "GroupTask",
    "LocalExecutor",
    "TrainOptions",
    "compute_group",
    "make_executor",
]
