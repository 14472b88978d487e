"""The ``clbench`` command line: a thin layer over ``clbench.sweep``, ``clbench.store``,
``clbench.registry`` and ``clbench.reports``, one module per group of commands:

- ``run``: plan and train a sweep (``run.py``, with the live display in ``progress.py``);
- ``runs``, ``show``, ``export``: read the registry (``browse.py``);
- ``report``: registered experiments (``report.py``); ``compare``: paired comparisons (``compare.py``);
- ``tune``: choose m with an Optuna study on a validation split (``tune.py``);
- ``executor.py``: the executor options of ``run`` and ``report`` (``--executor ray`` ...);
- ``common.py``: what they share (bad input, option parsing, consoles, formatting); ``plain.py``: long
  listings as plain aligned columns.

Every command validates all of its input before it opens (let alone creates) the database, and
reports bad input as one line, ``error: ...``, on stderr with exit status 2.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

import typer
import typer.main
from typer.core import TyperGroup

try:  # recent typers vendor click; older ones use click itself
    from typer._click.exceptions import ClickException as _ClickException
    from typer._click.utils import make_default_short_help
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException as _ClickException
    from click.utils import make_default_short_help

from clbench.errors import StoreError

# Each command: the module and function that define it, and its summary (the first paragraph of the
# function's docstring; tests/test_startup.py checks they agree). A command's module is imported only
# when that command runs or prints its help: `clbench --help` loads no database driver, numpy or torch.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": (
        "clbench.cli.run",
        "run",
        "Train the sweep methods x buffers x masks x seeds; finished runs are reused (cached).",
    ),
    "runs": (
        "clbench.cli.browse",
        "runs_command",
        "List runs, with filters; unfinished runs with a checkpoint say how far they got.",
    ),
    "show": (
        "clbench.cli.browse",
        "show",
        "Print a run: its resolved config, both accuracy matrices and its metrics.",
    ),
    "export": (
        "clbench.cli.browse",
        "export",
        "Write one row per run (or the accuracy matrices, long format) as csv, json or parquet; or, with "
        "--mlflow, put the finished runs into an MLflow tracking store.",
    ),
    "report": (
        "clbench.cli.report",
        "report_command",
        "Run what the database lacks for a registered experiment, then render its figures and tables.",
    ),
    "compare": (
        "clbench.cli.compare",
        "compare_command",
        "The baseline (no mask) against each masked variant of the same config, paired over seeds and class orders.",
    ),
    "tune": (
        "clbench.cli.tune",
        "tune_command",
        "Choose m for one method, benchmark and buffer: an Optuna study whose trials are seed groups, "
        "selected on a validation split; the study lives in the registry's database and resumes.",
    ),
}


def command_function(name: str):
    """The function that defines the command ``name`` (its module imported now)."""
    module, function, _ = COMMANDS[name]
    return getattr(importlib.import_module(module), function)


class _Commands(TyperGroup):
    """The commands of ``COMMANDS``, each built from its module the first time it is asked for."""

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in COMMANDS:
            return None
        if cmd_name not in self.commands:
            one = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
            one.command(cmd_name)(command_function(cmd_name))
            self.commands[cmd_name] = typer.main.get_command(one)
        return self.commands[cmd_name]

    def format_commands(self, ctx, formatter) -> None:
        # The summaries written above, so that listing the commands imports none of them.
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, make_default_short_help(summary, limit)) for name, (_, _, summary) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def build_app() -> typer.Typer:
    """The typer application with every command registered (each module loaded when its command runs)."""
    app = typer.Typer(
        name="clbench",
        cls=_Commands,
        help="Benchmark the general masked softmax (arXiv 2309.14808) in replay-based continual learning.",
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )
    app.callback()(_no_options)
    return app


def _no_options() -> None:
    """Benchmark the general masked softmax (arXiv 2309.14808) in replay-based continual learning."""


app = build_app()


class _WarningLine(logging.Handler):
    """The library's warnings (logger ``clbench``) as one ``warning:`` line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"warning: {record.getMessage()}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``clbench`` console script. Returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]  # bare `clbench`: help, exit status 0
    log = logging.getLogger("clbench")
    handler = _WarningLine(logging.WARNING)
    log.addHandler(handler)
    try:
        return _main(args)
    finally:
        log.removeHandler(handler)


def _main(args: list[str]) -> int:
    try:
        result = app(args=args, prog_name="clbench", standalone_mode=False, obj={"argv": tuple(args)})
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
    except (typer.Abort, KeyboardInterrupt):
        return 130
    except Exception as exc:
        if not _is_usage_problem(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def _is_usage_problem(exc: Exception) -> bool:
    # Bad input is raised by the commands' modules: if clbench.cli.common was never loaded, none was.
    common = sys.modules.get("clbench.cli.common")
    return common is not None and isinstance(exc, common.UsageProblem)


def __getattr__(name: str):
    if name == "UsageProblem":  # where it always was, without loading the commands' modules
        from clbench.cli.common import UsageProblem

        return UsageProblem
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["COMMANDS", "UsageProblem", "app", "build_app", "command_function", "main"]
