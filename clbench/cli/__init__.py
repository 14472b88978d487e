"""The ``clbench`` command line: a thin layer over ``clbench.sweep``, ``clbench.store``,
``clbench.registry`` and ``clbench.reports``, one module per group of commands:

- ``run``: plan and train a sweep (``run.py``, with the live display in ``progress.py``);
- ``runs``, ``show``, ``export``: read the registry (``browse.py``);
- ``report``: registered experiments (``report.py``); ``compare``: paired comparisons (``compare.py``);
- ``tune``: choose m with an Optuna study on a validation split (``tune.py``);
- ``executor.py``: the executor options of ``run`` and ``report`` (``--executor ray`` ...);
- ``common.py``: what they share (bad input, option parsing, consoles, formatting).

Every command validates all of its input before it opens (let alone creates) the database, and
reports bad input as one line, ``error: ...``, on stderr with exit status 2.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import typer

try:  # recent typers vendor click; older ones use click itself
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - depends on the installed typer
    from click.exceptions import ClickException as _ClickException

from clbench.cli import browse, compare, report, run, tune
from clbench.cli.common import UsageProblem
from clbench.store.connection import StoreError


def build_app() -> typer.Typer:
    """The typer application with every command registered."""
    app = typer.Typer(
        name="clbench",
        help="Benchmark the general masked softmax (arXiv 2309.14808) in replay-based continual learning.",
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )
    app.command("run")(run.run)
    app.command("runs")(browse.runs_command)
    app.command("show")(browse.show)
    app.command("export")(browse.export)
    app.command("report")(report.report_command)
    app.command("compare")(compare.compare_command)
    app.command("tune")(tune.tune_command)
    return app


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


__all__ = ["UsageProblem", "app", "build_app", "main"]
