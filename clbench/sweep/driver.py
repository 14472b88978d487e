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

import torch

from clbench.data.loading import ContinualData, load_benchmark
from clbench.engine.checkpoint import CheckpointPolicy, checkpoint_key, discard_checkpoint
from clbench.engine.environment import resolve_device
from clbench.engine.loop import train_group
from clbench.engine.progress import Progress, ProgressCallback
from clbench.runs.config import RunConfig
from clbench.runs.resolved import ResolvedConfig
from clbench.runs.results import RunResult
from clbench.store.ownership import HEARTBEAT_INTERVAL_S, Owner
from clbench.store.store import Store
from clbench.sweep.executors import (
    DataSource,
    Executor,
    GroupFailed,
    GroupProgress,
    GroupStarted,
    GroupSubmitted,
    GroupTask,
    LocalExecutor,
    TrainOptions,
)
from clbench.sweep.plan import Plan, describe_group, plan_groups

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


def execute(
    plan: Plan,
    store: Store,
    *,
    executor: Executor | None = None,
    options: TrainOptions | None = None,
    device: str = "cpu",
    data_dir: str | None = None,
    download: bool = False,
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

    With ``checkpoint`` (the same as ``options.checkpoint``), each group is checkpointed while it
    trains (``train_group``) and resumes from its checkpoint when the same group is planned again,
    in whichever process trains it (a cluster: the directory must be shared by the nodes); the
    driver deletes a group's checkpoint once its results are committed.
    """
    executor = executor if executor is not None else LocalExecutor()
    options = options if options is not None else TrainOptions()
    if checkpoint is not None:
        if options.checkpoint not in (None, checkpoint):
            raise ValueError("execute() got two checkpoint policies: checkpoint= and options.checkpoint differ")
        options = replace(options, checkpoint=checkpoint)
    executor.check_device(device)  # before anything is written
    if plan.to_run:  # connect (and check the cluster) before claiming runs
        executor.start()
    owner = Owner.current()
    started = time.perf_counter()
    claim = store.claim(
        [r.config for r in plan.to_run],
        owner,
        experiment=experiment,
        tag=[r.config for r in plan.cached],
        force=plan.force,
    )
    # Another live process computes the held runs; those neither claimed nor held were finished by
    # another process since the plan was made. Either way, not here.
    elsewhere = {r.run_id for r in plan.to_run} - set(claim.claimed)
    done_elsewhere = tuple(sorted(elsewhere - set(claim.held)))
    plan = _without(plan, elsewhere)
    tracker = _Tracker(plan, started)
    groups = _group_tasks(plan, store.recorded_jobs(claim.claimed) if plan.runs else {})
    unfinished = [plan.runs[i].run_id for group in plan.groups for i in group]

    def report(event: str, group: int, **extra) -> None:
        if progress is not None:
            progress(tracker.snapshot(event, group, **extra))

    def on_train(p: GroupProgress) -> None:
        if tracker.train(p.group, p.train):
            running = tracker.running[p.group]
            report("train", p.group, train=p.train, where=running.where, attempt=running.attempt)

    heartbeat = Heartbeat(store, owner)
    try:
        source = DataSource(data_dir, download)
        events = executor.run(groups, source, options, device, progress=on_train) if groups else _no_events()
        with contextlib.closing(events):  # closing it early (an exception here) cancels what is not done
            for event in events:
                ids = tracker.run_ids(event.group)
                if isinstance(event, GroupSubmitted):
                    store.record_job(ids, owner, event.job)
                    continue
                if isinstance(event, GroupStarted):
                    store.mark_running(ids, owner)
                    tracker.start(event)
                    report("group_start", event.group, where=event.where, attempt=event.attempt, note=event.note)
                    continue
                if not event.ok:
                    where = f"on {event.where}: " if event.where else ""
                    store.mark_failed(ids, owner, f"{where}{event.detail or event.error}")
                    raise GroupFailed(event, tracker.labels[event.group], len(groups))
                store.save_results(event.results, owner)
                if options.checkpoint is not None:
                    discard_checkpoint(options.checkpoint.directory, checkpoint_key(ids))
                tracker.done(event.group)
                done = set(ids)
                unfinished = [rid for rid in unfinished if rid not in done]
                report("group_done", event.group, where=event.where)
                if on_group_done is not None:
                    on_group_done(list(event.results))
    except BaseException:
        _record_stop(store, owner, unfinished)
        raise
    finally:
        heartbeat.stop()
    return SweepOutcome(
        tuple(tracker.computed),
        tuple(r.run_id for r in plan.cached) + done_elsewhere,
        time.perf_counter() - started,
        claim.held,
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
    """Resolve, group and train runs; results in the order of ``configs``.

    ``on_group_done`` receives each group's results as soon as the group finishes, so a caller can
    persist them before the next group starts (an interruption then loses only the running group).
    """
    resolved = [c.resolve() if isinstance(c, RunConfig) else c for c in configs]
    dev = resolve_device(device)
    results: list[RunResult | None] = [None] * len(resolved)
    loaded: dict[tuple, ContinualData] = {}
    for members in plan_groups(resolved, max_group_size):
        c0 = resolved[members[0]]
        data_key = (c0.benchmark, c0.synthetic, c0.class_order_seed)
        if data_key not in loaded:
            loaded[data_key] = load_benchmark(
                c0.benchmark,
                data_dir=data_dir,
                download=download,
                class_order_seed=c0.class_order_seed,
                synthetic=c0.synthetic,
                device=dev,
            )
        group_results = train_group(
            [resolved[i] for i in members], loaded[data_key], progress=progress, checkpoint=checkpoint
        )
        for i, res in zip(members, group_results):
            results[i] = res
        if on_group_done is not None:
            on_group_done(group_results)
    return [r for r in results if r is not None]
