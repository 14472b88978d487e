"""What every executor shares: the unit of work, the events an executor reports, and the interface.

The unit of work is one lockstep group: :func:`compute_group` maps (the group's configs, the
loaded data, the training options) to the group's results, a plain function of its inputs that
runs wherever the executor puts it (this process, a Ray worker, a SLURM job). Everything about the
registry stays with the driver (``clbench.sweep.execute``): an executor never opens a database.

An executor's :meth:`Executor.run` yields, for each group, a :class:`GroupSubmitted` when it
hands the group to a cluster scheduler (SLURM: a job id to record), a :class:`GroupStarted` when a process
starts training it (again when a retry starts it over) and one :class:`GroupOutcome` when it is
done (its results, or a one-line error with the traceback), in the order things happen; training
progress goes to a callback meanwhile. Closing the iterator early cancels what is not done.
"""

from __future__ import annotations

import abc
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from clbench.engine.checkpoint import CheckpointPolicy
from clbench.engine.progress import Progress
from clbench.errors import first_line
from clbench.runs.resolved import ResolvedConfig

if TYPE_CHECKING:  # the training side loads when a group trains: planning and listing need no torch
    import torch

    from clbench.data.loading import ContinualData
    from clbench.runs.results import RunResult


@dataclass(frozen=True)
class TrainOptions:
    """The keyword arguments of ``train_group`` that a sweep chooses for all of its groups (beyond
    the configs, the data and the progress callback).

    Every field reaches ``train_group`` by its name, unchanged, in whichever process trains the
    group: a new option of ``train_group`` is one more field here, with nothing to change in the
    executors. The options travel to remote workers, so they must pickle.
    """

    # Checkpoint each group while it trains, and resume it from its checkpoint (on a cluster, in a
    # directory every node sees). The driver deletes a group's checkpoint once it is saved.
    checkpoint: CheckpointPolicy | None = None

    def train_group_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def compute_group(
    configs: Sequence[ResolvedConfig],
    data: ContinualData,
    options: TrainOptions,
    *,
    progress: Callable[[Progress], None] | None = None,
) -> list[RunResult]:
    """The unit of work: one lockstep group's results, a function of its inputs alone."""
    from clbench.engine.loop import train_group  # torch loads with the first group

    return train_group(list(configs), data, progress=progress, **options.train_group_kwargs())


@dataclass(frozen=True)
class GroupTask:
    """One lockstep group to compute: its index in the plan and its runs' configs; ``job``: the
    cluster job an earlier driver of these runs submitted for them (an executor that submits jobs
    waits for it, or collects its result, instead of submitting the group again)."""

    index: int
    configs: tuple[ResolvedConfig, ...]
    job: str | None = None

    @property
    def data_key(self) -> tuple:
        """Which data the group trains on (groups with one key share one loaded benchmark)."""
        c0 = self.configs[0]
        return (c0.benchmark, c0.synthetic, c0.class_order_seed) + ((c0.data,) if c0.data else ())


class DataChanged(ValueError):
    """The dataset files found when a group's data is loaded are not those its runs were planned
    (and identified) with: training on them would store numbers under the wrong run IDs."""


@dataclass(frozen=True)
class DataSource:
    """Where the driver loads benchmarks from: ``load_benchmark``'s arguments. Only the driver
    reads dataset files; remote workers receive the loaded data.

    ``memo`` keeps the hashes of the files fingerprinted (``clbench.data.fingerprint``) for this
    source's life: planning and loading hash each file once."""

    data_dir: str | os.PathLike | None = None
    download: bool = False
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    def data_print(self, benchmark: str) -> str | None:
        """What joins the identity of a run on ``benchmark`` with the data found here: ``None`` for
        synthetic data and for the published files, else their fingerprint. Raises
        ``DataNotFoundError`` when the data is not found."""
        from clbench.data.fingerprint import fingerprint
        from clbench.data.sources import locate
        from clbench.data.specs import get_benchmark

        dataset = get_benchmark(benchmark).dataset
        if dataset == "synthetic":
            return None
        root = locate(dataset, self.data_dir, download=self.download)
        return fingerprint(dataset, root, self.memo).identity_field

    def load(self, group: GroupTask, device: torch.device | str = "cpu") -> ContinualData:
        """The group's data, once its files are checked to be those its runs were planned with
        (:class:`DataChanged`, one line, otherwise)."""
        from clbench.data.loading import load_benchmark  # torch loads with the first group

        benchmark, synthetic, class_order_seed = group.data_key[:3]
        planned = group.configs[0].data
        if benchmark != "synthetic" and (found := self.data_print(benchmark)) != planned:
            raise DataChanged(
                f"the {benchmark} files found are {_describe_data(found)}, but these runs were planned "
                f"with {_describe_data(planned)}: nothing was trained on them (plan the runs again "
                "to compute them on the data there now)"
            )
        return load_benchmark(
            benchmark,
            data_dir=self.data_dir,
            download=self.download,
            class_order_seed=class_order_seed,
            synthetic=synthetic,
            device=device,
        )


def _describe_data(fingerprint: str | None) -> str:
    return "the published files" if fingerprint is None else f"other files (data fingerprint {fingerprint[:16]})"


@dataclass(frozen=True)
class GroupStarted:
    """A process started training the group (``attempt`` > 1: a retry, from the start)."""

    group: int
    where: str  # the process that trains it: "" for this process, else host, node and pid
    attempt: int = 1
    note: str = ""  # what the executor chose for it that the user should hear of (its CPU threads)


@dataclass(frozen=True)
class GroupSubmitted:
    """The group was submitted to a cluster scheduler as ``job`` (again on a resubmission); the
    driver records the job id with the group's runs, so that a driver started again after this one
    died finds the job instead of submitting the group twice."""

    group: int
    job: str


@dataclass(frozen=True)
class GroupProgress:
    """A training report of a running group (what ``train_group`` reports, forwarded)."""

    group: int
    train: Progress


@dataclass(frozen=True)
class GroupOutcome:
    """A group is done: its results, or the one-line error that stopped it and the traceback."""

    group: int
    results: tuple[RunResult, ...] | None
    where: str = ""
    error: str | None = None  # one line, e.g. "RuntimeError: CUDA out of memory"
    detail: str | None = None  # the traceback, from the process that raised
    # The exception itself where it was raised in this process (the local executor), so that a
    # caller without a store (``train_runs``) can raise it as it was; never sent between processes.
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None


GroupEvent = GroupSubmitted | GroupStarted | GroupOutcome
ProgressSink = Callable[[GroupProgress], None]


def failed(group: int, exc: BaseException, where: str = "", keep: bool = False) -> GroupOutcome:
    """The outcome of a group whose training raised ``exc`` (call it in the ``except`` block);
    ``keep``: the outcome holds ``exc`` itself (only where it stays in this process)."""
    return GroupOutcome(
        group,
        None,
        where,
        error=first_line(exc, with_type=True),
        detail="".join(traceback.format_exception(exc)),
        exception=exc if keep else None,
    )


class GroupFailed(RuntimeError):
    """A group's training raised; its runs are marked ``failed`` with the traceback."""

    def __init__(self, outcome: GroupOutcome, label: str, n_groups: int):
        where = f" on {outcome.where}" if outcome.where else ""
        super().__init__(f"group {outcome.group + 1}/{n_groups} ({label}) failed{where}: {outcome.error}")
        self.outcome = outcome


class ExecutorUnavailable(Exception):
    """The executor cannot start (not installed, cluster unreachable, versions differ, no node
    can hold a group). The message is one line meant for the person running clbench."""


class Executor(abc.ABC):
    """Computes lockstep groups somewhere and reports how they go. ``start`` (idempotent; also done
    by ``run``'s caller, ``clbench.sweep.execute``) connects to whatever runs the groups and checks
    it, raising :class:`ExecutorUnavailable`; ``close`` lets it go. Usable as a context manager."""

    name = "executor"

    def start(self) -> None:  # noqa: B027 - optional hook: most executors have nothing to start
        """Connect and check, before any run is claimed (raises :class:`ExecutorUnavailable`)."""

    def close(self) -> None:  # noqa: B027 - optional hook: most executors hold nothing
        """Release what ``start`` acquired."""

    def describe(self) -> str:
        """One line saying where groups run, for the person running the sweep."""
        return self.name

    def check_device(self, device: str) -> None:
        """Raise ``ValueError`` (one line) if groups cannot train on ``device`` with this executor.
        Here: the device must exist in this process (``resolve_device``)."""
        from clbench.engine.environment import resolve_device  # torch: only to train

        resolve_device(device)

    @abc.abstractmethod
    def run(
        self,
        groups: Sequence[GroupTask],
        source: DataSource,
        options: TrainOptions,
        device: str,
        progress: ProgressSink | None = None,
    ) -> Iterator[GroupEvent]:
        """Compute ``groups``, yielding a :class:`GroupStarted` as each starts training and one
        :class:`GroupOutcome` per group as it completes (a failed group's outcome carries the
        error: ``run`` itself raises only for what stops everything, such as ``KeyboardInterrupt``).
        Training reports go to ``progress`` meanwhile. The caller handles each outcome before
        asking for the next event (so results are saved as soon as a group returns); closing the
        iterator early cancels every group not yet reported done."""

    def __enter__(self) -> Executor:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
