"""What every command of the CLI shares: the bad-input exception, option parsing, consoles, the
database and data checks, and the formatting of numbers, times and durations (once, here)."""

from __future__ import annotations

import shlex
import signal
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from clbench.data.specs import get_benchmark
from clbench.engine.checkpoint import ENV_CHECKPOINTS, CheckpointPolicy, checkpoint_directory, parse_duration
from clbench.errors import StoreError
from clbench.files import OutputError, probe_output_folder
from clbench.runs.checks import INT_MAX, InvalidValue, check_label, check_whole

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

# The store's and the data readers' modules (SQLAlchemy, numpy) are imported where they are used:
# a command that only prints its help must not wait for them.


class UsageProblem(Exception):
    """Bad input: reported as one ``error:`` line with exit status 2."""


DB_HELP = "Database: a file path or a SQLAlchemy URL (e.g. postgresql+psycopg://user@host/db)."
FILTER_HELP = "Repeatable, or a comma list."
MAX_THREADS = 1024  # torch would try to start any number of threads; more than this is a typo
STATUS_STYLE = {
    "finished": "green",
    "running": "cyan",
    "pending": "blue",
    "failed": "red",
    "interrupted": "yellow",
    "diverged": "magenta",
    "stale": "dim",
}


def checkpoint_every_option():
    return typer.Option(
        "10m",
        "--checkpoint-every",
        metavar="DURATION",
        help="Checkpoint each group at the end of every task and this often within one "
        "(e.g. 90s, 10m, 1h; 0 turns checkpoints off).",
    )


def checkpoint_dir_option():
    return typer.Option(
        None,
        "--checkpoint-dir",
        envvar=ENV_CHECKPOINTS,
        metavar="DIR",
        show_envvar=True,
        help="Folder of the groups' checkpoints. [default: beside an SQLite registry, e.g. results.checkpoints/]",
    )


def checkpoint_policy(db_url, every: str, directory: Path | None, training: bool = True) -> CheckpointPolicy | None:
    """The checkpoint policy of ``--checkpoint-every`` and ``--checkpoint-dir`` (``None``: off);
    bad values are bad input, and so, when the command will train (``training``), is a folder that
    cannot be written (checked by writing, before any training). Nothing is created here: the
    folder appears with the first checkpoint."""
    try:
        seconds = parse_duration(every)
    except ValueError as exc:
        raise UsageProblem(f"invalid --checkpoint-every: {exc}") from None
    if seconds == 0:
        return None
    from clbench.store.connection import sqlite_path

    folder = checkpoint_directory(sqlite_path(db_url), directory)
    if folder.exists() and not folder.is_dir():
        raise UsageProblem(f"invalid --checkpoint-dir {folder}: it is a file, not a folder")
    try:
        if training:
            probe_output_folder(folder)
    except OutputError as exc:
        raise UsageProblem(f"invalid --checkpoint-dir: {exc}") from None
    return CheckpointPolicy(folder, seconds)


def describe_checkpoints(policy: CheckpointPolicy | None) -> str:
    if policy is None:
        return "no checkpoints"
    return f"checkpoints every {duration(policy.every_s)} and after each task in {policy.directory}"


def class_il_option():
    return typer.Option(
        "all",
        "--class-il",
        metavar="CONVENTION",
        help="Class-IL accuracy with the argmax over all classes (all) or over the classes seen so "
        "far (seen, Mammoth since 2023-12); the final row is the same, forgetting differs.",
    )


def split_option():
    return typer.Option(
        "test",
        "--split",
        metavar="SPLIT",
        help="Measure on the test sets (test) or on the training data runs held out with --validation (validation).",
    )


SPLIT_CHOICES = ("test", "validation")


def db_option():
    return typer.Option(
        None, "--db", envvar="CLBENCH_DB", metavar="DB", show_envvar=True, help=DB_HELP + " [default: results.db]"
    )


# ---------------------------------------------------------------------------------------------
# Parsing


def split(values: Sequence[str] | None, option: str = "value") -> list[str]:
    """Repeatable options that also take comma lists: --mask none,-inf --mask -5. An empty item
    (``--mask ''``, ``--mask ' '``, ``--mask ,``, ``--mask -inf,``) is an error, never "nothing"."""
    out = []
    for value in values or ():
        parts = [part.strip() for part in str(value).split(",")]
        if not all(parts):
            raise UsageProblem(f"invalid {option} {value!r}: an empty value; give one or more values, comma-separated")
        out.extend(parts)
    return out


def ints(values: Sequence[str] | None, what: str, option: str | None = None) -> list[int]:
    return [_number(text, int, what) for text in split(values, option or what)]


def _number(text: str, kind: type, what: str):
    """``text`` as an int or a float as written on a command line: Python's own parsers also take
    ``1_0`` (10) and surrounding blanks, which are typos here, not numbers."""
    text = str(text)
    try:
        if "_" in text or text != text.strip():
            raise ValueError
        return kind(text)
    except ValueError:
        raise UsageProblem(f"invalid {what} {text!r}: give {'a whole number' if kind is int else 'a number'}") from None


def strict_float(option: str):
    """A typer ``parser`` for a float option (``parser=strict_float("--lr")``)."""
    return lambda text: _number(text, float, option)


def strict_int(option: str):
    """A typer ``parser`` for an int option (``parser=strict_int("--epochs")``)."""
    return lambda text: _number(text, int, option)


def key_values(values: Sequence[str] | None, what: str) -> dict[str, str]:
    """``KEY=VALUE`` options (repeatable, or comma lists) as a dict; the method checks the keys."""
    out = {}
    for text in split(values):
        key, sep, value = text.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageProblem(f"invalid {what} {text!r}: give KEY=VALUE, e.g. {what} gamma=0.9")
        out[key.strip()] = value.strip()
    return out


def filter_options(
    method, dataset, mask, buffer, status, experiment, seed=None, mask_on=None, class_order=None
) -> dict:
    """The ``load_runs`` filters of a listing command's options (only those given)."""
    out = {}
    if class_order:
        out["class_order"] = class_orders(class_order)
    if method:
        out["method"] = split(method, "--method")
    if dataset:
        out["dataset"] = split(dataset, "--dataset")
    if mask:
        out["mask"] = split(mask, "--mask")
    if buffer:
        out["buffer"] = ints(buffer, "buffer size", "--buffer")
        for b in out["buffer"]:
            check_whole_option("--buffer", b, 0)
    if status:
        out["status"] = split(status, "--status")
    if experiment:
        out["experiment"] = [check_experiment(e) for e in experiment]
    if seed:
        out["seed"] = ints(seed, "seed", "--seed")
        for k in out["seed"]:
            check_whole_option("--seed", k, 0)
    if mask_on:
        out["mask_on"] = split(mask_on, "--mask-on")
    return out


def class_orders(values: Sequence[str] | None) -> list[int] | None:
    """``--class-order`` values (repeatable, or comma lists): 0, the benchmark's order; K > 0, a
    permutation drawn from K. ``None`` when none is given."""
    if not values:
        return None
    out = ints(values, "class order", "--class-order")
    for k in out:
        check_whole_option("--class-order", k, 0)
    return out


def class_order_option():
    return typer.Option(
        [],
        "--class-order",
        metavar="K",
        help="Class order: 0 the benchmark's, K > 0 a permutation drawn from K alone. Repeatable, or a comma list.",
    )


# Where a RunConfig field comes from on the command line, for the messages of bad values.
OPTION_OF_FIELD = {
    "seed": "--seed",
    "class_order_seed": "--class-order",
    "buffer_size": "--buffer",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "minibatch_size": "--minibatch-size",
    "lr": "--lr",
    "alpha": "--alpha",
    "beta": "--beta",
    "synthetic.train_per_class": "--synthetic-train-per-class",
    "synthetic.test_per_class": "--synthetic-test-per-class",
    "validation": "--validation",
    "eval_every": "--eval-every",
    "eval_samples": "--eval-samples",
}


def config_problem(exc: ValueError) -> UsageProblem:
    """A library ``ValueError`` about a run's values as bad input, naming the option it came from."""
    if isinstance(exc, InvalidValue) and exc.field in OPTION_OF_FIELD:
        return UsageProblem(exc.message_for(OPTION_OF_FIELD[exc.field]))
    return UsageProblem(str(exc))


def check_whole_option(option: str, value: int | None, low: int, high: int = INT_MAX) -> int | None:
    if value is None:
        return None
    try:
        return check_whole(option, value, low, high)
    except InvalidValue as exc:
        raise UsageProblem(str(exc)) from None


def check_experiment(label: str) -> str:
    try:
        return check_label(label)
    except InvalidValue as exc:
        raise UsageProblem(exc.message_for("--experiment")) from None


# ---------------------------------------------------------------------------------------------
# Checks made before anything is written


def db_url(db: str | None) -> URL:
    """The database the command works on (``--db``, ``$CLBENCH_DB`` or results.db), refusing one
    that would keep nothing."""
    from clbench.store.connection import is_in_memory, resolve_db_url

    try:
        url = resolve_db_url(db)
    except StoreError as exc:
        raise UsageProblem(str(exc)) from None
    if is_in_memory(url):
        raise UsageProblem(
            f"--db {url.render_as_string(hide_password=True)} is an in-memory database: it keeps "
            "nothing after the command ends; give a file path or a database server's URL"
        )
    return url


def load(db: str | None, **filter_values):
    """``load_runs`` with its errors as bad input."""
    from clbench.store.queries import load_runs  # pandas: only for the commands that list runs

    url = db_url(db)
    try:
        return load_runs(url, **filter_values)
    except (StoreError, ValueError) as exc:
        raise UsageProblem(str(exc)) from None


@contextmanager
def store_errors_as_bad_input():
    """A read-only command's database problems (e.g. a damaged file) as one ``error:`` line, exit 2:
    it wrote nothing."""
    try:
        yield
    except StoreError as exc:
        raise UsageProblem(str(exc)) from None


def inspect(url) -> str:
    from clbench.store.opening import inspect_db

    try:
        return inspect_db(url)
    except StoreError as exc:
        raise UsageProblem(str(exc)) from None


def check_data(benchmarks: set[str], data_dir: Path | None, download: bool) -> None:
    from clbench.data.sources import DataNotFoundError, locate

    for name in sorted(benchmarks):
        spec = get_benchmark(name)
        if spec.dataset == "synthetic":
            continue
        try:
            locate(spec.dataset, data_dir, download=download)
        except DataNotFoundError as exc:
            raise UsageProblem(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Consoles and signals


def console(stderr: bool = False) -> Console:
    # Off a terminal (pipes, logs) rich would wrap tables at 80 columns; give them room instead.
    probe = Console(stderr=stderr)
    return Console(stderr=stderr, width=None if probe.is_terminal else max(probe.width, 160))


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (e.g. from a scheduler) stops a sweep like Ctrl-C does: finished runs stay saved and
    unfinished ones are marked interrupted."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupted_render(where: str):
    """Ctrl-C or SIGTERM while reports render: one line saying what was kept (the runs computed are
    saved; each report folder is as it was, the staging folder removed), then exit status 130 as
    ``run`` does."""
    with sigterm_as_interrupt():
        try:
            yield
        except KeyboardInterrupt:
            console(stderr=True).print(
                f"interrupted while rendering: every run computed is saved in {where}; the report folders are "
                "as they were before (no half-written report). Run the same command again to render them "
                "(nothing is computed again).",
                highlight=False,
                soft_wrap=True,
            )
            raise


def report_held(err: Console, held: dict[str, str]) -> None:
    """One line for the runs another live process was computing (``SweepOutcome.held``)."""
    if not held:
        return
    holders = sorted(set(held.values()))
    shown = ", ".join(holders[:3]) + (f" and {len(holders) - 3} more" if len(holders) > 3 else "")
    err.print(
        f"held: {len(held)} run{'s' if len(held) != 1 else ''} left to {shown}, which "
        f"{'is' if len(holders) == 1 else 'are'} computing them now; run the same command again later to "
        "see their results",
        highlight=False,
    )


# ---------------------------------------------------------------------------------------------
# Formatting


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def pm(mean: float, std: float) -> str:
    """``mean ± std`` with two decimals; ``-`` for a missing mean, the mean alone without a std."""
    if mean != mean:  # NaN
        return "-"
    return f"{mean:.2f}" if std != std else f"{mean:.2f} ± {std:.2f}"


def p_value(p: float) -> str:
    return "-" if p != p else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def label(value) -> str:
    """A text cell: ``-`` for a missing value (pandas holds a missing string as NaN, a float)."""
    return value if isinstance(value, str) and value else "-"


def num(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None or value != value else fmt.format(value)


def local_time(value) -> str:
    if value is None or value != value:  # None, NaN or NaT (pandas' missing time)
        return "-"
    if hasattr(value, "to_pydatetime"):  # a pandas Timestamp
        value = value.to_pydatetime()
    if value.tzinfo is None:  # stored in UTC (SQLite keeps no zone)
        value = value.replace(tzinfo=UTC)
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def given_command() -> str | None:
    """The command line exactly as given to ``clbench`` (every option, as typed), for a page to show;
    None when the command was not started through :func:`clbench.cli.main`."""
    try:  # recent typers vendor click; older ones use click itself
        from typer._click.globals import get_current_context  # noqa: PLC0415
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click import get_current_context  # noqa: PLC0415

    ctx = get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    argv = obj.get("argv") if isinstance(obj, dict) else None
    return shlex.join(["clbench", *argv]) if argv else None
