"""What ``clbench run`` and ``clbench report`` show of a session (``clbench.sweep.session``): a line
per step on stderr and the live progress display of each sweep."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from clbench.cli.common import UsageProblem, describe_checkpoints, duration, report_held, sigterm_as_interrupt
from clbench.engine.checkpoint import CheckpointPolicy
from clbench.errors import first_line
from clbench.store.store import Store
from clbench.sweep.driver import RunningGroup, SweepOutcome, SweepProgress, execute
from clbench.sweep.executors import Executor, GroupFailed
from clbench.sweep.plan import Plan
from clbench.sweep.session import SessionEvents, SessionOutcome, SessionRefused, SweepRequest, Training, run_session

MAX_RUNNING_LINES = 8


def _running_line(r: RunningGroup, n_groups: int) -> str:
    where = f" on {r.where}" if r.where else ""
    head = f"  group {r.group + 1}/{n_groups} {r.label}{where}"
    t = r.train
    if t is None:
        return f"{head}: starting"
    return f"{head}: task {t.task + 1}/{t.n_tasks}, epoch {t.epoch + 1}/{t.n_epochs}, step {t.step}/{t.n_steps}"


def execute_with_progress(plan: Plan, store: Store, err: Console, **kwargs):
    """``execute`` under a live display (:func:`live_display`)."""
    with live_display(plan, store, err) as on_progress:
        return execute(plan, store, progress=on_progress, **kwargs)


@contextmanager
def live_display(plan: Plan, store: Store, err: Console) -> Iterator[Callable[[SweepProgress], None] | None]:
    """Around a sweep's ``execute``: yields the progress callback of a live display (the sweep's
    bar: groups done, running and queued, runs, elapsed, ETA; a line per running group: where it
    runs, task, epoch, step). SIGTERM stops the sweep like Ctrl-C; interruptions and failures
    become one line each and an exit status."""
    if not plan.groups:
        yield None
        return
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
    detail = Text("", style="dim")
    on_progress = _Display(bar, bar.add_task("sweep", total=1000), detail, err)
    try:
        try:
            with sigterm_as_interrupt(), Live(Group(bar, detail), console=err, refresh_per_second=8):
                yield on_progress
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
    except Exception as exc:  # noqa: BLE001 - every way a sweep stops is one line
        print(f"error: {_stop_line(exc, plan, store)}", file=sys.stderr)
        raise typer.Exit(1) from None


def _stop_line(exc: Exception, plan: Plan, store: Store) -> str:
    """The one line that says why a sweep stopped (after its runs were marked)."""
    if isinstance(exc, SQLAlchemyError):
        return f"the database {store.where} failed: {first_line(exc)}"
    if isinstance(exc, GroupFailed):
        failed = [rid for rid, status in store.statuses([r.run_id for r in plan.to_run]).items() if status == "failed"]
        where = f"clbench show {failed[0]}" if failed else "clbench runs --status failed"
        return (
            f"{exc}; its runs are marked failed with the traceback (see {where}), the groups not done are "
            "marked interrupted: run the same command again to compute them"
        )
    # not a group's training (that is GroupFailed): the executor or the driver itself
    return (
        f"the sweep stopped ({type(exc).__name__}: {first_line(exc)}); its unfinished runs are marked "
        "interrupted: run the same command again to compute them"
    )


class _Display:
    """The progress callback of the live display: the bar, the running groups' lines, and a line
    printed above them for each event worth keeping (resumed, retried, started elsewhere, done)."""

    def __init__(self, bar: Progress, task, detail: Text, err: Console):
        self.bar, self.task, self.detail, self.err = bar, task, detail, err

    def __call__(self, p: SweepProgress) -> None:
        groups = f"groups {p.groups_done}/{p.n_groups} done, {len(p.running)} running, {p.groups_queued} queued"
        self.bar.update(self.task, completed=1000 * p.fraction, description=f"{groups}, runs {p.runs_done}/{p.n_runs}")
        self.detail.plain = "\n".join(_running_line(r, p.n_groups) for r in p.running[:MAX_RUNNING_LINES])
        if len(p.running) > MAX_RUNNING_LINES:
            self.detail.plain += f"\n  ... and {len(p.running) - MAX_RUNNING_LINES} more"
        line = _event_line(p)
        if line:
            self.err.print(line, highlight=False)


def _event_line(p: SweepProgress) -> str:
    where = f" on {p.where}" if p.where else ""
    if p.event == "train" and p.train is not None and p.train.phase == "resume":
        t = p.train
        return (
            f"resumed: group {p.group + 1}/{p.n_groups}, {p.label}{where}, from its checkpoint at task "
            f"{min(t.task + 1, t.n_tasks)}/{t.n_tasks}, epoch {t.epoch + 1}/{t.n_epochs}, step {t.step}/{t.n_steps}"
        )
    if p.event == "group_start" and p.attempt > 1:
        return (
            f"retrying: group {p.group + 1}/{p.n_groups}, {p.label}, attempt {p.attempt} on {p.where} "
            "(the previous worker died)"
        )
    if p.event == "group_start" and p.where:  # on another process: say which (to find its logs, or it)
        return f"started: group {p.group + 1}/{p.n_groups}, {p.label} on {p.where}"
    if p.event == "group_start" and p.note:  # what the executor chose for it (this process's CPU threads)
        return f"group {p.group + 1}/{p.n_groups}: {p.note}"
    if p.event == "group_done":
        return f"done: group {p.group + 1}/{p.n_groups}, {p.label}{where}, saved"
    return ""


class SweepDisplay(SessionEvents):
    """A session (``clbench run``, ``clbench report``) told on stderr: stale runs, each sweep's
    plan in one line, the live display while it executes, runs held by other processes."""

    def __init__(self, err: Console, executor: Executor, policy: CheckpointPolicy | None, named: bool = False):
        self.err, self.executor, self.policy, self.named = err, executor, policy, named

    def stale(self, run_ids: list[str]) -> None:
        self.err.print(f"marked {len(run_ids)} run(s) of ended processes as interrupted")

    def planned(self, request: SweepRequest, plan: Plan, where: str) -> None:
        n_run, n_groups = len(plan.to_run), len(plan.groups)
        memory = f"; {plan.memory_note}" if plan.memory_note and n_run else ""
        if self.named:  # one line per registered experiment
            head = f"{request.experiment}: {len(plan.runs)} runs, {n_run} to compute in {n_groups} group(s)"
        else:
            head = (
                f"{len(plan.runs)} run{'s' if len(plan.runs) != 1 else ''}: {n_run} to compute in {n_groups} "
                f"group{'s' if n_groups != 1 else ''}"
            )
        self.err.print(
            f"{head} (estimated {duration(plan.estimate_s)}), {len(plan.cached)} cached; saving to {where}; "
            f"{describe_checkpoints(self.policy)}{memory}",
            highlight=False,
        )
        if n_run and self.executor.name != "local":
            self.err.print(self.executor.describe(), highlight=False)

    def executing(self, plan: Plan, store: Store):
        return live_display(plan, store, self.err)

    def executed(self, request: SweepRequest, outcome: SweepOutcome) -> None:
        report_held(self.err, outcome.held)


def run_with_display(url, requests: list[SweepRequest], executor: Executor, err: Console, **kwargs) -> SessionOutcome:
    """``run_session`` told on ``err`` (:class:`SweepDisplay`); a session that cannot begin is bad input."""
    named = kwargs.pop("named", False)
    training: Training = kwargs["training"]
    events = SweepDisplay(err, executor, training.checkpoint, named=named)
    try:
        return run_session(url, requests, executor, events=events, **kwargs)
    except SessionRefused as exc:
        raise UsageProblem(str(exc)) from None
