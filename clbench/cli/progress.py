"""The live progress display of a sweep (``clbench run`` and ``clbench report`` share it)."""

from __future__ import annotations

import sys

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from ..store import Store
from ..sweep import Plan, SweepProgress, execute
from .common import first_line


def execute_with_progress(plan: Plan, store: Store, err: Console, **kwargs):
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
        if p.event == "train" and p.train is not None and p.train.phase == "resume":
            t = p.train
            err.print(f"resumed: group {p.group + 1}/{p.n_groups}, {p.label}, from its checkpoint at task "
                      f"{min(t.task + 1, t.n_tasks)}/{t.n_tasks}, epoch {t.epoch + 1}/{t.n_epochs}, "
                      f"step {t.step}/{t.n_steps}", highlight=False)
        elif p.event == "train" and p.train is not None:
            t = p.train
            detail.plain = (f"  {p.label}: task {t.task + 1}/{t.n_tasks}, epoch {t.epoch + 1}/{t.n_epochs}, "
                            f"step {t.step}/{t.n_steps}")
        elif p.event == "group_start":
            detail.plain = f"  {p.label}: starting"
        elif p.event == "group_done":
            err.print(f"done: group {p.group + 1}/{p.n_groups}, {p.label}, saved", highlight=False)

    try:
        try:
            with Live(Group(bar, detail), console=err, refresh_per_second=8):
                outcome = execute(plan, store, progress=on_progress, **kwargs)
        finally:
            if not err.is_terminal:
                # Off a terminal, Live's last frame ends without a newline: end it, however the
                # sweep ended, so that what follows (interrupted:, error:) starts its own line.
                err.line()
        return outcome
    except KeyboardInterrupt:
        statuses = store.statuses([r.run_id for r in plan.to_run])
        done = sum(status == "finished" for status in statuses.values())
        err.print(f"interrupted: {done} of {len(plan.to_run)} runs finished and saved; the rest are marked "
                  "interrupted. Run the same command again to compute only what is missing.")
        raise typer.Exit(130) from None
    except SQLAlchemyError as exc:
        print(f"error: the database {store.where} failed: {first_line(exc)}", file=sys.stderr)
        raise typer.Exit(1) from None
    except Exception as exc:
        failed = [rid for rid, status in store.statuses([r.run_id for r in plan.to_run]).items() if status == "failed"]
        where = f"clbench show {failed[0]}" if failed else "clbench runs --status failed"
        print(f"error: a training group failed ({type(exc).__name__}: {first_line(exc)}); its runs are marked "
              f"failed with the traceback (see {where})", file=sys.stderr)
        raise typer.Exit(1) from None
