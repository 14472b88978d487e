"""The lockstep training loop: the runs of a group take every step together, as one computation.

``train_group`` reads top to bottom: begin a task, train its epochs, end it, evaluate. What the
group trains with is fixed (``Group``); what it has done is its state (``GroupState``), which the
phases below advance in place and a checkpoint saves. The step itself is ``update.train_step``;
the random draws are made ahead in ``plans``; GDumb's refit is ``refit``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clbench.data.loading import ContinualData
from clbench.engine.checkpoint import CheckpointPolicy
from clbench.engine.environment import keep_freed_memory, numeric_environment, software_versions
from clbench.engine.evaluation import (
    CurveInputs,
    curve_split,
    curve_subsets,
    evaluate,
    evaluate_curve,
    evaluate_validation,
)
from clbench.engine.group import Group
from clbench.engine.group_state import GroupState, load_snapshot, save_snapshot
from clbench.engine.plans import PLAN_CHUNK_STEPS, draw_epoch, replay_avail, replay_plan, stacked_draws, step_slice
from clbench.engine.progress import PhaseTimer, PhaseTimes, Progress, ProgressCallback, untimed
from clbench.engine.refit import refit
from clbench.engine.update import NetState, StepForward, fresh, step_batches, train_step
from clbench.errors import first_line
from clbench.lockstep.step import Step
from clbench.methods.user import method_code_error
from clbench.runs.resolved import ResolvedConfig
from clbench.runs.results import AccuracyCurve, RunResult, SplitMatrices

log = logging.getLogger("clbench")


def train_group(
    configs: Sequence[ResolvedConfig],
    data: ContinualData,
    *,
    progress: ProgressCallback | None = None,
    phases: PhaseTimes | None = None,
    checkpoint: CheckpointPolicy | None = None,
) -> list[RunResult]:
    """Train a lockstep group (configs with one ``group_key``) on ``data``; one result per config.

    The device is the data's device (``load_benchmark(..., device=...)``). ``phases``, when given,
    accumulates the wall time of each phase of training (a profile; see ``PhaseTimes``).
    ``checkpoint``, when given, saves the group's state at the end of every task and every
    ``checkpoint.every_s`` seconds within a task, and resumes from the group's checkpoint if one
    exists: the results are then exactly those of an uninterrupted run (bit for bit on the CPU).
    The caller deletes the checkpoint once it has stored the results
    (``clbench.engine.checkpoint.discard_checkpoint``). A task's end (the method's end-of-task
    hook, a refit, the evaluation) runs between two checkpoints, so an interruption there redoes it;
    a method's end-of-task passes (BiC's bias stage) are checkpointed between passes, like steps.
    """
    if not configs:
        return []
    group = Group.of(configs, data)  # what stays fixed, checked once: one group_key, the configs' data
    keep_freed_memory()  # steps reuse the memory the last one freed instead of faulting in fresh pages
    threads_before = torch.get_num_threads()
    try:
        training = _Training(group, GroupState.start(group), progress, phases or untimed, checkpoint)
        training.resume()  # an interrupted group goes on from its checkpoint, to the same bits
        while training.st.task < group.n_tasks:
            task = training.begin_task()  # joint restarts from the initial weights; loss sums are per task
            while training.st.epoch < group.epochs:
                training.train_epoch(task)  # a fresh order per epoch; every run takes each step at once
            training.end_task(task)  # methods act on a finished task: memories, teachers, GDumb's refit
            training.evaluate(task)  # a row of the accuracy matrices; a checkpoint, so the task is kept
        return _results(group, training.st)
    except (SystemExit, KeyboardInterrupt) as exc:  # a method file's sys.exit: its group fails, one line
        if (error := method_code_error(exc, [c.method_source for c in configs])) is None:
            raise
        raise error from None
    finally:  # a resumed group's thread count was its own
        torch.set_num_threads(threads_before)


@dataclass(frozen=True)
class _Task:
    """The task being trained: its index, the rows it trains on and its steps per epoch."""

    index: int
    pool: torch.Tensor  # (n,), or (R, n) where the method's rows differ per run
    n_steps: int
    n_draws: int  # replay draws per step (0 before the method replays)

    @property
    def n(self) -> int:
        return self.pool.shape[-1]


class _Training:
    """One group's training in progress: its setup, its state ``st``, and its reports and saves."""

    def __init__(
        self,
        group: Group,
        st: GroupState,
        progress: ProgressCallback | None,
        phase: PhaseTimer,
        checkpoint: CheckpointPolicy | None,
    ):
        self.group, self.st, self.progress, self.phase, self.checkpoint = group, st, progress, phase, checkpoint
        self.started = time.perf_counter()
        self.last_saved = time.monotonic()
        self.task_clock = 0.0  # perf_counter when the task's training time was last added up
        first = group.first  # evaluation during training: each run's fixed subsets, drawn again from its seed
        self.subsets = (
            CurveInputs(group.data, curve_subsets(group.data, [c.seed for c in group.configs], first.eval_samples))
            if first.eval_every
            else None
        )

    def report(self, phase: str, task: int, epoch: int, step: int, n_steps: int) -> None:
        if self.progress is not None:
            self.progress(
                Progress(
                    phase=phase,
                    group_size=self.group.n_runs,
                    task=task,
                    n_tasks=self.group.n_tasks,
                    epoch=epoch,
                    n_epochs=self.group.epochs,
                    step=step,
                    n_steps=n_steps,
                    elapsed_s=time.perf_counter() - self.started,
                )
            )

    def save(self, n_steps: int) -> None:
        """Write a checkpoint; one that cannot be written (full disk, a folder gone read-only) costs
        only itself: one warning line, and training goes on (the previous checkpoint stays)."""
        self.last_saved = time.monotonic()
        try:
            save_snapshot(self.checkpoint, self.st.summary(self.group, n_steps), self.st.snapshot())
        except OSError as exc:
            log.warning(
                "could not write a checkpoint in %s (%s); training goes on, an interruption now resumes from "
                "the previous checkpoint",
                self.checkpoint.directory,
                first_line(exc, limit=160),
            )
            return
        self.report("checkpoint", self.st.task, self.st.epoch, self.st.step, n_steps)

    def task_pool(self, task: int) -> torch.Tensor:
        """The rows task ``task`` trains on: (n,), or (R, n) where the method's differ per run."""
        g = self.group
        # joint: from the initial weights on tasks 0..task
        idx = g.data.train_task_idx
        pool = torch.cat(idx[: task + 1], dim=-1) if g.method.trains_on_seen_tasks else idx[task]
        rows = g.method.task_rows(self.st.context(g, task), pool)
        return pool if rows is None else rows

    def resume(self) -> None:
        """Continue from the group's checkpoint, if there is one."""
        g, st = self.group, self.st
        if self.checkpoint is None or (saved := load_snapshot(self.checkpoint, g.checkpoint_key)) is None:
            return
        st.restore(saved, g.device)
        if g.device.type == "cpu" and saved.get("threads"):
            # Train on with the thread count the checkpoint was computed with (whatever this process
            # or its executor chose), so the resumed results are those of an uninterrupted group.
            torch.set_num_threads(int(saved["threads"]))
        task_now = min(st.task, g.n_tasks - 1)
        self.report("resume", st.task, st.epoch, st.step, math.ceil(self.task_pool(task_now).shape[-1] / g.batch_size))

    def begin_task(self) -> _Task:
        g, st = self.group, self.st
        pool = self.task_pool(st.task)
        n_draws = g.method.replay_draws if st.task >= g.method.replay_from_task else 0
        task = _Task(st.task, pool, math.ceil(pool.shape[-1] / g.batch_size), n_draws)
        if not st.task_begun:
            if g.method.trains_on_seen_tasks:
                st.net = NetState(g.net, fresh(st.init_params, True), dict(st.init_bn))
            st.sums, st.task_begun = None, True
        self.task_clock = time.perf_counter()
        return task

    def train_epoch(self, task: _Task) -> None:
        """The epoch's draws (unless a checkpoint holds them), then its steps from ``st.step`` on."""
        g, st = self.group, self.st
        lr = g.lr(st.epoch, st.net.params)
        if st.draws is None:
            with self.phase("random plans (order, augmentation, buffer)"):
                st.seen_at_epoch_start = st.buffer.n_seen if st.buffer is not None else 0
                st.draws = draw_epoch(
                    st.rand,
                    task.pool,
                    augment=g.data.spec.augment,
                    buffer=st.buffer,
                    sizes=g.buffer_sizes,
                    batch_size=g.batch_size,
                    method=g.method,
                    train_y=g.data.train_y,
                    device=g.device,
                )
        report_every = max(1, task.n_steps // 50)
        for s in range(st.step, task.n_steps):
            if s % PLAN_CHUNK_STEPS == 0:
                self.plan_chunk(task, s)
            self.take_step(task, s, lr)
            st.step = s + 1
            self.evaluate_during(task)  # before a checkpoint: a resumed group has the point
            if (s + 1) % report_every == 0 or s + 1 == task.n_steps:
                self.report("train", task.index, st.epoch, s + 1, task.n_steps)
            if (
                self.checkpoint is not None
                and s + 1 < task.n_steps
                and time.monotonic() - self.last_saved >= self.checkpoint.every_s
            ):
                st.train_s[task.index] += time.perf_counter() - self.task_clock
                self.task_clock = time.perf_counter()
                self.save(task.n_steps)
        st.epoch, st.step, st.draws, st.plan, st.step_draws = st.epoch + 1, 0, None, None, None

    def plan_chunk(self, task: _Task, s: int) -> None:
        """The replayed rows and the method's draws of the chunk of steps from step ``s`` on."""
        g, st = self.group, self.st
        with self.phase("random plans (order, augmentation, buffer)"):
            chunk = min(PLAN_CHUNK_STEPS, task.n_steps - s)
            if task.n_draws:
                avail = replay_avail(
                    st.buffer, g.buffer_sizes, st.seen_at_epoch_start, s, chunk, g.batch_size, task.n, g.method
                )
                st.plan = replay_plan(st.rand, avail, g.minibatch_size, task.n_draws, g.data.spec.augment, g.device)
            st.step_draws = stacked_draws(
                [g.method.train_draws(r.method, chunk, task.n_draws * g.minibatch_size, g.options) for r in st.rand],
                g.device,
            )

    def take_step(self, task: _Task, s: int, lr: dict[str, torch.Tensor]) -> None:
        """Step ``s`` of the epoch: its batches (stream rows, then the planned replay rows), then the update."""
        g, st, data, in_chunk = self.group, self.st, self.group.data, s % PLAN_CHUNK_STEPS
        with self.phase("buffer sampling"):
            planned = st.plan.draw(st.buffer, in_chunk) if task.n_draws and st.buffer.holds_any() else None
        with self.phase("batch assembly and augmentation"):
            cols = slice(s * g.batch_size, min((s + 1) * g.batch_size, task.n))
            rows = st.draws.samples[:, cols]
            x_raw, y = data.train_x[rows], data.train_y[rows]
            aug = st.draws.aug[:, cols] if st.draws.aug is not None else None
            x, stream, replay = step_batches(data, x_raw, y, aug, planned, task.n_draws)
            if g.method.tracks_seen_classes:
                st.seen_classes = st.seen_classes | F.one_hot(y, data.n_classes).amax(dim=1).bool()
        step = Step(
            task=task.index,
            stream=stream,
            replay=replay,
            alpha=g.alpha,
            beta=g.beta,
            seen_classes=st.seen_classes,
            forward=StepForward(st.net, x, (stream, *replay)),
            loss=g.loss_layer,
            state=st.method_state,
            replay_slots=planned.slots(task.n_draws) if planned is not None else (),
            draws=step_slice(st.step_draws, in_chunk),
            options=g.options,
            net=g.net,
            params=st.net.params,
            features=st.net.features,
        )
        names, terms, new_state = train_step(
            g.method,
            st.net,
            step,
            lr=lr,
            divergence=st.divergence,
            step_in_task=st.epoch * task.n_steps + s,
            phase=self.phase,
            buffer=st.buffer,
            slots=st.draws.slots[:, cols] if st.draws.slots is not None else None,
            x_raw=x_raw,
            post_step_logits=g.first.der_logits == "post",
        )
        if new_state:
            st.method_state = {**st.method_state, **new_state}
        st.names, st.sums = names, terms if st.sums is None else st.sums + terms

    def evaluate_during(self, task: _Task) -> None:
        """Every ``eval_every`` steps of the task (and after its last), the accuracy on each seen task's
        subset: no random draw, eval mode, so the training is that of a group without it."""
        g, st, every = self.group, self.st, self.group.first.eval_every
        done, total = st.epoch * task.n_steps + st.step, g.epochs * task.n_steps
        if not every or (done % every and done != total):
            return
        t0 = time.perf_counter()
        with self.phase("evaluation during training"):
            point = evaluate_curve(
                g.net,
                st.net.params,
                st.net.buffers,
                g.data,
                self.subsets,
                step=st.steps_before_task + done,
                task=task.index,
                classifier=g.method.classifier(st.context(g, task.index)),
            )
        st.curve.append(point)
        spent = time.perf_counter() - t0  # evaluation time, not training time
        st.eval_s[task.index] += spent
        self.task_clock += spent

    def end_task(self, task: _Task) -> None:
        g, st = self.group, self.st
        if st.end_pass < 0:  # not yet done (a group resumed inside the end passes has done it)
            st.loss_means.append(dict(zip(st.names, (st.sums / (task.n_steps * g.epochs)).cpu().numpy())))
            with self.phase("end of task"):
                ended = g.method.end_task(st.context(g, task.index))
                if ended is not None:
                    st.method_state = dict(ended.state)
                    if ended.memory is not None:
                        st.buffer.replace(ended.memory)
                    if ended.params is not None:  # WA's aligned head: the network trains on from it
                        st.net = NetState(g.net, fresh(ended.params, True), st.net.buffers)
            st.end_pass = 0
        self.end_passes(task)
        if g.method.refits:
            with self.phase("refit"):
                st.net, st.loss_means[-1] = refit(g, st, task.index, g.epochs * task.n_steps, self.phase)
        st.train_s[task.index] += time.perf_counter() - self.task_clock

    def end_passes(self, task: _Task) -> None:
        """The method's end-of-task passes (``Method.end_passes``: BiC's bias stage) from ``st.end_pass``
        on, each a new method state; a checkpoint may be taken between two passes, like between steps."""
        g, st = self.group, self.st
        n = g.method.end_passes(g.options)
        report_every = max(1, n // 10)
        for i in range(st.end_pass, n):
            with self.phase("end of task"):
                st.method_state = dict(g.method.end_pass(st.context(g, task.index), i))
            st.end_pass = i + 1
            if (i + 1) % report_every == 0 or i + 1 == n:
                self.report("end_of_task", task.index, g.epochs - 1, task.n_steps, task.n_steps)
            if (
                self.checkpoint is not None
                and i + 1 < n
                and time.monotonic() - self.last_saved >= self.checkpoint.every_s
            ):
                st.train_s[task.index] += time.perf_counter() - self.task_clock
                self.task_clock = time.perf_counter()
                self.save(task.n_steps)

    def evaluate(self, task: _Task) -> None:
        g, st = self.group, self.st
        self.report("evaluate", task.index, g.epochs - 1, task.n_steps, task.n_steps)
        t1 = time.perf_counter()
        with self.phase("evaluation"):
            classifier = g.method.classifier(st.context(g, task.index))
            st.evaluations.append(
                evaluate(
                    g.net, st.net.params, st.net.buffers, g.data, g.n_runs, after_task=task.index, classifier=classifier
                )
            )
            if g.data.val_task_idx is not None:  # each run's held-out training rows: accuracy only
                st.val_evaluations.append(
                    evaluate_validation(
                        g.net, st.net.params, st.net.buffers, g.data, after_task=task.index, classifier=classifier
                    )
                )
        st.eval_s[task.index] += time.perf_counter() - t1
        st.steps_before_task += g.epochs * task.n_steps
        st.task, st.epoch, st.step, st.task_begun, st.end_pass = task.index + 1, 0, 0, False, -1
        if self.checkpoint is not None:
            self.save(task.n_steps)
        self.report("task_done", task.index, g.epochs - 1, task.n_steps, task.n_steps)


def _results(group: Group, st: GroupState) -> list[RunResult]:
    device = str(group.device)
    versions = {**software_versions(), **numeric_environment(device)}  # what the numbers depend on
    evaluations = st.evaluations
    out = []
    for r, (cfg, diverged) in enumerate(zip(group.configs, st.divergence.per_run())):
        out.append(
            RunResult(
                config=cfg,
                class_il=np.stack([e.class_il[r] for e in evaluations]),
                task_il=np.stack([e.task_il[r] for e in evaluations]),
                class_il_correct=np.stack([e.class_il_correct[r] for e in evaluations]),
                task_il_correct=np.stack([e.task_il_correct[r] for e in evaluations]),
                test_counts=evaluations[0].test_counts,
                per_class_accuracy=np.stack([e.per_class_accuracy[r] for e in evaluations]),
                confidence=np.stack([e.confidence[r] for e in evaluations]),
                train_loss={k: np.array([m[k][r] for m in st.loss_means]) for k in st.loss_means[0]},
                train_s=st.train_s.copy(),
                eval_s=st.eval_s.copy(),
                group_size=group.n_runs,
                device=device,
                versions=versions,
                class_names=group.data.class_names,
                class_il_seen=np.stack([e.class_il_seen[r] for e in evaluations]),
                class_il_seen_correct=np.stack([e.class_il_seen_correct[r] for e in evaluations]),
                divergence=diverged,
                histograms={k: np.stack([e.histograms[k][r] for e in evaluations]) for k in evaluations[0].histograms},
                validation=_split_matrices(st.val_evaluations, r),
                plasticity=_plasticity(evaluations, r),
                curve=_curve(st.curve, r, group.n_tasks, curve_split(group.data)) if st.curve else None,
            )
        )
    return out


def _split_matrices(evaluations: list, r: int) -> SplitMatrices | None:
    """Run ``r``'s matrices on the validation split (``None`` where the group has none)."""
    if not evaluations:
        return None
    return SplitMatrices(
        class_il_correct=np.stack([e.class_il_correct[r] for e in evaluations]),
        task_il_correct=np.stack([e.task_il_correct[r] for e in evaluations]),
        class_il_seen_correct=np.stack([e.class_il_seen_correct[r] for e in evaluations]),
        counts=evaluations[0].test_counts,
    )


def _curve(points: list, r: int, n_tasks: int, split: str) -> AccuracyCurve:
    """Run ``r``'s evaluations during training: one row per point, a column per task (0 counts: not seen yet)."""
    shape = (len(points), n_tasks)
    cil, til, counts = np.zeros(shape, np.int64), np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    for i, p in enumerate(points):
        seen = p.task + 1
        cil[i, :seen], til[i, :seen], counts[i, :seen] = p.class_il_correct[r], p.task_il_correct[r], p.counts
    return AccuracyCurve(
        split=split,
        steps=np.array([p.step for p in points], dtype=np.int64),
        tasks=np.array([p.task for p in points], dtype=np.int64),
        class_il_correct=cil,
        task_il_correct=til,
        counts=counts,
    )


def _plasticity(evaluations: list, r: int) -> dict[str, np.ndarray]:
    """Run ``r``'s plasticity measures after each task; none where an evaluation lacks them (one
    restored from a checkpoint of a clbench that did not measure them)."""
    if not all(e.plasticity for e in evaluations):
        return {}
    return {k: np.array([e.plasticity[k][r] for e in evaluations]) for k in evaluations[0].plasticity}


__all__ = ["train_group"]
