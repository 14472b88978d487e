"""The local executor: every group in this process, one after another (the default)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..trainer import Progress, resolve_device
from .base import (
    DataSource,
    Executor,
    GroupEvent,
    GroupOutcome,
    GroupProgress,
    GroupStarted,
    GroupTask,
    ProgressSink,
    TrainOptions,
    compute_group,
    failed,
)


class LocalExecutor(Executor):
    """Trains the groups in this process, in plan order, with the process's torch threads. One
    benchmark is in memory at a time: groups on the same data (consecutive in a plan) share it."""

    name = "local"

    def describe(self) -> str:
        return "local: groups train in this process, one after another"

    def run(
        self,
        groups: Sequence[GroupTask],
        source: DataSource,
        options: TrainOptions,
        device: str,
        progress: ProgressSink | None = None,
    ) -> Iterator[GroupEvent]:
        dev = resolve_device(device)
        data, data_key = None, None
        for group in groups:
            yield GroupStarted(group.index, "")
            try:
                if data_key != group.data_key:
                    data = None  # let the previous dataset go before loading the next
                    data = source.load(group, dev)
                    data_key = group.data_key

                def report(p: Progress, g: int = group.index) -> None:
                    if progress is not None:
                        progress(GroupProgress(g, p))

                results = compute_group(group.configs, data, options, progress=report)
            except Exception as exc:  # noqa: BLE001 - reported as the group's outcome
                outcome = failed(group.index, exc)
            else:
                outcome = GroupOutcome(group.index, tuple(results))
            yield outcome
