"""Choosing m honestly: an Optuna study over the mask value (and, on request, the learning rate, DER's
weights or a method's own options) for one method, benchmark and buffer.

Each trial is a seed group (seeds 0..N-1, the same for every trial: trials are paired) run through
the normal sweep path (``plan_sweep`` + ``execute``), so its runs land in the registry under the
experiment label ``tune:STUDY``, are reused when asked for again and train on any executor. The
objective is the mean over seeds of class-IL FAA on the runs' validation split (``objective=
"validation"``, the default: each run holds out ``validation`` of every task's training data) or on
the test sets (``objective="test"``: selecting on the test set, which every output says).

The study lives in Optuna's RDB storage in the registry's own database (Optuna's tables, ``studies``,
``trials``, ... and ``alembic_version``, share no name with clbench's), so an interrupted study
resumes where it stopped (its finished trials are kept; an interrupted trial is tried again with the
same parameters, and its runs already in the registry are not trained again) and several processes
on one study share it. The study's settings are stored in its user attributes (``clbench``): a study
name that exists with other settings is refused before anything is written.

Suggestions are reproducible: trial k draws from Optuna's TPE sampler seeded with ``sampler_seed + k``
(whichever process runs it), given the trials finished before it. A study over a grid (each parameter
given as a list of values) runs every point once, in an order drawn from ``sampler_seed`` (Optuna's
grid sampler): the fair presets' small grids are such studies.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import inspect, text

from clbench.data.specs import benchmark_name
from clbench.methods import find_method
from clbench.runs.checks import check_label
from clbench.runs.config import RunConfig
from clbench.runs.mask import MaskSpec
from clbench.runs.resolved import ResolvedConfig
from clbench.store.connection import StoreError, describe_url, make_engine, resolve_db_url
from clbench.store.opening import inspect_db, open_store
from clbench.store.queries import load_runs
from clbench.store.store import Store
from clbench.sweep.driver import SweepOutcome, execute
from clbench.sweep.executors import DataSource
from clbench.sweep.plan import MAX_SWEEP_RUNS, plan_sweep

OBJECTIVES = ("validation", "test")
DEFAULT_PARAMS = {"mask": (-10.0, 10.0)}  # the paper's fig4 grid spans -10..10 around 0
DEFAULT_VALIDATION = 0.1
DEFAULT_TRIALS = 20  # a study over ranges; a grid study runs its every point
ATTRS_KEY = "clbench"  # the study's user attribute holding its settings
# RunConfig fields a study can tune -> (log scale, the lowest value a run takes, is it included).
CONFIG_PARAMS = {
    "mask": (False, None, True),
    "lr": (True, 0.0, False),
    "alpha": (False, 0.0, True),
    "beta": (False, 0.0, True),
}
POLL_S = 5.0  # how often a trial waits for runs another process computes


class TuneProblem(ValueError):
    """Bad input to a study (a range, a parameter, a study that exists with other settings): one line."""


@dataclass(frozen=True)
class TuneParam:
    """A tuned parameter: a RunConfig field (``mask``, ``lr``, ``alpha``, ``beta``) or a method option,
    in [low, high]; on a log scale (``lr``), as integers (an option whose default is an integer); or
    the points of a ``grid`` (low and high its ends)."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False
    grid: tuple[float, ...] = ()

    def suggest(self, trial) -> float | int:
        if self.grid:
            return trial.suggest_categorical(self.name, [int(v) if self.integer else v for v in self.grid])
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def to_json(self) -> list:
        kind = [self.low, self.high, "log" if self.log else "linear", "int" if self.integer else "float"]
        return kind + ([list(self.grid)] if self.grid else [])


@dataclass(frozen=True)
class TuneSpec:
    """What a study tunes, and over what; ``settings()`` is what its user attributes record."""

    method: str
    benchmark: str
    buffer: int
    seeds: int
    params: tuple[TuneParam, ...]
    objective: str = "validation"
    validation: float = DEFAULT_VALIDATION
    mask_on: str = "stream"
    sampler_seed: int = 0
    overrides: Mapping[str, Any] = field(default_factory=dict)  # more RunConfig fields (epochs, synthetic, ...)

    @property
    def split(self) -> str:
        return self.objective

    @property
    def grid_size(self) -> int:
        """The number of points of a grid study (0: a study over ranges)."""
        return math.prod(len(p.grid) for p in self.params) if self.params and self.params[0].grid else 0

    def settings(self) -> dict:
        over = {k: (_jsonable(v)) for k, v in sorted(self.overrides.items())}
        return {
            "method": self.method,
            "dataset": self.benchmark,
            "buffer": self.buffer,
            "seeds": self.seeds,
            "params": {p.name: p.to_json() for p in self.params},
            "objective": self.objective,
            "validation": self.validation,
            "mask_on": self.mask_on,
            "sampler_seed": self.sampler_seed,
            "overrides": over,
        }

    def configs(self, values: Mapping[str, Any]) -> list[RunConfig]:
        """The trial's runs: one per seed, with the tuned ``values``."""
        fields_ = dict(self.overrides)
        options = dict(fields_.pop("options", None) or {})
        mask = fields_.pop("mask", None)  # a fixed mask value (float or None) when m is not tuned
        for name, value in values.items():
            if name == "mask":
                mask = float(value)
            elif name in CONFIG_PARAMS:
                fields_[name] = float(value)
            else:
                options[name] = value
        return [
            RunConfig(
                method=self.method,
                benchmark=self.benchmark,
                seed=s,
                buffer_size=self.buffer,
                mask=MaskSpec(mask, self.mask_on),
                validation=self.validation,
                options=options or None,
                **fields_,
            )
            for s in range(self.seeds)
        ]

    def default_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.method}-{self.benchmark}-buffer{self.buffer}-{self.objective}-{digest}"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {k: _jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def tune_params(method: str, params: Mapping[str, tuple[float, float] | list[float]] | None) -> tuple[TuneParam, ...]:
    """The parameters of a study of ``method`` from ``{name: (low, high)}`` (default: the mask
    over -10..10), or ``{name: [v1, v2, ...]}`` for a grid (every parameter then a list); a one-line
    :class:`TuneProblem` for an unknown name, an empty range or a grid of fewer than two points."""
    options = dict(find_method(method).card.options)
    valid = ", ".join([*CONFIG_PARAMS, *options]) + (" (the last ones its own options)" if options else "")
    given = params or DEFAULT_PARAMS
    if len({isinstance(b, list) for b in given.values()}) > 1:
        raise TuneProblem("give every parameter as a range (LOW:HIGH) or every one as a grid (V1,V2,...), not both")
    out = []
    for name, bounds in given.items():
        if name not in CONFIG_PARAMS and name not in options:
            raise TuneProblem(f"unknown parameter {name!r} for {method}: valid are {valid}")
        grid = _grid(name, bounds) if isinstance(bounds, list) else ()
        low, high = (min(grid), max(grid)) if grid else (float(b) for b in bounds)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise TuneProblem(f"invalid range for {name}: {low:g}:{high:g}; give finite LOW < HIGH")
        if low >= high and not grid:
            raise TuneProblem(f"empty range for {name}: {low:g}:{high:g}; give LOW < HIGH")
        if name in CONFIG_PARAMS:
            log, floor, inclusive = CONFIG_PARAMS[name]
            if floor is not None and (low < floor or (low == floor and not inclusive)):
                bound = f">= {floor:g}" if inclusive else f"> {floor:g}"
                raise TuneProblem(f"invalid range for {name}: {low:g}:{high:g} is outside what a run takes ({bound})")
            out.append(TuneParam(name, low, high, log=log and not grid, grid=grid))
        else:
            integer = isinstance(options[name], int) and not isinstance(options[name], bool)
            if integer and (low != int(low) or high != int(high)):
                raise TuneProblem(
                    f"invalid range for {name}: {method}'s {name} is a whole number; give LOW:HIGH as such"
                )
            if integer and any(v != int(v) for v in grid):
                raise TuneProblem(f"invalid grid for {name}: {method}'s {name} is a whole number; give whole values")
            out.append(TuneParam(name, low, high, integer=integer, grid=grid))
    return tuple(out)


def _grid(name: str, values: list) -> tuple[float, ...]:
    """A grid's points: at least two, finite and distinct, in the order given."""
    try:
        grid = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TuneProblem(f"invalid grid for {name}: {values!r}; give numbers V1,V2,...") from None
    if len(grid) < 2 or len(set(grid)) < len(grid) or not all(math.isfinite(v) for v in grid):
        raise TuneProblem(f"invalid grid for {name}: {values!r}; give two or more distinct finite numbers")
    return grid


def tune_spec(
    *,
    method: str,
    dataset: str,
    buffer: int = 200,
    seeds: int = 10,
    params: Mapping[str, tuple[float, float] | list[float]] | None = None,
    objective: str = "validation",
    validation: float | None = None,
    mask_on: str = "stream",
    sampler_seed: int = 0,
    **overrides: Any,
) -> TuneSpec:
    """A study's spec, every value checked (a run at both ends of every range is resolved with the
    validator every run goes through); a one-line :class:`TuneProblem` otherwise. Nothing is written."""
    if objective not in OBJECTIVES:
        raise TuneProblem(f"invalid objective {objective!r}: valid are {', '.join(OBJECTIVES)}")
    if validation is None:
        validation = DEFAULT_VALIDATION if objective == "validation" else 0.0
    if objective == "validation" and not validation:
        raise TuneProblem("the validation objective needs a validation split: give a fraction F in (0, 0.5]")
    if not isinstance(seeds, int) or not 1 <= seeds <= MAX_SWEEP_RUNS:
        raise TuneProblem(f"invalid seeds {seeds!r}: give N >= 1 (seeds 0..N-1)")
    try:
        spec = TuneSpec(
            method,
            benchmark_name(dataset),
            int(buffer),
            seeds,
            tune_params(method, params),
            objective,
            float(validation),
            mask_on,
            int(sampler_seed),
            overrides,
        )
        for end in ("low", "high"):  # the ends of every range are runs the validator accepts
            values = {p.name: (int if p.integer else float)(getattr(p, end)) for p in spec.params}
            for cfg in spec.configs(values)[:1]:
                cfg.resolve()
    except TuneProblem:
        raise
    except ValueError as exc:
        raise TuneProblem(str(exc).splitlines()[0]) from None
    return spec


# ---------------------------------------------------------------------------------------------
# The study in the registry's database


def stored_settings(db, study_name: str) -> dict | None:
    """The settings of the study ``study_name`` in ``db`` (``{}`` for a study clbench did not make),
    ``None`` when there is none; reads only (a missing database stays missing)."""
    url = resolve_db_url(db)
    if inspect_db(url) in ("missing", "empty"):
        return None
    engine = make_engine(url, readonly=True)
    try:
        with engine.connect() as conn:
            if "studies" not in inspect(conn).get_table_names():
                return None
            sid = conn.execute(
                text("SELECT study_id FROM studies WHERE study_name = :n"), {"n": study_name}
            ).scalar_one_or_none()
            if sid is None:
                return None
            raw = conn.execute(
                text("SELECT value_json FROM study_user_attributes WHERE study_id = :i AND key = :k"),
                {"i": sid, "k": ATTRS_KEY},
            ).scalar_one_or_none()
            return json.loads(raw) if raw else {}
    finally:
        engine.dispose()


def check_study(db, study_name: str, spec: TuneSpec) -> bool:
    """Whether the study exists (with ``spec``'s settings); a :class:`TuneProblem` naming what differs
    when it exists with other settings."""
    stored = stored_settings(db, study_name)
    if stored is None:
        return False
    _same_settings(study_name, stored, spec.settings())
    return True


def _same_settings(study_name: str, stored: dict, wanted: dict) -> None:
    if not stored:
        raise TuneProblem(f"the study {study_name!r} exists and was not made by clbench tune: give another --study")
    wanted = json.loads(json.dumps(wanted))  # tuples as lists, as stored
    differ = [k for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]
    if differ:
        shown = "; ".join(f"{k} {json.dumps(stored.get(k))} there, {json.dumps(wanted.get(k))} here" for k in differ)
        raise TuneProblem(f"the study {study_name!r} exists with other settings ({shown}): give another --study")


def optuna_storage(url, heartbeat_s: float | None = 60.0):
    """Optuna's RDB storage in the registry's database (``url``: an SQLAlchemy URL). With
    ``heartbeat_s``, a trial whose process died (no heartbeat for three intervals) is failed and tried
    again with the same parameters by the next process that asks for a trial."""
    import warnings  # noqa: PLC0415

    import optuna  # noqa: PLC0415 - the `tune` extra

    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60.0}}
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    with warnings.catch_warnings():  # Optuna calls its heartbeats experimental; clbench relies on them, tested
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat_s:
            from optuna.storages import RetryHeartbeatStaleTrialCallback  # noqa: PLC0415

            kwargs.update(
                heartbeat_interval=int(heartbeat_s),
                grace_period=int(3 * heartbeat_s),
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
            )
        return _created(lambda: optuna.storages.RDBStorage(url.render_as_string(hide_password=False), **kwargs))


def _created(make, attempts: int = 8):
    """``make()`` tried again while it fails: two processes creating Optuna's tables at once race
    ("table alembic_version already exists"); the loser finds them made on its next attempt."""
    from sqlalchemy.exc import DBAPIError  # noqa: PLC0415

    for attempt in range(attempts):
        try:
            return make()
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def per_trial_sampler(seed: int):
    """A TPE sampler that draws trial k's suggestions from a TPE sampler seeded with ``seed + k``:
    the same suggestion for the same trial number and history, whichever process asks."""
    from optuna.samplers import BaseSampler, TPESampler  # noqa: PLC0415

    class PerTrialTPE(BaseSampler):
        def __init__(self):
            self._samplers: dict[int, TPESampler] = {}

        def _of(self, trial) -> TPESampler:
            if trial.number not in self._samplers:
                self._samplers[trial.number] = TPESampler(seed=seed + trial.number)
            return self._samplers[trial.number]

        def infer_relative_search_space(self, study, trial):
            return self._of(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._of(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._of(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial):
            self._of(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            self._of(trial).after_trial(study, trial, state, values)
            self._samplers.pop(trial.number, None)

    return PerTrialTPE()


# ---------------------------------------------------------------------------------------------
# Running a study


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the study holds it."""

    number: int
    state: str  # COMPLETE, FAIL, RUNNING, WAITING, PRUNED
    params: dict[str, Any]
    value: float | None  # the objective: the mean over seeds
    seed_values: tuple[float, ...]  # the objective's metric of each seed
    run_ids: tuple[str, ...]
    note: str = ""


@dataclass(frozen=True)
class TuneResult:
    study_name: str
    spec: TuneSpec
    trials: tuple[TrialRecord, ...]
    where: str  # the database, as shown to people
    wall_s: float = 0.0
    trained_trials: int = 0  # trials added to the study while this call ran (by it, or another process)

    @property
    def complete(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state == "COMPLETE" and t.value is not None]

    @property
    def best(self) -> TrialRecord | None:
        done = self.complete
        return max(done, key=lambda t: (t.value, -t.number)) if done else None


ExecutePlan = Callable[..., SweepOutcome]


def tune(
    *,
    method: str,
    dataset: str,
    buffer: int = 200,
    seeds: int = 10,
    trials: int = DEFAULT_TRIALS,
    params: Mapping[str, tuple[float, float] | list[float]] | None = None,
    objective: str = "validation",
    validation: float | None = None,
    study_name: str | None = None,
    db=None,
    executor=None,
    mask_on: str = "stream",
    sampler_seed: int = 0,
    device: str = "cpu",
    data_dir: str | None = None,
    download: bool = False,
    checkpoint=None,
    memory_budget: int | None = None,
    execute_plan: ExecutePlan | None = None,
    heartbeat_s: float | None = 60.0,
    on_trial: Callable[[TrialRecord], None] | None = None,
    **overrides: Any,
) -> TuneResult:
    """Run (or resume) the study until it holds ``trials`` complete trials; see the module's docstring.

    ``executor`` trains the groups (default: in this process); ``execute_plan`` replaces
    :func:`clbench.sweep.driver.execute` (same arguments: the CLI's live display); ``on_trial`` gets each
    trial this call ran as it ends. ``overrides`` are further RunConfig fields shared by every run
    (``epochs``, ``synthetic``, ``options``, ...; ``mask``: a fixed mask value when m is not tuned). Bad
    input is a one-line :class:`TuneProblem`, raised before anything is written."""
    spec = tune_spec(
        method=method,
        dataset=dataset,
        buffer=buffer,
        seeds=seeds,
        params=params,
        objective=objective,
        validation=validation,
        mask_on=mask_on,
        sampler_seed=sampler_seed,
        **overrides,
    )
    check_trials(spec, trials)
    name = check_name(study_name or spec.default_name())
    url = resolve_db_url(db)
    check_study(url, name, spec)
    # The runs are identified with the data found (its fingerprint when it is not the published files).
    run = dict(executor=executor, device=device, source=DataSource(data_dir, download), checkpoint=checkpoint)
    started = time.perf_counter()
    with open_store(url) as store:
        store.mark_stale_runs()
        study = _open_study(url, name, spec, heartbeat_s)
        objective = _objective_function(spec, name, store, run, execute_plan or execute, memory_budget, trials)
        ran = _optimize(study, trials, objective, on_trial)
        records = collect(study)
    return TuneResult(name, spec, records, describe_url(url), time.perf_counter() - started, ran)


def check_name(name: str) -> str:
    """A study name every database stores (it is also the runs' experiment label ``tune:NAME``)."""
    try:
        check_label(name, "study name")
        check_label(f"tune:{name}", "study name")
    except ValueError as exc:
        raise TuneProblem(str(exc)) from None
    return name


def _open_study(url, name: str, spec: TuneSpec, heartbeat_s: float | None):
    import optuna  # noqa: PLC0415

    study = optuna.create_study(
        study_name=name,
        storage=optuna_storage(url, heartbeat_s),
        sampler=_sampler(spec),
        direction="maximize",
        load_if_exists=True,
    )
    stored = study.user_attrs.get(ATTRS_KEY)
    if stored is None:  # a new study (two processes creating it at once write the same settings)
        study.set_user_attr(ATTRS_KEY, spec.settings())
        stored = study.user_attrs.get(ATTRS_KEY)
    _same_settings(name, stored, spec.settings())
    return study


def _sampler(spec: TuneSpec):
    """TPE, trial k seeded with ``sampler_seed + k``; Optuna's grid sampler for a grid study."""
    if not spec.grid_size:
        return per_trial_sampler(spec.sampler_seed)
    from optuna.samplers import GridSampler  # noqa: PLC0415

    return GridSampler({p.name: list(p.grid) for p in spec.params}, seed=spec.sampler_seed)


def check_trials(spec: TuneSpec, trials: object, label: str = "trials") -> None:
    """``trials`` is a whole number >= 1 and, for a grid, at most its number of points; ``label``
    names the value in the message (the CLI's ``--trials``)."""
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise TuneProblem(f"invalid {label} {trials!r}: give T >= 1 (the study's number of complete trials)")
    if spec.grid_size and trials > spec.grid_size:
        raise TuneProblem(f"invalid {label} {trials}: the grid has {spec.grid_size} points; give T <= {spec.grid_size}")


def _optimize(study, trials: int, objective, on_trial) -> int:
    """Ask for trials until the study holds ``trials`` complete ones; returns how many ran here."""
    from optuna.study import MaxTrialsCallback  # noqa: PLC0415
    from optuna.trial import TrialState  # noqa: PLC0415

    retried = _retry_interrupted(study)
    done = sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    if done >= trials:
        return 0
    # trials started before this call (not the retries just enqueued, which it runs: they count as run)
    before = {t.number for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING}
    # Stop once the complete trials and those other processes are running reach ``trials``: two
    # processes on one study end with ``trials`` complete trials, not one more each.
    callbacks = [MaxTrialsCallback(trials, states=(TrialState.COMPLETE, TrialState.RUNNING))]
    if on_trial is not None:
        callbacks.append(lambda _study, frozen: None if is_surplus(frozen) else on_trial(record_of(frozen)))
    study.optimize(objective, n_trials=trials - done + retried, callbacks=callbacks, gc_after_trial=False)
    after = study.get_trials(deepcopy=False)
    return sum(t.number not in before and t.state != TrialState.WAITING and not is_surplus(t) for t in after)


def _retry_interrupted(study) -> int:
    """Enqueue the parameters of each trial that an interruption stopped (and that no trial retries
    yet): its runs already in the registry are reused. Returns how many."""
    from optuna.trial import TrialState  # noqa: PLC0415

    all_trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in all_trials}
    n = 0
    for t in all_trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in retried:
            study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
            n += 1
    return n


def _objective_function(spec, name, store, run, execute_plan, memory_budget, trials: int):
    def objective(trial) -> float:
        try:
            values = {p.name: p.suggest(trial) for p in spec.params}  # first: a surplus trial keeps them
            if _surplus(trial, trials):
                return math.nan  # nothing computed; Optuna fails the trial
            data = run["source"].data_print(spec.benchmark)
            configs = [replace(c.resolve(), data=data) for c in spec.configs(values)]
            ids = [c.identity() for c in configs]
            trial.set_user_attr("run_ids", ids)
            compute(configs, store, f"tune:{name}", run, execute_plan, memory_budget)
            per_seed = seed_values(store, ids, spec.split)
        except BaseException:
            _mark_interrupted(trial)
            raise
        trial.set_user_attr("seed_values", per_seed)
        finite = [v for v in per_seed if math.isfinite(v)]
        if len(finite) < len(per_seed):
            trial.set_user_attr("note", f"{len(per_seed) - len(finite)} of {len(per_seed)} seeds have no result")
            return math.nan  # Optuna fails the trial: it is not a value to select
        return float(sum(finite) / len(finite))

    return objective


SURPLUS = "surplus"  # the user attribute of a trial that ``_surplus`` stopped before it computed anything


def is_surplus(trial) -> bool:
    """Whether ``trial`` (an Optuna trial, frozen or not) was marked by ``_surplus``: no result, not shown."""
    return bool(trial.user_attrs.get(SURPLUS))


def _surplus(trial, trials: int) -> bool:
    """Whether the trials numbered before ``trial`` that are complete or still running already reach
    ``trials``: then another process started this study's last trial in the moment between this process's
    check after its previous trial and its asking for this one (Optuna's ``MaxTrialsCallback`` checks
    apart from creating). Trial numbers are assigned once by the storage, so of two such trials only the
    later is surplus. It stops this process, computes nothing, and is failed, hidden from the study's
    records and its parameters tried by the next tune (a grid loses no point)."""
    from optuna.trial import TrialState  # noqa: PLC0415

    alive = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    if sum(t.number < trial.number for t in alive) < trials:
        return False
    trial.set_user_attr(SURPLUS, True)
    trial.set_user_attr("interrupted", True)
    trial.set_user_attr("note", "not run: the study had its trials (another process); tried by the next tune")
    trial.study.stop()
    return True


def _mark_interrupted(trial) -> None:
    try:
        trial.set_user_attr("interrupted", True)
        trial.set_user_attr("note", "interrupted: tried again with these parameters by the next tune")
    except Exception:  # noqa: BLE001 - the database may be what failed; never hide the first error
        pass


def compute(
    configs: Sequence[RunConfig | ResolvedConfig], store: Store, experiment: str, run: dict, execute_plan, memory_budget
):
    """Train what is missing of ``configs`` through the sweep path; runs another live process holds
    are waited for (two studies sharing one registry compute each run once)."""
    while True:
        plan = plan_sweep(configs, store, memory_budget=memory_budget)
        # With nothing to compute, this still labels the cached runs (a run may serve several studies).
        outcome = execute_plan(plan, store, experiment=experiment, **run)
        if not outcome.held:
            return
        time.sleep(POLL_S)


def seed_values(store: Store, run_ids: Sequence[str], split: str) -> list[float]:
    """Class-IL FAA of each run on ``split``, in the order of ``run_ids`` (NaN without a result)."""
    df = load_runs(store, run_id=list(run_ids), split=split)
    df = df[df["status"] == "finished"]
    by_id = dict(zip(df["run_id"], df["faa_class_il"]))
    return [float(by_id.get(rid, math.nan)) for rid in run_ids]


def collect(study) -> tuple[TrialRecord, ...]:
    """The study's trials as records, by number (surplus ones, never run, left out: see ``_surplus``)."""
    trials = [t for t in study.get_trials(deepcopy=False) if not is_surplus(t)]
    return tuple(record_of(t) for t in sorted(trials, key=lambda t: t.number))


def record_of(t) -> TrialRecord:
    """An Optuna ``FrozenTrial`` as a :class:`TrialRecord`."""
    return TrialRecord(
        t.number,
        t.state.name,
        dict(t.params),
        float(t.value) if t.value is not None else None,
        tuple(float(v) for v in t.user_attrs.get("seed_values", ())),
        tuple(t.user_attrs.get("run_ids", ())),
        t.user_attrs.get("note", ""),
    )


def load_study(db, study_name: str) -> TuneResult:
    """A study as it is in ``db`` (to report on it without running a trial)."""
    settings = stored_settings(db, study_name)
    if settings is None:
        raise TuneProblem(f"no study {study_name!r} in {describe_url(resolve_db_url(db))}")
    if not settings:
        raise TuneProblem(f"the study {study_name!r} was not made by clbench tune")
    import optuna  # noqa: PLC0415

    url = resolve_db_url(db)
    study = optuna.load_study(study_name=study_name, storage=optuna_storage(url, None))
    spec = _spec_of(settings)
    return TuneResult(study_name, spec, collect(study), describe_url(url))


def _spec_of(settings: dict) -> TuneSpec:
    params = tuple(
        TuneParam(n, float(v[0]), float(v[1]), v[2] == "log", v[3] == "int", tuple(v[4]) if len(v) > 4 else ())
        for n, v in settings["params"].items()
    )
    return TuneSpec(
        settings["method"],
        settings["dataset"],
        int(settings["buffer"]),
        int(settings["seeds"]),
        params,
        settings["objective"],
        float(settings["validation"]),
        settings["mask_on"],
        int(settings["sampler_seed"]),
        settings.get("overrides", {}),
    )


__all__ = [
    "DEFAULT_PARAMS",
    "DEFAULT_TRIALS",
    "OBJECTIVES",
    "StoreError",
    "TrialRecord",
    "TuneParam",
    "TuneProblem",
    "TuneResult",
    "TuneSpec",
    "check_study",
    "load_study",
    "stored_settings",
    "tune",
    "tune_params",
    "tune_spec",
]
