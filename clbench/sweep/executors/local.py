"""The local executor: every group in this process, one after another (the default)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from clbench.engine.progress import Progress
from clbench.sweep.executors.base import (
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
from clbench.sweep.executors.threads import ThreadChooser, user_chose_threads


class LocalExecutor(Executor):
    """Trains the groups in this process, in plan order. One benchmark is in memory at a time:
    groups on the same data (consecutive in a plan) share it.

    ``threads``: ``None`` leaves torch's threads as the process has them; a number sets them;
    ``"auto"`` (``clbench run``'s default) chooses them on the CPU before each group from what
    the other processes on the cores did lately (``clbench.threads``), unless the environment
    already chose (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OMP_WAIT_POLICY``). The choice
    is announced in the group's start event (``GroupStarted.note``) and recorded with its runs.
    """

    name = "local"

    def __init__(self, threads: int | str | None = None):
        if not (threads is None or threads == "auto" or (isinstance(threads, int) and threads >= 1)):
            raise ValueError(f"threads must be a whole number >= 1, 'auto' or None, not {threads!r}")
        self.threads = threads

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
        import torch  # torch loads when a group trains, not when a sweep is planned

        from clbench.engine.environment import resolve_device

        dev = resolve_device(device)
        threads_before = torch.get_num_threads()
        if isinstance(self.threads, int):
            torch.set_num_threads(self.threads)
        chooser = ThreadChooser() if self.threads == "auto" and dev.type == "cpu" and not user_chose_threads() else None
        data, data_key, said = None, None, None
        try:
            for group in groups:
                note = ""
                try:
                    if data_key != group.data_key:
                        data = None  # let the previous dataset go before loading the next
                        data = source.load(group, dev)
                        data_key = group.data_key
                except Exception as exc:  # noqa: BLE001 - reported as the group's outcome
                    yield GroupStarted(group.index, "")
                    yield failed(group.index, exc, keep=True)
                    continue
                if chooser is not None:  # after loading: the look spans it (two processes load at once)
                    choice = chooser.look()
                    torch.set_num_threads(choice.threads)
                    note = "" if choice.threads == said else choice.describe()
                    said = choice.threads
                yield GroupStarted(group.index, "", note=note)
                try:

                    def report(p: Progress, g: int = group.index) -> None:
                        if chooser is not None:
                            chooser.note_progress()
                        if progress is not None:
                            progress(GroupProgress(g, p))

                    results = compute_group(group.configs, data, options, progress=report)
                except Exception as exc:  # noqa: BLE001 - reported as the group's outcome
                    outcome = failed(group.index, exc, keep=True)
                else:
                    outcome = GroupOutcome(group.index, tuple(results))
                yield outcome
        finally:  # the process's threads as they were (the choice is this executor's, per group)
            torch.set_num_threads(threads_before)
