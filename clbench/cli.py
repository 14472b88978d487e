"""The ``clbench`` command line: a thin layer over ``clbench.sweep``, ``clbench.store`` and
``clbench.registry``.

Every command validates all of its input before it opens (let alone creates) the database, and
reports bad input as one line, ``error: ...``, on stderr with exit status 2.
"""

from __future__ import annotations

import math
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import timezone
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

try:  # recent typers vendor click; older ones use click itself
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException as _ClickException

from .config import METHODS
from .data.benchmarks import BENCHMARKS, SyntheticOptions, get_benchmark
from .data.sources import DataNotFoundError, locate
from .masking import MASK_ON_CHOICES
from .registry import EXPORT_FORMATS, export_runs, load_runs, summarize_runs
from .store import STATUSES, Store, StoreError, describe_url, inspect_db, open_store, resolve_db_url
from .sweep import Plan, SweepProgress, describe_group, execute, plan_sweep, sweep_configs
from .trainer import resolve_device, usable_cpu_cores

app = typer.Typer(
    name="clbench",
    help="Benchmark the general masked softmax (arXiv 2309.14808) in replay-based continual learning.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class UsageProblem(Exception):
    """Bad input: reported as one ``error:`` line with exit status 2."""


DB_HELP = "Database: a file path or a SQLAlchemy URL (e.g. postgresql+psycopg://user@host/db)."


def _db_option():
    return typer.Option(None, "--db", envvar="CLBENCH_DB", metavar="DB", show_envvar=True, help=DB_HELP + " [default: results.db]")


def _split(values: Sequence[str] | None) -> list[str]:
    """Repeatable options that also take comma lists: --mask none,-inf --mask -5."""
    return [part.strip() for value in values or () for part in str(value).split(",") if part.strip()]


def _ints(values: Sequence[str] | None, what: str) -> list[int]:
    out = []
    for text in _split(values):
        try:
            out.append(int(text))
        except ValueError:
            raise UsageProblem(f"invalid {what} {text!r}: give a whole number") from None
    return out


def _console(stderr: bool = False) -> Console:
    # Off a terminal (pipes, logs) rich would wrap tables at 80 columns; give them room instead.
    probe = Console(stderr=stderr)
    return Console(stderr=stderr, width=None if probe.is_terminal else max(probe.width, 160))


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (e.g. from a scheduler) stops a sweep like Ctrl-C does: finished runs stay saved and
    unfinished ones are marked interrupted."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------
# clbench run


@app.command()
def run(
    method: list[str] = typer.Option(["er"], "--method", "-m", metavar="METHOD", help=f"Method: {', '.join(METHODS)}. Repeatable."),
    mask: list[str] = typer.Option(
        ["none"], "--mask", metavar="MASK", help="Mask value: none, -inf or a number. Repeatable, or a comma list."),
    mask_on: str = typer.Option("stream", "--mask-on", metavar="WHERE", help=f"Where the mask applies: {', '.join(MASK_ON_CHOICES)}."),
    seeds: Optional[int] = typer.Option(None, "--seeds", metavar="N", help="Run seeds 0..N-1. [default: 1]"),
    seed: list[str] = typer.Option([], "--seed", metavar="SEED", help="An explicit seed. Repeatable (adds to --seeds)."),
    dataset: str = typer.Option("seq-fmnist", "--dataset", "-d", metavar="BENCHMARK", help=f"Benchmark: {', '.join(BENCHMARKS)}."),
    buffer: list[str] = typer.Option(["200"], "--buffer", "-b", metavar="SIZE", help="Replay buffer size. Repeatable."),
    epochs: Optional[int] = typer.Option(None, "--epochs", metavar="N", help="Epochs per task. [default: the benchmark's]"),
    lr: Optional[float] = typer.Option(None, "--lr", metavar="LR", help="Learning rate. [default: the preset's]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", metavar="N", help="Stream batch size."),
    minibatch_size: Optional[int] = typer.Option(None, "--minibatch-size", metavar="N", help="Replay minibatch size."),
    alpha: Optional[float] = typer.Option(None, "--alpha", metavar="X", help="DER/DER++ logit-matching weight."),
    beta: Optional[float] = typer.Option(None, "--beta", metavar="X", help="DER++ replay cross-entropy weight."),
    device: str = typer.Option("cpu", "--device", metavar="DEVICE", help="cpu or cuda."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", metavar="DIR", help="Folder holding the dataset."),
    download: bool = typer.Option(False, "--download", help="Download a missing dataset (needs torchvision)."),
    db: Optional[str] = _db_option(),
    experiment: Optional[str] = typer.Option(None, "--experiment", "-e", metavar="NAME", help="A label grouping these runs."),
    force: bool = typer.Option(False, "--force", help="Recompute finished runs (their results are replaced)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and an estimate of the time; run nothing."),
    group_size: Optional[int] = typer.Option(None, "--group-size", metavar="N", help="At most this many runs per lockstep group."),
    threads: Optional[int] = typer.Option(
        None, "--threads", metavar="N", help="CPU threads for torch. [default: torch's choice] Use 1 when other busy processes "
                                "share the cores: torch's spinning threads then slow every process down."),
    synthetic_train_per_class: Optional[int] = typer.Option(None, hidden=True),
    synthetic_test_per_class: Optional[int] = typer.Option(None, hidden=True),
) -> None:
    """Train the sweep methods x buffers x masks x seeds; finished runs are reused (cached)."""
    # 1. Everything about the sweep itself.
    if mask_on not in MASK_ON_CHOICES:
        raise UsageProblem(f"invalid --mask-on {mask_on!r}: valid are {', '.join(MASK_ON_CHOICES)}")
    seed_list = sorted(set((list(range(seeds)) if seeds is not None else []) + _ints(seed, "seed")))
    if seeds is not None and seeds < 1:
        raise UsageProblem(f"invalid --seeds {seeds}: give N >= 1 to run seeds 0..N-1")
    if not seed_list:
        seed_list = [0]
    if any(s < 0 for s in seed_list):
        raise UsageProblem(f"invalid seed {min(seed_list)}: seeds are >= 0")
    for name, value in (("--lr", lr), ("--alpha", alpha), ("--beta", beta)):
        if value is not None and not math.isfinite(value):
            raise UsageProblem(f"invalid {name} {value}: give a finite number")
    if group_size is not None and group_size < 1:
        raise UsageProblem(f"invalid --group-size {group_size}: give N >= 1")
    if threads is not None and threads < 1:
        raise UsageProblem(f"invalid --threads {threads}: give N >= 1")
    overrides = {k: v for k, v in dict(epochs=epochs, lr=lr, batch_size=batch_size, minibatch_size=minibatch_size,
                                        alpha=alpha, beta=beta).items() if v is not None}
    synthetic = {k: v for k, v in dict(train_per_class=synthetic_train_per_class,
                                        test_per_class=synthetic_test_per_class).items() if v is not None}
    if synthetic:
        overrides["synthetic"] = SyntheticOptions(**synthetic)
    try:
        configs = sweep_configs(
            methods=_split(method), masks=_split(mask), buffers=_ints(buffer, "buffer size"), seeds=seed_list,
            benchmark=dataset, mask_on=mask_on, **overrides,
        )
        plan = plan_sweep(configs, None, force=force, max_group_size=group_size)  # resolves every run
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    try:
        resolve_device(device)
    except ValueError as exc:
        raise UsageProblem(str(exc)) from None
    except RuntimeError:  # torch's own error for a string that names no device type at all
        raise UsageProblem(f"unsupported device {device!r}: valid devices are cpu, cuda") from None
    # 2. The data, then the database, both without writing anything.
    _check_data({r.config.benchmark for r in plan.runs}, data_dir, download)
    url = resolve_db_url(db)
    state = _inspect(url)
    err = _console(stderr=True)
    if dry_run:
        store = open_store(url, readonly=True) if state == "ready" else None
        try:
            plan = plan_sweep(configs, store, force=force, max_group_size=group_size)
        finally:
            if store is not None:
                store.close()
        _print_plan(_console(), plan, url, device)
        return
    # 3. Run.
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        store = open_store(url)
    except StoreError as exc:
        raise UsageProblem(str(exc)) from None
    with store:
        stale = store.mark_stale_runs()
        if stale:
            err.print(f"marked {len(stale)} run(s) of ended processes as interrupted")
        plan = plan_sweep(configs, store, force=force, max_group_size=group_size)
        n_run, n_cached = len(plan.to_run), len(plan.cached)
        err.print(
            f"{len(plan.runs)} run{'s' if len(plan.runs) != 1 else ''}: {n_run} to compute in {len(plan.groups)} "
            f"group{'s' if len(plan.groups) != 1 else ''} (estimated {_duration(plan.estimate_s)}), {n_cached} cached"
            f"; saving to {store.where}",
            highlight=False,
        )
        if n_run and threads is None and device == "cpu":
            _warn_if_cores_busy(err)
        with _sigterm_as_interrupt():
            outcome = _execute_with_progress(plan, store, err, device=device, data_dir=data_dir, download=download,
                                             experiment=experiment)
        ids = [r.run_id for r in plan.runs]
        runs = load_runs(store, run_id=ids)
        # In the order the sweep was asked for (methods, buffers, masks as given), not the store's.
        present = set(runs["run_id"])
        runs = runs.set_index("run_id").loc[[i for i in ids if i in present]].reset_index()
        summary = summarize_runs(runs)
    out = _console()
    out.print(_summary_table(summary))
    out.print(
        f"{len(ids)} runs: {len(outcome.computed)} computed in {_duration(outcome.wall_s)}, {len(outcome.cached)} cached. "
        f"Stored in {store.where}; see [bold]clbench runs[/] and [bold]clbench show RUN_ID[/].",
        highlight=False,
    )


def _warn_if_cores_busy(err: Console) -> None:
    # torch's waiting threads spin; with other busy processes on the same few cores both slow down
    # 3-30x (benchmarks/README.md, "Threads"). The 1-minute load average is a cheap, lagging sign.
    cores = usable_cpu_cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load >= cores:
        err.print(
            f"note: the CPU is busy (load {load:.1f} on {cores} cores); if this is slow, "
            "use --threads 1 or OMP_WAIT_POLICY=PASSIVE",
            highlight=False,
        )


def _check_data(benchmarks: set[str], data_dir: Path | None, download: bool) -> None:
    for name in sorted(benchmarks):
        spec = get_benchmark(name)
        if spec.dataset == "synthetic":
            continue
        try:
            locate(spec.dataset, data_dir, download=download)
        except DataNotFoundError as exc:
            raise UsageProblem(str(exc)) from None


def _inspect(url) -> str:
    try:
        return inspect_db(url)
    except StoreError as exc:
        raise UsageProblem(str(exc)) from None


def _execute_with_progress(plan: Plan, store: Store, err: Console, **kwargs):
    """``execute`` under a live display: the sweep's bar (groups, runs, elapsed, ETA) and a line for
    the running group (task, epoch, step). Interruptions and failures become one line each."""
    if not plan.groups:
        return execute(plan, store, **kwargs)
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
        TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=err,
    )
    sweep_task = bar.add_task("sweep", total=1000)
    detail = Text("", style="dim")

    def on_progress(p: SweepProgress) -> None:
        bar.update(sweep_task, completed=1000 * p.fraction,
                   description=f"group {p.group + 1}/{p.n_groups}, runs {p.runs_done}/{p.n_runs}")
        if p.event == "train" and p.train is not None:
            t = p.train
            detail.plain = (f"  {p.label}: task {t.task + 1}/{t.n_tasks}, epoch {t.epoch + 1}/{t.n_epochs}, "
                            f"step {t.step}/{t.n_steps}")
        elif p.event == "group_start":
            detail.plain = f"  {p.label}: starting"
        elif p.event == "group_done":
            err.print(f"done: group {p.group + 1}/{p.n_groups}, {p.label}, saved", highlight=False)

    try:
        with Live(Group(bar, detail), console=err, refresh_per_second=8):
            outcome = execute(plan, store, progress=on_progress, **kwargs)
        if not err.is_terminal:
            err.line()  # off a terminal, Live's last frame ends without a newline
        return outcome
    except KeyboardInterrupt:
        statuses = store.statuses([r.run_id for r in plan.to_run])
        done = sum(status == "finished" for status in statuses.values())
        err.print(f"interrupted: {done} of {len(plan.to_run)} runs finished and saved; the rest are marked "
                  "interrupted. Run the same command again to compute only what is missing.")
        raise typer.Exit(130) from None
    except SQLAlchemyError as exc:
        print(f"error: the database {store.where} failed: {_first_line(exc)}", file=sys.stderr)
        raise typer.Exit(1) from None
    except Exception as exc:
        failed = [rid for rid, status in store.statuses([r.run_id for r in plan.to_run]).items() if status == "failed"]
        where = f"clbench show {failed[0]}" if failed else "clbench runs --status failed"
        print(f"error: a training group failed ({type(exc).__name__}: {_first_line(exc)}); its runs are marked "
              f"failed with the traceback (see {where})", file=sys.stderr)
        raise typer.Exit(1) from None


def _first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def _pm(mean: float, std: float) -> str:
    if mean != mean:  # NaN
        return "-"
    return f"{mean:.2f}" if std != std else f"{mean:.2f} ± {std:.2f}"


def _summary_table(summary) -> Table:
    table = Table(title="Final average accuracy (FAA) and forgetting (Chaudhry et al. 2018: max over earlier "
                        "rows minus the last), mean ± std over seeds (%)", title_justify="left")
    varying = [k for k in ("epochs", "lr", "batch_size", "minibatch_size", "alpha", "beta")
               if summary[k].nunique(dropna=False) > 1]
    for name in ["method", "dataset", "buffer", "mask", "on", *varying, "seeds"]:
        table.add_column(name, justify="right" if name in ("buffer", "seeds", *varying) else "left")
    for name in ("FAA class-IL", "FAA task-IL", "forgetting class-IL", "forgetting task-IL"):
        table.add_column(name, justify="right")
    for _, row in summary.iterrows():
        table.add_row(
            row["method"], row["dataset"], str(row["buffer_size"]), row["mask"], row["mask_on"],
            *[str(row[k]) for k in varying], str(row["n_seeds"]),
            _pm(row["faa_class_il_mean"], row["faa_class_il_std"]), _pm(row["faa_task_il_mean"], row["faa_task_il_std"]),
            _pm(row["forgetting_class_il_mean"], row["forgetting_class_il_std"]),
            _pm(row["forgetting_task_il_mean"], row["forgetting_task_il_std"]),
        )
    return table


def _print_plan(out: Console, plan: Plan, url, device: str) -> None:
    estimates = plan.group_estimates_s()
    table = Table(title=f"Plan: {len(plan.runs)} runs against {describe_url(url)}", title_justify="left")
    for name in ("group", "run id", "method", "dataset", "buffer", "mask", "on", "seed", "stored", "action"):
        table.add_column(name, justify="right" if name in ("group", "buffer", "seed") else "left")
    group_of = {i: g for g, members in enumerate(plan.groups) for i in members}
    for i, r in enumerate(plan.runs):
        c = r.config
        action = Text("cached", style="green") if r.action == "cached" else Text(
            "recompute" if r.stored_status == "finished" else "run", style="yellow")
        table.add_row(
            str(group_of[i] + 1) if i in group_of else "-", r.run_id, c.method, c.benchmark, str(c.buffer_size),
            c.mask.label, c.mask.on, str(c.seed), r.stored_status, action,
        )
    out.print(table)
    for g, members in enumerate(plan.groups):
        out.print(f"group {g + 1}: {describe_group(plan.group_configs(g))}, estimated {_duration(estimates[g])}",
                  highlight=False)
    where_to = "" if device == "cpu" else f" (the cost model is for CPU; on {device} expect less)"
    out.print(
        f"{len(plan.to_run)} to compute in {len(plan.groups)} lockstep group(s), {len(plan.cached)} already done "
        f"(cached). Estimated time: {_duration(plan.estimate_s)}, a rough estimate from a CPU cost model{where_to}.",
        highlight=False,
    )


# ---------------------------------------------------------------------------------------------
# clbench runs / show / export


def _filters(method, dataset, mask, buffer, status, experiment, seed=None, mask_on=None) -> dict:
    out = {}
    if method:
        out["method"] = _split(method)
    if dataset:
        out["dataset"] = _split(dataset)
    if mask:
        out["mask"] = _split(mask)
    if buffer:
        out["buffer"] = _ints(buffer, "buffer size")
    if status:
        out["status"] = _split(status)
    if experiment:
        out["experiment"] = list(experiment)
    if seed:
        out["seed"] = _ints(seed, "seed")
    if mask_on:
        out["mask_on"] = _split(mask_on)
    return out


def _load(db: str | None, **filters):
    try:
        return load_runs(db, **filters)
    except (StoreError, ValueError) as exc:
        raise UsageProblem(str(exc)) from None


_STATUS_STYLE = {"finished": "green", "running": "cyan", "pending": "blue", "failed": "red", "interrupted": "yellow"}


def _local_time(value) -> str:
    if value is None or pd.isna(value):
        return "-"
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if value.tzinfo is None:  # stored in UTC (SQLite keeps no zone)
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _num(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None or value != value else fmt.format(value)


FILTER_HELP = "Repeatable, or a comma list."


@app.command("runs")
def runs_command(
    method: list[str] = typer.Option([], "--method", "-m", metavar="METHOD", help=FILTER_HELP),
    dataset: list[str] = typer.Option([], "--dataset", "-d", metavar="BENCHMARK", help=FILTER_HELP),
    mask: list[str] = typer.Option([], "--mask", metavar="MASK", help=FILTER_HELP),
    mask_on: list[str] = typer.Option([], "--mask-on", metavar="WHERE", help=FILTER_HELP),
    buffer: list[str] = typer.Option([], "--buffer", "-b", metavar="SIZE", help=FILTER_HELP),
    seed: list[str] = typer.Option([], "--seed", metavar="SEED", help=FILTER_HELP),
    status: list[str] = typer.Option([], "--status", metavar="STATUS", help=f"{', '.join(STATUSES)}. {FILTER_HELP}"),
    experiment: list[str] = typer.Option([], "--experiment", "-e", metavar="NAME", help="Repeatable."),
    db: Optional[str] = _db_option(),
) -> None:
    """List runs, with filters."""
    df = _load(db, **_filters(method, dataset, mask, buffer, status, experiment, seed, mask_on))
    out = _console()
    if df.empty:
        out.print("no runs match")
        return
    table = Table(title=f"{len(df)} runs", title_justify="left")
    for name in ("run id", "experiment", "method", "dataset", "buffer", "mask", "on", "seed", "status",
                 "FAA class-IL", "FAA task-IL", "wall s", "finished at"):
        table.add_column(name, justify="right" if name in ("buffer", "seed", "FAA class-IL", "FAA task-IL", "wall s")
                         else "left")
    for row in df.itertuples():
        table.add_row(
            row.run_id, row.experiment or "-", row.method, row.dataset, str(row.buffer_size), row.mask, row.mask_on,
            str(row.seed), Text(row.status, style=_STATUS_STYLE.get(row.status, "")),
            _num(row.faa_class_il), _num(row.faa_task_il), _num(row.wall_s, "{:.1f}"), _local_time(row.finished_at),
        )
    out.print(table)


def _accuracy_color(value: float) -> str:
    """Red (0 %) through yellow (50 %) to green (100 %)."""
    v = min(max(value / 100.0, 0.0), 1.0)
    red, green = (255, int(510 * v)) if v < 0.5 else (int(510 * (1 - v)), 200)
    return f"rgb({red},{green},60)"


def _matrix_table(title: str, matrix) -> Table:
    n = matrix.shape[0]
    table = Table(title=title, title_justify="left")
    table.add_column("after task", justify="right")
    for j in range(n):
        table.add_column(f"task {j + 1}", justify="right")
    table.add_column("avg seen", justify="right")
    for i in range(n):
        cells = []
        for j in range(n):
            style = _accuracy_color(matrix[i, j]) + ("" if j <= i else " dim")
            cells.append(Text(f"{matrix[i, j]:.1f}", style=style))
        seen = matrix[i, : i + 1].mean()
        table.add_row(str(i + 1), *cells, Text(f"{seen:.1f}", style="bold " + _accuracy_color(seen)))
    return table


@app.command()
def show(
    run_id: str = typer.Argument(..., help="A run id, or a unique prefix of 4+ characters (see clbench runs)."),
    db: Optional[str] = _db_option(),
) -> None:
    """Print a run: its resolved config, both accuracy matrices and its metrics."""
    try:
        store = open_store(db, readonly=True)
    except StoreError as exc:
        raise UsageProblem(str(exc)) from None
    with store:
        try:
            rid = store.find_run_id(run_id)
        except KeyError as exc:
            raise UsageProblem(exc.args[0]) from None
        row = store.run_row(rid)
        result = store.load_result(rid) if row["status"] == "finished" else None
    out = _console()
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("run", rid)
    head.add_row("status", Text(row["status"], style=_STATUS_STYLE.get(row["status"], "")))
    head.add_row("experiment", ", ".join(row["experiments"]) or "-")
    head.add_row("config hash", row["config_hash"])
    head.add_row("created / finished", f"{_local_time(row['created_at'])} / {_local_time(row['finished_at'])}")
    head.add_row("host, pid", f"{row['host']}, {row['pid']}")
    if result is not None:
        head.add_row("device", result.device)
        head.add_row("time", f"{result.wall_s:.2f} s (its share of a lockstep group of {result.group_size})")
        head.add_row("versions", ", ".join(f"{k} {v}" for k, v in result.versions.items() if k != "platform"))
    out.print(head)
    config = Table(title="Resolved config", title_justify="left", show_header=False)
    config.add_column(style="bold")
    config.add_column()
    for key, value in row["config"].items():
        if key == "notes":
            continue
        if key == "mask":
            value = f"{value['value']} on {value['on']}"
        config.add_row(key, str(value))
    for note in row["config"].get("notes", []):
        config.add_row("note", note)
    out.print(config)
    if row["error"]:
        out.print(Text(row["error"].rstrip(), style="red"))
    if result is None:
        return
    out.print(_matrix_table("Class-IL accuracy (%): row = after training task i, column = test set of task j",
                            result.class_il))
    out.print(_matrix_table("Task-IL accuracy (%)", result.task_il))
    metrics = Table(title="Metrics (%)", title_justify="left")
    metrics.add_column("metric")
    metrics.add_column("class-IL", justify="right")
    metrics.add_column("task-IL", justify="right")
    m = result.metrics
    for label, key in (("final average accuracy", "faa"), ("forgetting (Chaudhry)", "forgetting"),
                       ("forgetting (Mammoth)", "forgetting_mammoth"), ("backward transfer", "bwt")):
        metrics.add_row(label, _num(m[f"{key}_class_il"]), _num(m[f"{key}_task_il"]))
    out.print(metrics)


@app.command()
def export(
    format: str = typer.Option("csv", "--format", "-f", metavar="FORMAT", help=f"{', '.join(EXPORT_FORMATS)}."),
    matrices: bool = typer.Option(False, "--matrices", help="The accuracy matrices in long format instead."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="FILE", help="Output file. [default: stdout; "
                                          "runs.parquet / matrices.parquet for parquet]"),
    method: list[str] = typer.Option([], "--method", "-m", metavar="METHOD", help=FILTER_HELP),
    dataset: list[str] = typer.Option([], "--dataset", "-d", metavar="BENCHMARK", help=FILTER_HELP),
    mask: list[str] = typer.Option([], "--mask", metavar="MASK", help=FILTER_HELP),
    buffer: list[str] = typer.Option([], "--buffer", "-b", metavar="SIZE", help=FILTER_HELP),
    status: list[str] = typer.Option([], "--status", metavar="STATUS", help=FILTER_HELP),
    experiment: list[str] = typer.Option([], "--experiment", "-e", metavar="NAME", help="Repeatable."),
    db: Optional[str] = _db_option(),
) -> None:
    """Write one row per run (or the accuracy matrices, long format) as csv, json or parquet."""
    if format not in EXPORT_FORMATS:
        raise UsageProblem(f"invalid --format {format!r}: valid are {', '.join(EXPORT_FORMATS)}")
    if format == "parquet" and output is None:
        output = Path("matrices.parquet" if matrices else "runs.parquet")
    filters = _filters(method, dataset, mask, buffer, status, experiment)
    try:
        n = export_runs(db, output, format=format, matrices=matrices, **filters)
    except (StoreError, ValueError) as exc:
        raise UsageProblem(str(exc)) from None
    if output is not None:
        print(f"wrote {n} {'rows' if matrices else 'runs'} to {output}", file=sys.stderr)


# `clbench report` and `clbench compare` live in report_cli.py; they reuse the options above.
from .report_cli import register as _register_report_commands  # noqa: E402

_register_report_commands(app)


# ---------------------------------------------------------------------------------------------
# Entry point


def main(argv: Sequence[str] | None = None) -> int:
    """The ``clbench`` console script. Returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]  # bare `clbench`: help, exit status 0
    try:
        result = app(args=args, prog_name="clbench", standalone_mode=False)
    except UsageProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:  # the database failed after the checks (e.g. the server went away)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except _ClickException as exc:
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            hint = f" (see {ctx.command_path} --help)"
        print(f"error: {exc.format_message()}{hint}", file=sys.stderr)
        return exc.exit_code
    except typer.Abort:
        return 130
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
