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
import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import memory
from .checkpoint import ENV_CHECKPOINTS, CheckpointPolicy, discard_checkpoint, group_key
from .config import MAX_SWEEP_RUNS, ResolvedConfig, RunConfig, check_field
from .data.benchmarks import BENCHMARKS, dataset_sizes, get_benchmark
from .executors import DataSource, Executor, GroupFailed, GroupProgress, GroupStarted, GroupTask, LocalExecutor, TrainOptions
from .masking import MaskSpec, parse_mask_value
from .results import RunResult
from .store import DONE_STATUSES, HEARTBEAT_INTERVAL_S, Owner, Store, sqlite_path
from .trainer import Progress, plan_groups

# ---------------------------------------------------------------------------------------------
# What a sweep is


def benchmark_name(name: str) -> str:
    """A benchmark by its name (``seq-fmnist``) or its dataset's (``fmnist``)."""
    if name in BENCHMARKS:
        return name
    by_dataset = {spec.dataset: spec.name for spec in BENCHMARKS.values()}
    if name in by_dataset:
        return by_dataset[name]
    get_benchmark(name)  # raises the one-line error naming the valid benchmarks
    raise AssertionError("unreachable")


def sweep_configs(
    *,
    methods: Sequence[str] = ("er",),
    masks: Sequence[str | float | None] = (None,),
    buffers: Sequence[int] = (200,),
    seeds: Sequence[int] = (0,),
    benchmark: str = "seq-fmnist",
    mask_on: str = "stream",
    **overrides: Any,
) -> list[RunConfig]:
    """The cartesian product methods x buffers x masks x seeds (seeds vary fastest).

    ``masks`` are mask values or their text (``"none"``, ``"-inf"``, ``"-5"``); ``overrides`` are
    further :class:`RunConfig` fields shared by all runs (``epochs``, ``lr``, ``synthetic``, ...).
    Raises ``ValueError`` with one line for invalid values.
    """
    if not methods:
        raise ValueError("no method given: valid methods are sgd, joint, er, der, derpp, er_ace, xder, icarl, agem, "
                         "gdumb, or PATH.py:CLASS")
    if not seeds:
        raise ValueError("no seeds given: pass --seeds N (seeds 0..N-1, N >= 1) or --seed S")
    if not buffers:
        raise ValueError("no buffer size given")
    n_runs = len(methods) * len(buffers) * max(len(masks), 1) * len(seeds)
    if n_runs > MAX_SWEEP_RUNS:  # checked before anything is built: planning stays cheap and bounded
        raise ValueError(f"the sweep asks for {n_runs} runs: one sweep plans at most {MAX_SWEEP_RUNS} runs "
                         "(split it into several)")
    for b in buffers:
        check_field("buffer_size", b)
    for s in (seeds if not isinstance(seeds, range) else (seeds.start, seeds[-1])):
        check_field("seed", s)
    mask_specs = [MaskSpec(parse_mask_value(m) if isinstance(m, str) else m, mask_on) for m in (masks or (None,))]
    bench = benchmark_name(benchmark)
    return [
        RunConfig(method=method, benchmark=bench, seed=int(seed), buffer_size=int(buffer), mask=mask, **overrides)
        for method, buffer, mask, seed in itertools.product(methods, buffers, mask_specs, seeds)
    ]


def resolve_unique(configs: Sequence[RunConfig | ResolvedConfig]) -> list[ResolvedConfig]:
    """Resolve every config (raising its ``ValueError``) and drop duplicate runs, keeping the first:
    e.g. ``sgd`` with two buffer sizes is one run, since it has no buffer."""
    unique: dict[str, ResolvedConfig] = {}
    for cfg in configs:
        resolved = cfg.resolve() if isinstance(cfg, RunConfig) else cfg
        unique.setdefault(resolved.identity(), resolved)
    return list(unique.values())


# ---------------------------------------------------------------------------------------------
# The cost model behind --dry-run's estimate

# Seconds per lockstep training step, per row (one sample through forward + backward) of one run,
# and per evaluated test row. Measured with an unloaded 2-core CPU (torch, float32): seq-fmnist er
# with 1 seed took 2.7 s and 10 seeds in one group 7.2 s; ResNet-18 (width 64, 32x32) rows are
# ~10^4 times costlier. Only an estimate: other load on the machine, a GPU, and the data loading
# all change it.
_STEP_S = 3.7e-4
_MLP_ROW_S = 4.2e-6  # the 784-100-100-10 MLP
_MLP_PARAMS = 784 * 100 + 100 * 100 + 100 * 10
_RESNET_ROW_S = 0.05  # width 64 at 32 x 32
_EVAL_ROW_FRACTION = 0.3  # a forward pass only
def _benchmark_sizes(cfg: ResolvedConfig):
    spec = cfg.synthetic.spec() if cfg.benchmark == "synthetic" else get_benchmark(cfg.benchmark)
    n_train, n_test = dataset_sizes(cfg.benchmark, cfg.synthetic)
    return spec, n_train, n_test


def _row_seconds(cfg: ResolvedConfig, spec) -> float:
    c, h, w = spec.input_shape
    if cfg.backbone == "mlp":
        return _MLP_ROW_S * (c * h * w * 100 + 100 * 100 + 100 * spec.n_classes) / _MLP_PARAMS
    return _RESNET_ROW_S * (h * w) / (32 * 32) * ((cfg.width or 64) / 64) ** 2


def estimate_group_seconds(configs: Sequence[ResolvedConfig]) -> float:
    """Estimated wall seconds to train and evaluate one lockstep group on this kind of CPU."""
    c0, n_runs = configs[0], len(configs)
    spec, n_train, n_test = _benchmark_sizes(c0)
    method = c0.method_instance()
    per_task = n_train / spec.n_tasks
    if method.exemplar_memory:  # iCaRL trains on the task's samples plus its exemplars
        per_task += c0.buffer_size * (spec.n_tasks - 1) / spec.n_tasks
    # joint retrains from scratch on tasks 0..t at task t: 1 + 2 + ... + T tasks' worth of data.
    task_multiples = spec.n_tasks * (spec.n_tasks + 1) / 2 if method.trains_on_seen_tasks else spec.n_tasks
    replaying_tasks = max(0, spec.n_tasks - method.replay_from_task) if method.replay_draws else 0
    steps = math.ceil(per_task / c0.batch_size) * c0.epochs
    rows_per_step = c0.batch_size
    row_s = _row_seconds(c0, spec)
    train = steps * task_multiples * (_STEP_S + n_runs * rows_per_step * row_s)
    train += steps * replaying_tasks * n_runs * method.replay_draws * c0.minibatch_size * row_s
    if method.refits:  # GDumb: every task end trains from scratch on the memory
        refit_steps = method.refit_epochs(c0.option_values) * math.ceil(c0.buffer_size / c0.batch_size) * spec.n_tasks
        train += refit_steps * (_STEP_S + n_runs * c0.batch_size * row_s)
    evaluate = spec.n_tasks * n_test * n_runs * row_s * _EVAL_ROW_FRACTION
    return train + evaluate


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class PlannedRun:
    config: ResolvedConfig
    stored_status: str  # its status in the store before this sweep: "new" if it has no row
    action: str  # "cached" (finished, reused) or "run"

    @property
    def run_id(self) -> str:
        return self.config.identity()


@dataclass(frozen=True)
class Plan:
    """A sweep against a store: every run with what will happen to it, and the lockstep groups
    (indices into ``runs``) in which the runs to compute will train."""

    runs: tuple[PlannedRun, ...]
    groups: tuple[tuple[int, ...], ...]
    force: bool = False
    memory_note: str = ""  # how the groups were sized to fit the memory budget, if one was given

    @property
    def to_run(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.action == "run"]

    @property
    def cached(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.action == "cached"]

    def group_configs(self, group: int) -> list[ResolvedConfig]:
        return [self.runs[i].config for i in self.groups[group]]

    def group_estimates_s(self) -> list[float]:
        return [estimate_group_seconds(self.group_configs(g)) for g in range(len(self.groups))]

    @property
    def estimate_s(self) -> float:
        """Estimated seconds to compute what is not cached (see ``estimate_group_seconds``)."""
        return float(sum(self.group_estimates_s()))

    def group_memory_bytes(self) -> list[int]:
        """Estimated peak memory of each group (``clbench.memory.group_bytes``)."""
        return [memory.group_bytes(self.group_configs(g)) for g in range(len(self.groups))]


def plan_sweep(
    configs: Sequence[RunConfig | ResolvedConfig],
    store: Store | None = None,
    *,
    force: bool = False,
    max_group_size: int | None = None,
    memory_budget: int | None = None,
) -> Plan:
    """Resolve ``configs`` (duplicates dropped), look each run up in ``store`` (``None``: an empty
    store) and group the runs to compute. Done runs (finished, or diverged: computing one again
    diverges again) are ``cached`` unless ``force``.

    ``memory_budget`` (bytes, e.g. ``clbench.memory.budget_bytes(device)``) splits every group that
    would not fit it (``clbench.memory``'s estimate) into groups that do, and says so in
    ``Plan.memory_note``; a run that does not fit alone is a ``ValueError``."""
    if max_group_size is not None and max_group_size < 1:
        raise ValueError(f"the group size must be >= 1, got {max_group_size}")
    resolved = resolve_unique(configs)
    stored = store.statuses([c.identity() for c in resolved]) if store is not None else {}
    runs = []
    for cfg in resolved:
        status = stored.get(cfg.identity(), "new")
        runs.append(PlannedRun(cfg, status, "cached" if status in DONE_STATUSES and not force else "run"))
    todo = [i for i, r in enumerate(runs) if r.action == "run"]
    todo_configs = [runs[i].config for i in todo]
    groups = plan_groups(todo_configs, max_group_size)
    note = ""
    if memory_budget is not None:
        groups, note = _fit_memory(todo_configs, groups, memory_budget)
    return Plan(tuple(runs), tuple(tuple(todo[j] for j in g) for g in groups), force, note)


def _fit_memory(configs: list[ResolvedConfig], groups: list[list[int]], budget: int) -> tuple[list[list[int]], str]:
    """``groups`` split so that each fits ``budget`` bytes, and a note saying what was done."""
    out, split = [], []
    for members in groups:
        cfgs = [configs[i] for i in members]
        cap = memory.max_group_size(cfgs, budget)
        if cap < 1:
            need = memory.SAFETY * (memory.run_bytes(cfgs) + memory.shared_bytes(cfgs))
            raise ValueError(f"one run of {describe_group(cfgs)} needs about {memory.human(need)} of memory (estimate) "
                             f"and this sweep may use {memory.human(budget)}: it cannot run here (a smaller buffer, "
                             "batch or width needs less)")
        if cap < len(members):
            split.append(f"{describe_group(cfgs)} into groups of at most {cap} "
                         f"(about {memory.human(memory.SAFETY * memory.run_bytes(cfgs))} per run)")
        out.extend(members[i : i + cap] for i in range(0, len(members), cap))
    if not split:
        return out, ""
    return out, f"groups sized to fit {memory.human(budget)} of memory: " + "; ".join(split)


def describe_group(configs: Sequence[ResolvedConfig]) -> str:
    """A short label of a lockstep group, e.g. ``er seq-fmnist buffer 200 mask -inf, 10 runs``."""
    c0 = configs[0]
    parts = [c0.method, c0.benchmark]
    buffers = sorted({c.buffer_size for c in configs})
    if c0.buffer_size > 0:
        parts.append("buffer " + ",".join(map(str, buffers)))
    masks = list(dict.fromkeys(c.mask.label for c in configs))
    parts.append("mask " + ",".join(masks))
    return f"{' '.join(parts)} ({len(configs)} run{'s' if len(configs) != 1 else ''})"


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

    event: str  # "group_start" (a process started training it; again on a retry), "train" (a trainer report), "group_done"
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
    claim = store.claim([r.config for r in plan.to_run], owner, experiment=experiment,
                        tag=[r.config for r in plan.cached], force=plan.force)
    # Another live process computes the held runs; those neither claimed nor held were finished by
    # another process since the plan was made. Either way, not here.
    elsewhere = {r.run_id for r in plan.to_run} - set(claim.claimed)
    done_elsewhere = tuple(sorted(elsewhere - set(claim.held)))
    plan = _without(plan, elsewhere)
    tracker = _Tracker(plan, started)
    groups = [GroupTask(g, tuple(plan.group_configs(g))) for g in range(len(plan.groups))]
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
                    discard_checkpoint(options.checkpoint.directory, group_key(ids))
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
    return SweepOutcome(tuple(tracker.computed), tuple(r.run_id for r in plan.cached) + done_elsewhere,
                        time.perf_counter() - started, claim.held)


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
        self.running[event.group] = RunningGroup(event.group, self.labels[event.group], event.where, event.attempt, None)
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
        return SweepProgress(event, group, self.n_groups, len(self.computed), self.n_runs, self.labels[group],
                             fraction, time.perf_counter() - self.started, groups_done=self.groups_done,
                             running=tuple(self.running[g] for g in sorted(self.running)), **extra)


class Heartbeat:
    """A thread that tells the store, every ``HEARTBEAT_INTERVAL_S``, that ``owner`` is alive, so
    processes on other hosts leave its runs alone (``Store.claim``) for as long as it lives, however
    long a group trains. Failures to write are ignored: a missed beat only risks a late one."""

    def __init__(self, store: Store, owner: Owner, interval_s: float = HEARTBEAT_INTERVAL_S):
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(store, owner, interval_s), daemon=True,
                                        name="clbench-heartbeat")
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


def checkpoint_directory(db_url, checkpoint_dir: str | os.PathLike | None = None,
                         env: Mapping[str, str] | None = None) -> Path:
    """Where a sweep against the registry ``db_url`` keeps its groups' checkpoints: ``checkpoint_dir``
    if given, else ``$CLBENCH_CHECKPOINTS``, else beside an SQLite registry (``results.db`` ->
    ``results.checkpoints/``), else (a database server) ``clbench.checkpoints/`` in the working
    directory. Every node of a cluster that may resume a group must see the same folder."""
    env = os.environ if env is None else env
    if checkpoint_dir is not None:
        return Path(checkpoint_dir).expanduser().absolute()
    if env.get(ENV_CHECKPOINTS):
        return Path(env[ENV_CHECKPOINTS]).expanduser().absolute()
    path = sqlite_path(db_url)
    if path is not None:
        return path.with_name(path.stem + ".checkpoints")
    return Path("clbench.checkpoints").absolute()


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
