"""What every command of the CLI shares: the bad-input exception, option parsing, consoles, the
database and data checks, and the formatting of numbers, times and durations (once, here)."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import timezone
from pathlib import Path

import pandas as pd
import typer
from rich.console import Console

from ..checkpoint import ENV_CHECKPOINTS, CheckpointPolicy, parse_duration
from ..data.benchmarks import get_benchmark
from ..data.sources import DataNotFoundError, locate
from ..registry import load_runs
from ..store import StoreError, inspect_db
from ..sweep import checkpoint_directory


class UsageProblem(Exception):
    """Bad input: reported as one ``error:`` line with exit status 2."""


DB_HELP = "Database: a file path or a SQLAlchemy URL (e.g. postgresql+psycopg://user@host/db)."
FILTER_HELP = "Repeatable, or a comma list."
STATUS_STYLE = {"finished": "green", "running": "cyan", "pending": "blue", "failed": "red", "interrupted": "yellow",
                "diverged": "magenta", "stale": "dim"}


def checkpoint_every_option():
    return typer.Option("10m", "--checkpoint-every", metavar="DURATION",
                        help="Checkpoint each group at the end of every task and this often within one "
                             "(e.g. 90s, 10m, 1h; 0 turns checkpoints off).")


def checkpoint_dir_option():
    return typer.Option(None, "--checkpoint-dir", envvar=ENV_CHECKPOINTS, metavar="DIR", show_envvar=True,
                        help="Folder of the groups' checkpoints. [default: beside an SQLite registry, "
                             "e.g. results.checkpoints/]")


def checkpoint_policy(db_url, every: str, directory: Path | None) -> CheckpointPolicy | None:
    """The checkpoint policy of ``--checkpoint-every`` and ``--checkpoint-dir`` (``None``: off);
    bad values are bad input. Nothing is created here: the folder appears with the first checkpoint."""
    try:
        seconds = parse_duration(every)
    except ValueError as exc:
        raise UsageProblem(f"invalid --checkpoint-every: {exc}") from None
    if seconds == 0:
        return None
    folder = checkpoint_directory(db_url, directory)
    if folder.exists() and not folder.is_dir():
        raise UsageProblem(f"invalid --checkpoint-dir {folder}: it is a file, not a folder")
    return CheckpointPolicy(folder, seconds)


def describe_checkpoints(policy: CheckpointPolicy | None) -> str:
    if policy is None:
        return "no checkpoints"
    return f"checkpoints every {duration(policy.every_s)} and after each task in {policy.directory}"


def class_il_option():
    return typer.Option("all", "--class-il", metavar="CONVENTION",
                        help="Class-IL accuracy with the argmax over all classes (all) or over the classes seen so "
                             "far (seen, Mammoth since 2023-12); the final row is the same, forgetting differs.")


def db_option():
    return typer.Option(None, "--db", envvar="CLBENCH_DB", metavar="DB", show_envvar=True, help=DB_HELP + " [default: results.db]")


# ---------------------------------------------------------------------------------------------
# Parsing


def split(values: Sequence[str] | None) -> list[str]:
    """Repeatable options that also take comma lists: --mask none,-inf --mask -5."""
    return [part.strip() for value in values or () for part in str(value).split(",") if part.strip()]


def ints(values: Sequence[str] | None, what: str) -> list[int]:
    out = []
    for text in split(values):
        try:
            out.append(int(text))
        except ValueError:
            raise UsageProblem(f"invalid {what} {text!r}: give a whole number") from None
    return out


def key_values(values: Sequence[str] | None, what: str) -> dict[str, str]:
    """``KEY=VALUE`` options (repeatable, or comma lists) as a dict; the method checks the keys."""
    out = {}
    for text in split(values):
        key, sep, value = text.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageProblem(f"invalid {what} {text!r}: give KEY=VALUE, e.g. {what} gamma=0.9")
        out[key.strip()] = value.strip()
    return out


def filter_options(method, dataset, mask, buffer, status, experiment, seed=None, mask_on=None) -> dict:
    """The ``load_runs`` filters of a listing command's options (only those given)."""
    out = {}
    if method:
        out["method"] = split(method)
    if dataset:
        out["dataset"] = split(dataset)
    if mask:
        out["mask"] = split(mask)
    if buffer:
        out["buffer"] = ints(buffer, "buffer size")
    if status:
        out["status"] = split(status)
    if experiment:
        out["experiment"] = list(experiment)
    if seed:
        out["seed"] = ints(seed, "seed")
    if mask_on:
        out["mask_on"] = split(mask_on)
    return out


# ---------------------------------------------------------------------------------------------
# Checks made before anything is written


def load(db: str | None, **filter_values):
    """``load_runs`` with its errors as bad input."""
    try:
        return load_runs(db, **filter_values)
    except (StoreError, ValueError) as exc:
        raise UsageProblem(str(exc)) from None


def inspect(url) -> str:
    try:
        return inspect_db(url)
    except StoreError as exc:
        raise UsageProblem(str(exc)) from None


def check_data(benchmarks: set[str], data_dir: Path | None, download: bool) -> None:
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


# ---------------------------------------------------------------------------------------------
# Formatting


def first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


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


def num(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None or value != value else fmt.format(value)


def local_time(value) -> str:
    if value is None or pd.isna(value):
        return "-"
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if value.tzinfo is None:  # stored in UTC (SQLite keeps no zone)
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")

