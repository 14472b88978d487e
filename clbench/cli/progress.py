"""The live progress display of a sweep (``clbench run`` and ``clbench report`` share it)."""

from __future__ import annotations

import sys

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from clbench.errors import first_line
from clbench.store.store import Store
from clbench.sweep.driver import RunningGroup, SweepProgress, execute
from clbench.sweep.executors import GroupFailed
from clbench.sweep.plan import Plan

MAX_RUNNING_LINES = 8


def _running_line(r: RunningGroup, n_groups: int) -> str:
    where = f" on {r.where}" if r.where else ""
    head = f"  group {r.group + 1}/{n_groups} {r.label}{where}"
    t = r.train
    if t is None:
        return f"{head}: starting"
    return f"{head}: task {t.task + 1}/{t.n_tasks}, epoch {t.epoch + 1}/{t.n_epochs}, step {t.step}/{t.n_steps}"


def execute_with_progress(plan: Plan, store: Store, err: Console, **kwargs):
    """``execute`` under a live display: the sweep's bar (groups done, running and queued, runs,
    elapsed, ETA) and a line per running group (where it runs; task, epoch, step). Interruptions
    and failures become one line each."""
    if not plan.groups:
        return execute(plan, store, **kwargs)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
    )
    sweep_task = bar.add_task("sweep", total=1000)
    detail = Text("", style="dim")

    def on_progress(p: SweepProgress) -> None:
        groups = f"groups {p.groups_done}/{p.n_groups} done, {len(p.running)} running, {p.groups_queued} queued"
        bar.update(sweep_task, completed=1000 * p.fraction, description=f"{groups}, runs {p.runs_done}/{p.n_runs}")
        detail.plain = "\n".join(_running_line(r, p.n_groups) for r in p.running[:MAX_RUNNING_LINES])
        if len(p.running) > MAX_RUNNING_LINES:
            detail.plain += f"\n  ... and {len(p.running) - MAX_RUNNING_LINES} more"
        if p.event == "train" and p.train is not None and p.train.phase == "resume":
            t = p.train
            where = f" on {p.where}" if p.where else ""
            err.print(
                f"resumed: group {p.group + 1}/{p.n_groups}, {p.label}{where}, from its checkpoint at task "
                f"{min(t.task + 1, t.n_tasks)}/{t.n_tasks}, epoch {t.epoch + 1}/{t.n_epochs}, "
                f"step {t.step}/{t.n_steps}",
                highlight=False,
            )
        elif p.event == "group_start" and p.attempt > 1:
            err.print(
                f"retrying: group {p.group + 1}/{p.n_groups}, {p.label}, attempt {p.attempt} on {p.where} "
                "(the previous worker died)",
                highlight=False,
            )
        elif p.event == "group_start" and p.where:  # on another process: say which (to find its logs, or it)
            err.print(f"started: group {p.group + 1}/{p.n_groups}, {p.label} on {p.where}", highlight=False)
        elif p.event == "group_start" and p.note:  # what the executor chose for it (this process's CPU threads)
            err.print(f"group {p.group + 1}/{p.n_groups}: {p.note}", highlight=False)
        elif p.event == "group_done":
            where = f" on {p.where}" if p.where else ""
            err.print(f"done: group {p.group + 1}/{p.n_groups}, {p.label}{where}, saved", highlight=False)

    try:
        try:
            with Live(Group(bar, detail), console=err, refresh_per_second=8):
                return execute(plan, store, progress=on_progress, **kwargs)
        finally:
            if not err.is_terminal:
                err.line()  # off a terminal, Live's last frame ends without a newline
    except KeyboardInterrupt:
        statuses = store.statuses([r.run_id for r in plan.to_run])
        done = sum(status == "finished" for status in statuses.values())
        err.print(
            f"interrupted: {done} of {len(plan.to_run)} runs finished and saved; the rest are marked "
            "interrupted. Run the same command again to compute only what is missing."
        )
        raise typer.Exit(130) from None
    except SQLAlchemyError as exc:
        print(f"error: the database {store.where} failed: {first_line(exc)}", file=sys.stderr)
        raise typer.Exit(1) from None
    except GroupFailed as exc:
        failed = [rid for rid, status in store.statuses([r.run_id for r in plan.to_run]).items() if status == "failed"]
        where = f"clbench show {failed[0]}" if failed else "clbench runs --status failed"
        print(
            f"error: {exc}; its runs are marked failed with the traceback (see {where}), the groups not done are "
            "marked interrupted: run the same command again to compute them",
            file=sys.stderr,
        )
        raise typer.Exit(1) from None
    except Exception as exc:  # not a group's training (that is GroupFailed): the executor or the driver itself
        print(
            f"error: the sweep stopped ({type(exc).__name__}: {first_line(exc)}); its unfinished runs are marked "
            "interrupted: run the same command again to compute them",
            file=sys.stderr,
        )
        raise typer.Exit(1) from None
