"""Executors: where and how a sweep's lockstep groups are computed.

``clbench.sweep.execute`` is the driver (the registry's only writer); an executor only computes
groups and reports how they go (``base.Executor``). ``local.LocalExecutor`` trains them in this
process (the default); ``ray.RayExecutor`` as tasks on a Ray cluster; ``slurm.SlurmExecutor`` as
SLURM jobs through submitit. A new executor is one more module implementing ``Executor.run``.

This package never imports Ray or submitit itself: ``clbench.executors.ray`` (``.slurm``) imports
it when an executor starts, and ``make_executor`` imports that module only when asked for it.
"""

from __future__ import annotations

from clbench.sweep.executors.base import (
    DataChanged,
    DataSource,
    Executor,
    ExecutorUnavailable,
    GroupEvent,
    GroupFailed,
    GroupOutcome,
    GroupProgress,
    GroupStarted,
    GroupSubmitted,
    GroupTask,
    TrainOptions,
    compute_group,
)
from clbench.sweep.executors.local import LocalExecutor

EXECUTORS = ("local", "ray", "slurm")


def make_executor(name: str = "local", **options) -> Executor:
    """An executor by name: ``local`` (``LocalExecutor``'s option ``threads``), ``ray``
    (``RayExecutor``'s options) or ``slurm`` (``SlurmExecutor``'s). Raises ``ValueError`` with one
    line for an unknown name or option value."""
    if name == "local":
        unknown = sorted(set(options) - {"threads"})
        if unknown:
            raise ValueError(f"the local executor takes only the option threads (got {', '.join(unknown)})")
        return LocalExecutor(**options)
    if name == "ray":
        from clbench.sweep.executors.ray import RayExecutor

        return RayExecutor(**options)
    if name == "slurm":
        from clbench.sweep.executors.slurm import SlurmExecutor

        return SlurmExecutor(**options)
    raise ValueError(f"unknown executor {name!r}: valid executors are {', '.join(EXECUTORS)}")


__all__ = [
    "DataChanged",
    "DataSource",
    "EXECUTORS",
    "Executor",
    "ExecutorUnavailable",
    "GroupEvent",
    "GroupFailed",
    "GroupOutcome",
    "GroupProgress",
    "GroupStarted",
    "GroupSubmitted",
    "GroupTask",
    "LocalExecutor",
    "TrainOptions",
    "compute_group",
    "make_executor",
]
