"""``clbench runs``, ``clbench show`` and ``clbench export``: reading the registry."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from clbench.cli.common import (
    FILTER_HELP,
    STATUS_STYLE,
    UsageProblem,
    checkpoint_dir_option,
    class_order_option,
    console,
    db_option,
    db_url,
    filter_options,
    inspect,
    label,
    local_time,
    num,
    store_errors_as_bad_input,
)
from clbench.cli.plain import PLAIN_ROWS, plain_table
from clbench.engine.checkpoint import CheckpointSummary, checkpoint_directory, checkpoints_by_run
from clbench.errors import StoreError
from clbench.store.basics import DONE_STATUSES, STATUSES
from clbench.store.exports import EXPORT_FORMATS, export_runs
from clbench.version import RESULTS_VERSION


def runs_command(
    method: list[str] = typer.Option([], "--method", "-m", metavar="METHOD", help=FILTER_HELP),
    dataset: list[str] = typer.Option([], "--dataset", "-d", metavar="BENCHMARK", help=FILTER_HELP),
    mask: list[str] = typer.Option([], "--mask", metavar="MASK", help=FILTER_HELP),
    mask_on: list[str] = typer.Option([], "--mask-on", metavar="WHERE", help=FILTER_HELP),
    buffer: list[str] = typer.Option([], "--buffer", "-b", metavar="SIZE", help=FILTER_HELP),
    seed: list[str] = typer.Option([], "--seed", metavar="SEED", help=FILTER_HELP),
    status: list[str] = typer.Option([], "--status", metavar="STATUS", help=f"{', '.join(STATUSES)}. {FILTER_HELP}"),
    experiment: list[str] = typer.Option([], "--experiment", "-e", metavar="NAME", help="Repeatable."),
    class_order: list[str] = class_order_option(),
    db: str | None = db_option(),
    checkpoint_dir: Path | None = checkpoint_dir_option(),
) -> None:
    """List runs, with filters; unfinished runs with a checkpoint say how far they got."""
    filters = filter_options(method, dataset, mask, buffer, status, experiment, seed, mask_on, class_order)
    rows, registry_file = _load_listing(db, **filters)
    out = console()
    if not rows:
        out.print("no runs match")
        return
    saved = checkpoints_by_run(checkpoint_directory(registry_file, checkpoint_dir))
    table = Table(title=f"{len(rows)} runs", title_justify="left")
    orders = any(row.class_order > 0 for row in rows)  # the class order column only where one is not the benchmark's
    for name in (
        "run id",
        "experiment",
        "method",
        "dataset",
        "buffer",
        "mask",
        "on",
        "seed",
        *(("order",) if orders else ()),
        "status",
        "FAA class-IL",
        "FAA task-IL",
        "wall s",
        "finished at",
    ):
        table.add_column(
            name,
            justify="right" if name in ("buffer", "seed", "order", "FAA class-IL", "FAA task-IL", "wall s") else "left",
            no_wrap=name == "run id",
        )
    notes = []
    for row in rows:
        table.add_row(
            row.run_id,
            label(row.experiment),
            row.method,
            row.dataset,
            str(row.buffer_size),
            row.mask,
            row.mask_on,
            str(row.seed),
            *((str(row.class_order),) if orders else ()),
            Text(row.status, style=STATUS_STYLE.get(row.status, "")),
            num(row.faa_class_il),
            num(row.faa_task_il),
            num(row.wall_s, "{:.1f}"),
            local_time(row.finished_at),
        )
        if note := run_note(row, saved.get(row.run_id)):
            notes.append(f"{row.run_id}: {note}")
    if len(table.rows) > PLAIN_ROWS:  # rich lays out a boxed table of 1,000 rows in seconds
        out.print(plain_table(table), soft_wrap=True)
        if notes:
            out.print("\n".join(notes), highlight=False, soft_wrap=True)
        return
    if notes:  # below the table: a column this long would squeeze the others
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    out.print(table)


def _load_listing(db: str | None, **filter_values) -> tuple[list, Path | None]:
    """``list_runs`` (an SQLite file read without SQLAlchemy nor pandas) with its errors as bad input,
    and the registry's SQLite file (``None``: a database server)."""
    from clbench.store.listing import list_runs, sqlite_file_of  # noqa: PLC0415

    path = sqlite_file_of(db)
    target = db if path is not None else db_url(db)
    try:
        rows = list_runs(target, **filter_values)
    except (StoreError, ValueError) as exc:
        raise UsageProblem(str(exc)) from None
    if path is None:
        from clbench.store.connection import sqlite_file  # noqa: PLC0415

        path = sqlite_file(target)
    return rows, path


def run_note(row, checkpoint: CheckpointSummary | None) -> str:
    """What a listing says beside a run's status: where it diverged, or how far its checkpoint got."""
    if row.status == "diverged":
        return (
            f"diverged at task {int(row.diverged_task) + 1}, step {int(row.diverged_step) + 1} "
            f"(last finite loss {num(row.last_finite_loss, '{:.4g}')})"
        )
    if checkpoint is not None and row.status not in ("finished", "stale"):
        return f"checkpoint: {checkpoint.describe()}"
    return ""


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


def show(
    run_id: str = typer.Argument(..., help="A run id, or a unique prefix of 4+ characters (see clbench runs)."),
    db: str | None = db_option(),
) -> None:
    """Print a run: its resolved config, both accuracy matrices and its metrics."""
    from clbench.store.opening import open_store  # noqa: PLC0415 - SQLAlchemy: not for `clbench runs`

    try:
        store = open_store(db_url(db), readonly=True)
    except StoreError as exc:
        raise UsageProblem(str(exc)) from None
    with store, store_errors_as_bad_input():
        try:
            rid = store.find_run_id(run_id)
        except KeyError as exc:
            raise UsageProblem(exc.args[0]) from None
        row = store.run_row(rid)
        result = store.load_result(rid) if row["status"] in DONE_STATUSES else None
    out = console()
    out.print(_head_table(rid, row, result))
    out.print(_config_table(row["config"]))
    if row["error"]:
        out.print(Text(row["error"].rstrip(), style="red"))
    if result is None:
        return
    out.print(
        _matrix_table(
            "Class-IL accuracy (%): row = after training task i, column = test set of task j", result.class_il
        )
    )
    out.print(_matrix_table("Task-IL accuracy (%)", result.task_il))
    out.print(_metrics_table(result))
    out.print(_plasticity_table(result))


def _head_table(rid: str, row: dict, result) -> Table:
    """What ``show`` says of a run before its config: status, staleness, where and when it ran."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("run", rid)
    head.add_row("status", Text(row["status"], style=STATUS_STYLE.get(row["status"], "")))
    if (row["results_version"] or 1) < RESULTS_VERSION:
        head.add_row(
            "stale",
            Text(
                f"computed by an engine of results version {row['results_version'] or 1} (this clbench: "
                f"{RESULTS_VERSION}); never reused, left out of reports",
                style="dim",
            ),
        )
    head.add_row("experiment", ", ".join(row["experiments"]) or "-")
    head.add_row("config hash", row["config_hash"])
    head.add_row("created / finished", f"{local_time(row['created_at'])} / {local_time(row['finished_at'])}")
    head.add_row("host, pid", f"{row['host']}, {row['pid']}")
    if row["status"] == "diverged":
        head.add_row(
            "diverged",
            Text(
                f"at task {row['diverged_task'] + 1}, step {row['diverged_step'] + 1} of that task "
                f"(last finite loss {num(row['last_finite_loss'], '{:.4g}')}); frozen from "
                "there on, its numbers are not results",
                style="magenta",
            ),
        )
    if result is not None:
        head.add_row("device", result.device)
        head.add_row("time", f"{result.wall_s:.2f} s (its share of a lockstep group of {result.group_size})")
        head.add_row("versions", ", ".join(f"{k} {v}" for k, v in result.versions.items() if k != "platform"))
    return head


def _config_table(resolved: dict) -> Table:
    config = Table(title="Resolved config", title_justify="left", show_header=False)
    config.add_column(style="bold")
    config.add_column()
    for key, value in resolved.items():
        if key == "notes":
            continue
        if key == "mask":
            value = f"{value['value']} on {value['on']}"
        config.add_row(key, str(value))
    for note in resolved.get("notes", []):
        config.add_row("note", note)
    return config


def _metrics_table(result) -> Table:
    metrics = Table(title="Metrics (%)", title_justify="left")
    metrics.add_column("metric")
    metrics.add_column("class-IL", justify="right")
    metrics.add_column("task-IL", justify="right")
    m = result.metrics
    for name, key in (
        ("final average accuracy", "faa"),
        ("forgetting (Chaudhry)", "forgetting"),
        ("forgetting (Mammoth)", "forgetting_mammoth"),
        ("backward transfer", "bwt"),
    ):
        metrics.add_row(name, num(m[f"{key}_class_il"]), num(m[f"{key}_task_il"]))
    return metrics


def _plasticity_table(result) -> Table:
    """Plasticity beside stability after each task: the diagonal accuracies, the penultimate features'
    effective rank and dead ReLU units (``clbench.metrics.PLASTICITY_DEFINITIONS``)."""
    table = Table(
        title="Plasticity after each task: accuracy on the task just learned (A[i][i], %), effective rank "
        "of the penultimate features and dead ReLU units (%) over the test samples of the tasks seen",
        title_justify="left",
    )
    for name in ("after task", "class-IL A[i][i]", "task-IL A[i][i]", "effective rank", "dead units"):
        table.add_column(name, justify="right")
    measures = result.plasticity
    for i in range(result.class_il.shape[0]):
        table.add_row(
            str(i + 1),
            num(result.class_il[i, i]),
            num(result.task_il[i, i]),
            num(measures["effective_rank"][i], "{:.1f}") if measures else "-",
            num(100 * measures["dead_fraction"][i], "{:.1f}") if measures else "-",
        )
    return table


def export(
    tracking_uri: str | None = typer.Argument(
        None,
        metavar="[TRACKING_URI]",
        help="With --mlflow: the MLflow tracking store. [default: MLflow's own: MLFLOW_TRACKING_URI, else its default]",
    ),
    mlflow: bool = typer.Option(
        False,
        "--mlflow",
        help="Export the finished runs to MLflow instead (one parent run "
        "per config, its seeds as child runs; needs the extra: pip "
        "install 'clbench[mlflow]'). Exporting again adds nothing.",
    ),
    mlflow_experiment: str = typer.Option(
        "clbench", "--mlflow-experiment", metavar="NAME", help="The MLflow experiment to export into."
    ),
    format: str | None = typer.Option(
        None, "--format", "-f", metavar="FORMAT", help=f"{', '.join(EXPORT_FORMATS)}. [default: csv]"
    ),
    matrices: bool = typer.Option(False, "--matrices", help="The accuracy matrices in long format instead."),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        metavar="FILE",
        help="Output file. [default: stdout; runs.parquet / matrices.parquet for parquet]",
    ),
    method: list[str] = typer.Option([], "--method", "-m", metavar="METHOD", help=FILTER_HELP),
    dataset: list[str] = typer.Option([], "--dataset", "-d", metavar="BENCHMARK", help=FILTER_HELP),
    mask: list[str] = typer.Option([], "--mask", metavar="MASK", help=FILTER_HELP),
    buffer: list[str] = typer.Option([], "--buffer", "-b", metavar="SIZE", help=FILTER_HELP),
    status: list[str] = typer.Option([], "--status", metavar="STATUS", help=FILTER_HELP),
    experiment: list[str] = typer.Option([], "--experiment", "-e", metavar="NAME", help="Repeatable."),
    db: str | None = db_option(),
) -> None:
    """Write one row per run (or the accuracy matrices, long format) as csv, json or parquet; or, with
    --mlflow, put the finished runs into an MLflow tracking store."""
    if tracking_uri is not None and not mlflow:
        raise UsageProblem(
            f"unexpected argument {tracking_uri!r}: a tracking URI goes with --mlflow "
            "(clbench export --mlflow [TRACKING_URI])"
        )
    if mlflow:
        if matrices or output is not None or format is not None:
            raise UsageProblem("--mlflow exports to MLflow: --format, --matrices and --output do not apply")
        _export_mlflow(
            tracking_uri, mlflow_experiment, db, filter_options(method, dataset, mask, buffer, status, experiment)
        )
        return
    format = "csv" if format is None else format
    if format not in EXPORT_FORMATS:
        raise UsageProblem(f"invalid --format {format!r}: valid are {', '.join(EXPORT_FORMATS)}")
    if format == "parquet" and output is None:
        output = Path("matrices.parquet" if matrices else "runs.parquet")
    filters = filter_options(method, dataset, mask, buffer, status, experiment)
    try:
        n = export_runs(db_url(db), output, format=format, matrices=matrices, **filters)
    except (StoreError, ValueError) as exc:
        raise UsageProblem(str(exc)) from None
    if output is not None:
        print(f"wrote {n} {'rows' if matrices else 'runs'} to {output}", file=sys.stderr)


def _export_mlflow(tracking_uri: str | None, experiment: str, db: str | None, filters: dict) -> None:
    from clbench.store.mlflow import MlflowExportError, export_mlflow, import_mlflow, resolve_tracking_uri  # noqa: PLC0415

    if filters.get("status", ["finished"]) != ["finished"]:
        raise UsageProblem("--mlflow exports finished runs only: leave out --status")
    filters.pop("status", None)
    try:
        import_mlflow()
        uri = resolve_tracking_uri(tracking_uri)
    except MlflowExportError as exc:
        raise UsageProblem(str(exc)) from None
    inspect_db_ready(db)
    with _quiet_loggers("mlflow", "alembic"):
        try:
            done = export_mlflow(db, uri, experiment=experiment, **filters)
        except (MlflowExportError, ValueError) as exc:
            raise UsageProblem(str(exc)) from None
    print(
        f"MLflow at {done.tracking_uri}, experiment {done.experiment!r} (id {done.experiment_id}): "
        f"{done.new_runs} run{'s' if done.new_runs != 1 else ''} exported now ({done.new_parents} new parent "
        f"run{'s' if done.new_parents != 1 else ''}), {done.already_there} already there, of {done.runs} finished "
        f"run{'s' if done.runs != 1 else ''} matching. See them: mlflow ui --backend-store-uri {done.tracking_uri}",
        file=sys.stderr,
    )


def inspect_db_ready(db: str | None) -> None:
    """The database must exist and be a clbench database (export never creates one)."""
    from clbench.store.connection import describe_url  # noqa: PLC0415

    url = db_url(db)
    if inspect(url) != "ready":
        raise UsageProblem(f"no clbench database at {describe_url(url)}: run `clbench run` first, or give --db")


@contextmanager
def _quiet_loggers(*names: str):
    """MLflow and alembic log every schema step at INFO: keep the command's output to its result."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
