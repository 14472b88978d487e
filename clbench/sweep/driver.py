"""Sweeps: the cartesian product of methods x buffers x masks x seeds, planned against the store
and executed group by group.

``sweep_configs`` builds the configs, ``plan_sweep`` resolves them and asks the store what is
already done (``cached``) and what is not (``run``), packing the latter into lockstep groups, and
``execute`` is the driver: an executor (``clbench.executors``: in this process, or on a Ray
cluster) trains the groups, and the driver, the store's only writer, claims the runs, marks them
running, saves each group's results as soon as it returns and marks what stops. An interruption
loses at most the running groups; running the same sweep again computes only what is missing.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from clbench.engine.checkpoint import CheckpointPolicy, checkpoint_key, discard_checkpoint
from clbench.engine.progress import Progress, ProgressCallback
from clbench.runs.config import RunConfig
from clbench.runs.resolved import ResolvedConfig
from clbench.runs.results import RunResult
from clbench.store.ownership import HEARTBEAT_INTERVAL_S, Owner
from clbench.store.store import Store
from clbench.sweep.executors import (
    DataSource,
    Executor,
    GroupEvent,
    GroupFailed,
    GroupProgress,
    GroupStarted,
    GroupSubmitted,
    GroupTask,
    LocalExecutor,
    TrainOptions,
)
from clbench.sweep.plan import Plan, describe_group, plan_sweep

if TYPE_CHECKING:  # a device may be given as torch's; the driver itself never loads torch
    import torch

# ---------------------------------------------------------------------------------------------
# What a sweep is


# ---------------------------------------------------------------------------------------------
# The cost model behind --dry-run's estimate


# ---------------------------------------------------------------------------------------------
# The plan


# ---------------------------------------------------------------------------------------------
# Execution


@dataclass(frozen=True)
class RunningGroup:
    """A group being trained right now, as the last report of it says."""

    group: int
    label: str  # describe_group of the group
    where: str  # the process training it: "" for this process
    attempt: int  # 1, or more when it was started over (its worker died)
    train: Progress | None  # its trainer's last report; None before the first


@dataclass(frozen=True)
class SweepProgress:
    """A progress report of ``execute``: what happened (``event`` to ``group``) and how far the
    sweep is. Several groups may run at once (a cluster executor); ``running`` lists them all."""

    event: (
        str  # "group_start" (a process started training it; again on a retry), "train" (a trainer report), "group_done"
    )
    group: int
    n_groups: int
    runs_done: int  # runs computed and saved so far in this sweep
    n_runs: int  # runs this sweep computes
    label: str  # describe_group of ``group``
    fraction: float  # of the estimated work (cost-model weighted), in [0, 1]
    elapsed_s: float  # since execute started
    train: Progress | None = None  # the trainer's report for "train" events
    groups_done: int = 0
    running: tuple[RunningGroup, ...] = ()
    where: str = ""  # the process that trains (group_start) or trained (group_done) ``group``; "" for this one
    attempt: int = 1
    note: str = ""  # group_start: what the executor chose for the group that the user should hear of (threads)

    @property
    def groups_queued(self) -> int:
        return self.n_groups - self.groups_done - len(self.running)


@dataclass(frozen=True)
class SweepOutcome:
    computed: tuple[str, ...]  # run ids computed and saved
    cached: tuple[str, ...]  # run ids reused (done before, or by another process meanwhile)
    wall_s: float
    held: dict[str, str] = field(default_factory=dict)  # run id -> live process computing it instead
    results: tuple[RunResult, ...] = ()  # without a store (``train_runs``): the computed runs' results


def execute(
    plan: Plan,
    store: Store | None,
    *,
    executor: Executor | None = None,
    options: TrainOptions | None = None,
    device: str | torch.device = "cpu",
    data_dir: str | None = None,
    download: bool = False,
    source: DataSource | None = None,
    experiment: str | None = None,
    progress: Callable[[SweepProgress], None] | None = None,
    on_group_done: Callable[[list[RunResult]], None] | None = None,
    checkpoint: CheckpointPolicy | None = None,
) -> SweepOutcome:
    """Compute the plan's runs, saving each group's results as soon as it finishes.

    This process is the driver and the store's only writer, whatever ``executor`` computes the
    groups (default: ``LocalExecutor``, in this process, one after another; ``RayExecutor``: a
    cluster). ``options`` reach ``train_group`` in whichever process trains a group. The executor is
    started if it is not yet, and left open (a ``with`` block around it closes it).

    Runs first become ``pending`` (owned by this process), a group's ``running`` when a process
    starts training it and ``finished`` with its results in one transaction when it returns. If a
    group raises, its runs become ``failed`` (with the traceback), the groups not yet done are
    cancelled and their runs become ``interrupted``, and :class:`GroupFailed` is raised; on
    ``KeyboardInterrupt`` (or any other exception) all unfinished runs of this sweep become
    ``interrupted`` and the exception is re-raised. Finished runs are never touched by an
    interruption.

    The groups' data is loaded from ``source`` (default: ``DataSource(data_dir, download)``); a
    group whose files are not those its runs were planned with (``ResolvedConfig.data``) fails with
    ``DataChanged``, one line, and trains nothing.

    ``store=None`` (``train_runs``): nothing is written; the results are returned in
    ``SweepOutcome.results`` (plan order) and checkpoints are left for the caller to delete.

    With ``checkpoint`` (the same as ``options.checkpoint``), each group is checkpointed while it
    trains (``train_group``) and resumes from its checkpoint when the same group is planned again,
    in whichever process trains it (a cluster: the directory must be shared by the nodes); the
    driver deletes a group's checkpoint once its results are committed.
    """
    executor = executor if executor is not None else LocalExecutor()
    options = _with_checkpoint(options if options is not None else TrainOptions(), checkpoint)
    executor.check_device(device)  # before anything is written
    if plan.to_run:  # connect (and check the cluster) before claiming runs
        executor.start()
    sweep = _Sweep(plan, store, experiment, progress)
    heartbeat = Heartbeat(store, sweep.owner) if store is not None else None
    try:
        groups = sweep.groups()
        source = source if source is not None else DataSource(data_dir, download)
        events = executor.run(groups, source, options, device, progress=sweep.on_train) if groups else _no_events()
        with contextlib.closing(events):  # closing it early (an exception here) cancels what is not done
            for event in events:
                results = sweep.handle(event, options.checkpoint)
                if results is not None and on_group_done is not None:
                    on_group_done(results)
    except BaseException:
        sweep.record_stop()
        raise
    finally:
        if heartbeat is not None:
            heartbeat.stop()
    return sweep.outcome()


def _with_checkpoint(options: TrainOptions, checkpoint: CheckpointPolicy | None) -> TrainOptions:
    if checkpoint is None:
        return options
    if options.checkpoint not in (None, checkpoint):
        raise ValueError("execute() got two checkpoint policies: checkpoint= and options.checkpoint differ")
    return replace(options, checkpoint=checkpoint)


class _Sweep:
    """One ``execute`` in flight: the runs it claimed, what its events did to them and to the store."""

    def __init__(self, plan: Plan, store: Store | None, experiment: str | None, progress: Callable | None) -> None:
        self.store, self.progress = store, progress
        self.owner = Owner.current()
        self.started = time.perf_counter()
        self.held: dict[str, str] = {}
        self.jobs: dict[str, str] = {}  # run id -> the cluster job an earlier driver submitted for it
        self.done_elsewhere: tuple[str, ...] = ()
        if store is not None:
            claim = store.claim(
                [r.config for r in plan.to_run],
                self.owner,
                experiment=experiment,
                tag=[r.config for r in plan.cached],
                force=plan.force,
            )
            # Another live process computes the held runs; those neither claimed nor held were
            # finished by another process since the plan was made. Either way, not here.
            elsewhere = {r.run_id for r in plan.to_run} - set(claim.claimed)
            self.done_elsewhere = tuple(sorted(elsewhere - set(claim.held)))
            self.held = claim.held
            plan = _without(plan, elsewhere)
            self.jobs = store.recorded_jobs(claim.claimed) if plan.runs else {}
        self.plan = plan
        self.tracker = _Tracker(plan, self.started)
        self.unfinished = [plan.runs[i].run_id for group in plan.groups for i in group]
        self.results: dict[str, RunResult] = {}

    def groups(self) -> list[GroupTask]:
        return _group_tasks(self.plan, self.jobs)

    def report(self, event: str, group: int, **extra) -> None:
        if self.progress is not None:
            self.progress(self.tracker.snapshot(event, group, **extra))

    def on_train(self, p: GroupProgress) -> None:
        if self.tracker.train(p.group, p.train):
            running = self.tracker.running[p.group]
            self.report("train", p.group, train=p.train, where=running.where, attempt=running.attempt)

    def handle(self, event: GroupEvent, checkpoint: CheckpointPolicy | None) -> list[RunResult] | None:
        """Record one executor event; a finished group's results (else ``None``)."""
        ids = self.tracker.run_ids(event.group)
        if isinstance(event, GroupSubmitted):
            if self.store is not None:
                self.store.record_job(ids, self.owner, event.job)
            return None
        if isinstance(event, GroupStarted):
            if self.store is not None:
                self.store.mark_running(ids, self.owner)
            self.tracker.start(event)
            self.report("group_start", event.group, where=event.where, attempt=event.attempt, note=event.note)
            return None
        if not event.ok:
            if self.store is not None:
                where = f"on {event.where}: " if event.where else ""
                self.store.mark_failed(ids, self.owner, f"{where}{event.detail or event.error}")
            raise GroupFailed(event, self.tracker.labels[event.group], len(self.plan.groups)) from event.exception
        if self.store is not None:
            self.store.save_results(event.results, self.owner)
            if checkpoint is not None:
                discard_checkpoint(checkpoint.directory, checkpoint_key(ids))
        else:
            self.results.update((r.config.identity(), r) for r in event.results)
        self.tracker.done(event.group)
        done = set(ids)
        self.unfinished = [rid for rid in self.unfinished if rid not in done]
        self.report("group_done", event.group, where=event.where)
        return list(event.results)

    def record_stop(self) -> None:
        if self.store is not None:
            _record_stop(self.store, self.owner, self.unfinished)

    def outcome(self) -> SweepOutcome:
        computed = tuple(self.tracker.computed)
        return SweepOutcome(
            computed,
            tuple(r.run_id for r in self.plan.cached) + self.done_elsewhere,
            time.perf_counter() - self.started,
            self.held,
            results=tuple(self.results[i] for i in computed if i in self.results),
        )


def _group_tasks(plan: Plan, jobs: dict[str, str]) -> list[GroupTask]:
    """The plan's groups to compute; a group whose runs all carry one recorded cluster job (an
    earlier driver of theirs submitted it and died) gets that job to adopt."""
    tasks = []
    for g in range(len(plan.groups)):
        recorded = {jobs.get(plan.runs[i].run_id) for i in plan.groups[g]}
        job = recorded.pop() if len(recorded) == 1 else None
        tasks.append(GroupTask(g, tuple(plan.group_configs(g)), job))
    return tasks


def _no_events():
    yield from ()


class _Tracker:
    """The driver's view of a sweep in flight: which groups are done, which run where, how far
    (the cost model's estimate of each group weights its share of the work)."""

    def __init__(self, plan: Plan, started: float):
        self.plan, self.started = plan, started
        self.n_groups = len(plan.groups)
        self.n_runs = len(plan.to_run)
        self.labels = [describe_group(plan.group_configs(g)) for g in range(self.n_groups)]
        self.estimates = plan.group_estimates_s()
        self.total = sum(self.estimates) or 1.0
        self.done_estimate = 0.0
        self.groups_done = 0
        self.computed: list[str] = []
        self.running: dict[int, RunningGroup] = {}
        self.fraction_in: dict[int, float] = {}

    def run_ids(self, group: int) -> list[str]:
        return [self.plan.runs[i].run_id for i in self.plan.groups[group]]

    def start(self, event: GroupStarted) -> None:
        self.running[event.group] = RunningGroup(
            event.group, self.labels[event.group], event.where, event.attempt, None
        )
        self.fraction_in[event.group] = 0.0  # a retry starts over

    def train(self, group: int, p: Progress) -> bool:
        """Record a trainer report; False when it is stale (its group is no longer running)."""
        if group not in self.running:
            return False
        self.running[group] = replace(self.running[group], train=p)
        within_task = (p.epoch + p.step / max(p.n_steps, 1)) / max(p.n_epochs, 1)
        self.fraction_in[group] = min(1.0, (p.task + within_task) / p.n_tasks)
        return True

    def done(self, group: int) -> None:
        self.running.pop(group, None)
        self.fraction_in.pop(group, None)
        self.done_estimate += self.estimates[group]
        self.groups_done += 1
        self.computed.extend(self.run_ids(group))

    def snapshot(self, event: str, group: int, **extra) -> SweepProgress:
        running_work = sum(self.estimates[g] * f for g, f in self.fraction_in.items())
        fraction = min(1.0, (self.done_estimate + running_work) / self.total)
        return SweepProgress(
            event,
            group,
            self.n_groups,
            len(self.computed),
            self.n_runs,
            self.labels[group],
            fraction,
            time.perf_counter() - self.started,
            groups_done=self.groups_done,
            running=tuple(self.running[g] for g in sorted(self.running)),
            **extra,
        )


class Heartbeat:
    """A thread that tells the store, every ``HEARTBEAT_INTERVAL_S``, that ``owner`` is alive, so
    processes on other hosts leave its runs alone (``Store.claim``) for as long as it lives, however
    long a group trains. Failures to write are ignored: a missed beat only risks a late one."""

    def __init__(self, store: Store, owner: Owner, interval_s: float = HEARTBEAT_INTERVAL_S):
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(store, owner, interval_s), daemon=True, name="clbench-heartbeat"
        )
        self._thread.start()

    def _beat(self, store: Store, owner: Owner, interval_s: float) -> None:
        while not self._stopped.wait(interval_s):
            try:
                store.heartbeat(owner)
            except Exception:  # noqa: BLE001 - the sweep itself reports database failures
                pass

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def _without(plan: Plan, run_ids: set[str]) -> Plan:
    """``plan`` without the runs ``run_ids`` (their groups shrink; empty groups go)."""
    if not run_ids:
        return plan
    keep = [i for i, r in enumerate(plan.runs) if r.run_id not in run_ids]
    index = {old: new for new, old in enumerate(keep)}
    groups = tuple(g for g in (tuple(index[i] for i in group if i in index) for group in plan.groups) if g)
    return replace(plan, runs=tuple(plan.runs[i] for i in keep), groups=groups)


def _record_stop(store: Store, owner: Owner, unfinished: list[str]) -> None:
    """Mark what this sweep leaves unfinished ``interrupted`` (failed runs stay failed); never hide
    the exception that stopped the sweep behind a second error."""
    try:
        store.mark_interrupted(unfinished, owner)
    except Exception:  # the store itself may be what failed; the next run marks these rows stale
        pass


def train_runs(
    configs: Sequence[RunConfig | ResolvedConfig],
    *,
    device: str | torch.device = "cpu",
    data_dir: str | None = None,
    download: bool = False,
    max_group_size: int | None = None,
    progress: ProgressCallback | None = None,
    on_group_done: Callable[[list[RunResult]], None] | None = None,
    checkpoint: CheckpointPolicy | None = None,
) -> list[RunResult]:
    """Resolve, group and train runs; results in the order of ``configs`` (a run given twice is
    trained once). The path of ``clbench run`` (``plan_sweep``, then ``execute`` with the local
    executor) without a store: nothing is written, and a group that raises raises its exception.

    ``on_group_done`` receives each group's results as soon as the group finishes, so a caller can
    persist them before the next group starts (an interruption then loses only the running group).
    ``checkpoint``: groups are checkpointed while they train and resume from their checkpoints;
    deleting a checkpoint once its results are kept is the caller's
    (``clbench.engine.checkpoint.discard_checkpoint``).
    """
    source = DataSource(data_dir, download)
    # Identified with the data found: a copy that is not the published files has other run IDs.
    resolved = [c.resolve() if isinstance(c, RunConfig) else c for c in configs]
    prints = {b: source.data_print(b) for b in dict.fromkeys(c.benchmark for c in resolved)}
    resolved = [c if c.data == prints[c.benchmark] else replace(c, data=prints[c.benchmark]) for c in resolved]
    plan = plan_sweep(resolved, None, max_group_size=max_group_size)

    def on_progress(p: SweepProgress) -> None:
        if p.event == "train" and p.train is not None:
            progress(p.train)

    try:
        outcome = execute(
            plan,
            None,
            executor=LocalExecutor(),
            device=device,
            source=source,
            progress=on_progress if progress is not None else None,
            on_group_done=on_group_done,
            checkpoint=checkpoint,
        )
    except GroupFailed as exc:
        if exc.__cause__ is None:
            raise
        raise exc.__cause__ from None  # the group's own exception, as training raised it
    by_id = {r.config.identity(): r for r in outcome.results}
    return [by_id[c.identity()] for c in resolved]
