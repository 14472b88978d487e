"""A session: what ``clbench run`` and ``clbench report`` do between parsing their options and
printing, as one library function.

:func:`run_session` opens the store, marks the runs of ended processes, then for each sweep asked
for plans it against the store, announces the plan, executes it and announces the outcome, and
finally hands the open store to ``after`` (e.g. to render a report). It prints nothing: whoever
runs it hears of each step through a :class:`SessionEvents` (the CLI's draws a live display).
:func:`preview_plans` is the same planning, read-only, for a dry run.

The Python API without a store (``train_runs``) plans and executes the same way (``plan_sweep``,
then ``execute``); a session adds the store around it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from clbench.data.sources import DataNotFoundError
from clbench.engine.checkpoint import CheckpointPolicy
from clbench.runs.config import RunConfig
from clbench.runs.resolved import ResolvedConfig
from clbench.store.connection import StoreError
from clbench.store.opening import inspect_db, open_store
from clbench.store.store import Store
from clbench.sweep.driver import SweepOutcome, SweepProgress, execute
from clbench.sweep.executors import DataSource, Executor, ExecutorUnavailable
from clbench.sweep.plan import Plan, plan_sweep


@dataclass(frozen=True)
class SweepRequest:
    """One sweep of a session: its runs and the experiment label they are saved under."""

    configs: tuple[RunConfig | ResolvedConfig, ...]
    experiment: str | None = None


@dataclass(frozen=True)
class Planning:
    """How a session's sweeps are planned (``plan_sweep``'s options)."""

    force: bool = False
    max_group_size: int | None = None
    memory_budget: int | None = None  # bytes; None: groups are not sized to a memory budget

    def plan(
        self,
        configs: Sequence[RunConfig | ResolvedConfig],
        store: Store | None,
        data: Callable[[str], str | None] | None = None,
    ) -> Plan:
        """``data``: the data fingerprints (``Training.source().data_print``), see ``plan_sweep``."""
        return plan_sweep(
            configs,
            store,
            force=self.force,
            max_group_size=self.max_group_size,
            memory_budget=self.memory_budget,
            data=data,
        )


@dataclass(frozen=True)
class Training:
    """Where and how a session's groups train (``execute``'s options beyond the plan)."""

    device: str = "cpu"
    data_dir: Any = None
    download: bool = False
    checkpoint: CheckpointPolicy | None = None
    # The hashes of the dataset files fingerprinted in this session (planning and loading share them).
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    def source(self) -> DataSource:
        """Where the groups' data is loaded from, and the runs' data fingerprinted."""
        return DataSource(self.data_dir, self.download, self.memo)


class SessionRefused(Exception):
    """The session could not begin (the executor would not start, the store would not open) or a
    sweep could not be planned (a run that cannot fit in memory): one line, nothing was computed."""


class SessionEvents:
    """What a session tells whoever runs it, step by step. Every method here does nothing:
    override those you want to hear of (the CLI prints them)."""

    def stale(self, run_ids: list[str]) -> None:
        """Runs of processes that ended without finishing them were marked ``interrupted``."""

    def planned(self, request: SweepRequest, plan: Plan, where: str) -> None:
        """A sweep was planned against the store at ``where``; its execution starts next."""

    @contextlib.contextmanager
    def executing(self, plan: Plan, store: Store) -> Iterator[Callable[[SweepProgress], None] | None]:
        """Around a sweep's execution: yields the callback of its progress reports (or ``None``)."""
        yield None

    def executed(self, request: SweepRequest, outcome: SweepOutcome) -> None:
        """A sweep's execution ended."""


@dataclass(frozen=True)
class SessionOutcome:
    outcomes: tuple[SweepOutcome, ...]  # one per sweep, in order
    where: str  # the store, as it names itself
    after: Any = None  # what ``after`` returned


def run_session(
    url,
    requests: Sequence[SweepRequest],
    executor: Executor,
    *,
    planning: Planning = Planning(),
    training: Training = Training(),
    events: SessionEvents | None = None,
    after: Callable[[Store], Any] | None = None,
) -> SessionOutcome:
    """Start ``executor``, open the store at ``url`` (creating it), mark stale runs, then plan,
    announce and execute each sweep in turn, and call ``after`` with the store still open.

    Raises :class:`SessionRefused` (one line) when the executor does not start, the store does not
    open or a sweep cannot be planned; what ``execute`` raises passes through (the events'
    ``executing`` may turn it into something else). The executor is closed at the end.
    """
    events = events if events is not None else SessionEvents()
    store = _open(url, executor)
    outcomes = []
    with executor, store:
        stale = store.mark_stale_runs()
        if stale:
            events.stale(list(stale))
        source = training.source()
        for request in requests:
            try:  # the runs are identified with the data found (its fingerprint when not the published files)
                plan = planning.plan(request.configs, store, source.data_print)
            except (ValueError, DataNotFoundError) as exc:  # a run that cannot fit in memory, no data
                raise SessionRefused(str(exc)) from None
            events.planned(request, plan, store.where)
            with events.executing(plan, store) as progress:
                outcome = execute(
                    plan,
                    store,
                    executor=executor,
                    device=training.device,
                    source=source,
                    experiment=request.experiment,
                    progress=progress,
                    checkpoint=training.checkpoint,
                )
            events.executed(request, outcome)
            outcomes.append(outcome)
        rendered = after(store) if after is not None else None
    return SessionOutcome(tuple(outcomes), store.where, rendered)


def _open(url, executor: Executor) -> Store:
    """Connect the executor (a cluster is checked here), then open the store."""
    try:
        executor.start()
    except ExecutorUnavailable as exc:
        raise SessionRefused(str(exc)) from None
    try:
        return open_store(url)
    except StoreError as exc:
        executor.close()
        raise SessionRefused(str(exc)) from None


def preview_plans(
    url,
    requests: Sequence[SweepRequest],
    planning: Planning = Planning(),
    data: Callable[[str], str | None] | None = None,
) -> list[Plan]:
    """Each sweep planned against the store at ``url`` read-only (a missing or empty one: against
    nothing), for a dry run: nothing is created or written. ``data``: as for ``Planning.plan``."""
    store = open_store(url, readonly=True) if inspect_db(url) == "ready" else None
    try:
        return [planning.plan(request.configs, store, data) for request in requests]
    finally:
        if store is not None:
            store.close()
