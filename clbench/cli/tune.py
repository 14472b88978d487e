"""``clbench tune``: choose m (and, on request, lr or a method's options) with an Optuna study on a
validation split (``clbench.sweep.tune``), then print and write its report (``clbench.reports.tune``).
Parsing and printing only."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import typer
from rich.table import Table

from clbench.cli.common import (
    UsageProblem,
    check_data,
    check_whole_option,
    checkpoint_dir_option,
    checkpoint_every_option,
    checkpoint_policy,
    console,
    db_option,
    db_url,
    duration,
    inspect,
    num,
    sigterm_as_interrupt,
    strict_float,
    strict_int,
)
from clbench.cli.executor import (
    ExecutorChoice,
    SlurmChoice,
    build_executor,
    cpus_per_group_option,
    executor_option,
    gpus_per_group_option,
    ray_address_option,
    retries_option,
    slurm_account_option,
    slurm_folder_option,
    slurm_partition_option,
    slurm_qos_option,
    slurm_sbatch_option,
    slurm_time_option,
    start_executor,
    threads_option,
)
from clbench.cli.progress import execute_with_progress
from clbench.data.specs import BENCHMARKS, SyntheticOptions
from clbench.files import OutputError, check_output_folder
from clbench.methods import METHODS
from clbench.runs.mask import MASK_ON_CHOICES, parse_mask_value
from clbench.store.connection import StoreError
from clbench.sweep.plan import MAX_SWEEP_RUNS
from clbench.sweep.ram import budget_bytes
from clbench.sweep.tune import (
    DEFAULT_TRIALS,
    OBJECTIVES,
    TrialRecord,
    TuneProblem,
    TuneSpec,
    check_name,
    check_study,
    check_trials,
    tune,
    tune_spec,
)


def tune_command(
    method: str = typer.Option(..., "--method", "-m", metavar="METHOD", help=f"Method: {', '.join(METHODS)}."),
    dataset: str = typer.Option(
        "seq-fmnist", "--dataset", "-d", metavar="BENCHMARK", help=f"Benchmark: {', '.join(BENCHMARKS)}."
    ),
    buffer: int = typer.Option(
        200, "--buffer", "-b", parser=strict_int("--buffer"), metavar="SIZE", help="Replay buffer size."
    ),
    seeds: int = typer.Option(
        10, "--seeds", parser=strict_int("--seeds"), metavar="N", help="Each trial runs seeds 0..N-1."
    ),
    trials: int | None = typer.Option(
        None,
        "--trials",
        parser=strict_int("--trials"),
        metavar="T",
        help="Complete trials the study ends with. [default: 20; a grid's every point]",
    ),
    param: list[str] = typer.Option(
        [],
        "--param",
        "-p",
        metavar="NAME=LOW:HIGH",
        help="A tuned parameter and its range: mask (default mask=-10:10), lr (log scale), alpha, beta or one of "
        "the method's options; NAME=V1,V2,... a grid (every parameter a grid: each point runs once). Repeatable.",
    ),
    objective: str = typer.Option(
        "validation",
        "--objective",
        metavar="SPLIT",
        help="Select on the validation split (validation) or on the test set (test: says so on every output).",
    ),
    validation: float | None = typer.Option(
        None,
        "--validation",
        parser=strict_float("--validation"),
        metavar="F",
        help="Fraction of each task's training data held out for validation. [default: 0.1; 0 with --objective test]",
    ),
    study: str | None = typer.Option(
        None, "--study", metavar="NAME", help="The study's name. [default: from the method, benchmark and settings]"
    ),
    mask: str | None = typer.Option(
        None, "--mask", metavar="MASK", help="A fixed mask value (none, -inf or a number) when m is not tuned."
    ),
    mask_on: str = typer.Option(
        "stream", "--mask-on", metavar="WHERE", help=f"Where the mask applies: {', '.join(MASK_ON_CHOICES)}."
    ),
    epochs: int | None = typer.Option(None, "--epochs", parser=strict_int("--epochs"), metavar="N", help="Epochs."),
    sampler_seed: int = typer.Option(
        0, "--sampler-seed", parser=strict_int("--sampler-seed"), metavar="S", help="Seed of the TPE sampler."
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", metavar="DIR", help="Report folder. [default: reports/tune-STUDY]"
    ),
    html: bool = typer.Option(False, "--html", help="Also write STUDY.html in the report folder."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="cpu or cuda."),
    data_dir: Path | None = typer.Option(None, "--data-dir", metavar="DIR", help="Folder holding the dataset."),
    download: bool = typer.Option(False, "--download", help="Download a missing dataset (needs torchvision)."),
    db: str | None = db_option(),
    checkpoint_every: str = checkpoint_every_option(),
    checkpoint_dir: Path | None = checkpoint_dir_option(),
    threads: int | None = threads_option(),
    executor: str = executor_option(),
    ray_address: str | None = ray_address_option(),
    gpus_per_group: float | None = gpus_per_group_option(),
    cpus_per_group: int | None = cpus_per_group_option(),
    retries: int | None = retries_option(),
    slurm_partition: str | None = slurm_partition_option(),
    slurm_time: str | None = slurm_time_option(),
    slurm_account: str | None = slurm_account_option(),
    slurm_qos: str | None = slurm_qos_option(),
    slurm_sbatch: list[str] = slurm_sbatch_option(),
    slurm_folder: Path | None = slurm_folder_option(),
    synthetic_train_per_class: int | None = typer.Option(None, hidden=True),
    synthetic_test_per_class: int | None = typer.Option(None, hidden=True),
    synthetic_tasks: int | None = typer.Option(None, hidden=True),
) -> None:
    """Choose m for one method, benchmark and buffer: an Optuna study whose trials are seed groups,
    selected on a validation split; the study lives in the registry's database and resumes."""
    synthetic = {
        k: v
        for k, v in dict(
            train_per_class=synthetic_train_per_class, test_per_class=synthetic_test_per_class, n_tasks=synthetic_tasks
        ).items()
        if v is not None
    }
    overrides = {
        k: v
        for k, v in dict(epochs=epochs, synthetic=SyntheticOptions(**synthetic) if synthetic else None).items()
        if v is not None
    }
    if mask is not None:
        overrides["mask"] = _fixed_mask(mask, param)
    spec = _spec(method, dataset, buffer, seeds, trials, param, objective, validation, mask_on, sampler_seed, overrides)
    trials = trials if trials is not None else (spec.grid_size or DEFAULT_TRIALS)
    name = _checked(lambda: check_name(study or spec.default_name()))
    url = db_url(db)
    check_data({spec.benchmark}, data_dir, download)
    inspect(url)  # a database that is not clbench's (or unreachable): one line, nothing written
    _checked(lambda: check_study(url, name, spec))
    out = out_dir if out_dir is not None else Path("reports") / f"tune-{name}"
    try:
        check_output_folder(out)
    except OutputError as exc:
        raise UsageProblem(f"invalid --out: {exc}") from None
    policy = checkpoint_policy(url, checkpoint_every, checkpoint_dir)
    slurm = SlurmChoice(slurm_partition, slurm_time, slurm_account, slurm_qos, tuple(slurm_sbatch), slurm_folder)
    choice = ExecutorChoice(executor, ray_address, gpus_per_group, cpus_per_group, retries, slurm.over(None))
    runner = build_executor(choice, device, threads)
    budget = budget_bytes(device) if runner.name == "local" else None
    _run(spec, name, trials, url, out, html, runner, budget, policy, device, data_dir, download)


def _fixed_mask(text: str, param: list[str]) -> float | None:
    if any(p.partition("=")[0].strip() == "mask" for p in param) or not param:
        raise UsageProblem(
            "--mask fixes m while other parameters are tuned: give it with --param NAME=LOW:HIGH, not mask"
        )
    try:
        return parse_mask_value(text)
    except ValueError as exc:
        raise UsageProblem(f"invalid --mask: {exc}") from None


def _checked(work):
    try:
        return work()
    except TuneProblem as exc:
        raise UsageProblem(str(exc)) from None
    except StoreError as exc:
        raise UsageProblem(str(exc)) from None


def _spec(method, dataset, buffer, seeds, trials, param, objective, validation, mask_on, sampler_seed, overrides):
    """Every value checked before anything is opened; bad input is one line naming the valid choices."""
    if importlib.util.find_spec("optuna") is None:
        raise UsageProblem("clbench tune needs Optuna, which is not installed: pip install 'clbench[tune]'")
    if objective not in OBJECTIVES:
        raise UsageProblem(f"invalid --objective {objective!r}: valid are {', '.join(OBJECTIVES)}")
    if mask_on not in MASK_ON_CHOICES:
        raise UsageProblem(f"invalid --mask-on {mask_on!r}: valid are {', '.join(MASK_ON_CHOICES)}")
    check_whole_option("--seeds", seeds, 1, MAX_SWEEP_RUNS)
    if trials is not None:
        check_whole_option("--trials", trials, 1)
    check_whole_option("--buffer", buffer, 0)
    check_whole_option("--sampler-seed", sampler_seed, 0)
    params = parse_params(param)
    spec = _checked(
        lambda: tune_spec(
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
    )
    if trials is not None:
        _checked(lambda: check_trials(spec, trials, "--trials"))
    return spec


def parse_params(values: list[str]) -> dict[str, tuple[float, float] | list[float]] | None:
    """``--param NAME=LOW:HIGH`` options as ``{name: (low, high)}``, ``NAME=V1,V2,...`` as ``{name: [v1,
    v2, ...]}`` (a grid; ``None``: none given)."""
    out: dict[str, tuple[float, float] | list[float]] = {}
    for text in values:
        name, eq, bounds = text.partition("=")
        if eq and "," in bounds and name.strip():
            if name.strip() in out:
                raise UsageProblem(f"--param {name.strip()} is given twice: give each parameter once")
            try:
                out[name.strip()] = [float(v) for v in bounds.split(",")]
            except ValueError:
                example = "e.g. rho=0.03,0.1,0.3"
                raise UsageProblem(f"invalid --param {text!r}: a grid's values must be numbers, {example}") from None
            continue
        low, colon, high = bounds.partition(":")
        if not eq or not colon or not name.strip():
            raise UsageProblem(f"invalid --param {text!r}: give NAME=LOW:HIGH, e.g. mask=-10:10 or lr=0.001:0.1")
        try:
            pair = (float(low), float(high))
        except ValueError:
            raise UsageProblem(f"invalid --param {text!r}: LOW and HIGH must be numbers, e.g. mask=-10:10") from None
        if not all(math.isfinite(v) for v in pair):
            raise UsageProblem(f"invalid --param {text!r}: LOW and HIGH must be finite numbers")
        if name.strip() in out:
            raise UsageProblem(f"--param {name.strip()} is given twice: give each parameter once")
        out[name.strip()] = pair
    return out or None


def _run(spec: TuneSpec, name, trials, url, out, html, runner, budget, policy, device, data_dir, download) -> None:
    import optuna  # noqa: PLC0415

    from clbench.reports.tune import best_summary, summary_lines, trials_table, write_tune_report  # noqa: PLC0415

    # This command prints each trial its own way (an interrupted one in one line, not Optuna's traceback).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    err = console(stderr=True)
    if spec.objective == "test":
        err.print("warning: --objective test selects on the test set: its test numbers are optimistic", style="red")
    start_executor(runner)
    with runner, sigterm_as_interrupt():
        result = _checked(
            lambda: tune(
                **_library_args(spec),
                trials=trials,
                study_name=name,
                db=url,
                executor=runner,
                device=device,
                data_dir=data_dir,
                download=download,
                checkpoint=policy,
                memory_budget=budget,
                execute_plan=lambda plan, store, **kw: execute_with_progress(plan, store, err, **kw),
                on_trial=lambda t: err.print(_trial_line(t, spec), highlight=False),
            )
        )
    best = best_summary(result, url)
    table = trials_table(result)
    written = write_tune_report(result, url, out, html=html)
    stdout = console()
    stdout.print(_trials_rich(table, spec))
    for line in summary_lines(result, best):
        stdout.print(line, highlight=False, style="red" if line.startswith("warning") else None)
    stdout.print(
        f"{result.trained_trials} trial(s) ran now in {duration(result.wall_s)}; report in {out}/: "
        + ", ".join(p.name for p in written),
        highlight=False,
    )


def _library_args(spec: TuneSpec) -> dict:
    return dict(
        method=spec.method,
        dataset=spec.benchmark,
        buffer=spec.buffer,
        seeds=spec.seeds,
        params={p.name: list(p.grid) if p.grid else (p.low, p.high) for p in spec.params},
        objective=spec.objective,
        validation=spec.validation,
        mask_on=spec.mask_on,
        sampler_seed=spec.sampler_seed,
        **spec.overrides,
    )


def _trial_line(t: TrialRecord, spec: TuneSpec) -> str:
    params = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in t.params.items())
    where = "TEST SET (selects on the test set)" if spec.objective == "test" else "validation"
    value = "no value" if t.value is None else f"{t.value:.2f}"
    return f"trial {t.number} ({t.state.lower()}): {params}: class-IL FAA on {where} {value}" + (
        f" ({t.note})" if t.note else ""
    )


def _trials_rich(table, spec: TuneSpec) -> Table:
    names = [p.name for p in spec.params]
    split = "TEST SET: selects on the test set" if spec.objective == "test" else "validation split"
    out = Table(
        title=f"Trials: class-IL FAA (%) on the {split}, mean and 95% t interval over seeds", title_justify="left"
    )
    for col in ("trial", "state", *names, "objective", "95% CI", "seeds", "note"):
        out.add_column(col, justify="left" if col in ("state", "note") else "right")
    for r in table.itertuples(index=False):
        d = r._asdict()
        ci = "-" if not math.isfinite(d["ci_low"]) else f"[{d['ci_low']:.2f}, {d['ci_high']:.2f}]"
        out.add_row(
            str(d["trial"]),
            d["state"],
            *[num(d[n], "{:.4g}") for n in names],
            num(d["objective"]),
            ci,
            str(d["n_seeds"]),
            d["note"] or "",
        )
    return out
