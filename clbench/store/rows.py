"""Runs and their results as the registry's table rows, and back.

A :class:`RunResult` is written as one ``runs`` row (:func:`finished_run_columns`) and rows of each of
``RESULT_TABLES`` (:func:`result_rows`); :func:`read_result` turns them back into the same
:class:`RunResult`. Non-finite numbers are stored as NULL (JSON has no NaN or infinity, and
PostgreSQL rejects them) and read back as NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from clbench.runs.resolved import ResolvedConfig
from clbench.runs.results import Divergence, RunResult, SplitMatrices
from clbench.store.connection import in_chunks
from clbench.store.ownership import Owner
from clbench.store.schema import (
    SETTINGS,
    Accuracy,
    ClassAccuracy,
    Confidence,
    ConfidenceHistogram,
    TaskLoss,
    TaskPlasticity,
    TaskTiming,
)
from clbench.version import RESULTS_VERSION


def finite_or_none(values: Iterable[float]) -> list[float | None]:
    # JSON has no NaN/inf (PostgreSQL rejects them): store null, read back as NaN.
    return [float(v) if math.isfinite(v) else None for v in values]


def _nan_if_none(values: Iterable[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


# ---------------------------------------------------------------------------------------------
# Writing


def run_columns(cfg: ResolvedConfig, status: str, owner: Owner, now: datetime) -> dict:
    """The ``runs`` row of a run of ``cfg`` that ``owner`` creates at ``now`` with ``status``."""
    return {
        "run_id": cfg.identity(),
        "config_hash": cfg.config_hash(),
        "method": cfg.method,
        "benchmark": cfg.benchmark,
        "backbone": cfg.backbone,
        "buffer_size": cfg.buffer_size,
        "mask": cfg.mask.label,
        "mask_on": cfg.mask.on,
        "seed": cfg.seed,
        "class_order": cfg.class_order,
        "config": cfg.to_dict(),
        "status": status,
        "created_at": now,
        "host": owner.host,
        "pid": owner.pid,
        "process_start": owner.process_start,
        "heartbeat_at": now,
        "results_version": RESULTS_VERSION,
    }


def finished_run_columns(res: RunResult, owner: Owner, now: datetime) -> dict:
    """The ``runs`` row of a run that ``owner`` finished at ``now``: ``finished``, or ``diverged`` with
    where it happened and its last finite loss."""
    div = res.divergence
    return {
        **run_columns(res.config, "diverged" if div is not None else "finished", owner, now),
        "finished_at": now,
        "device": res.device,
        "versions": dict(res.versions),
        "class_names": list(res.class_names),
        "group_size": res.group_size,
        "wall_s": res.wall_s,
        "error": None,
        "job_id": None,
        "diverged_task": None if div is None else div.task,
        "diverged_step": None if div is None else div.step,
        "last_finite_loss": None if div is None else finite_or_none([div.last_finite_loss])[0],
    }


def _accuracy_rows(rid: str, split: str, res: RunResult | SplitMatrices, counts: np.ndarray) -> list[dict]:
    """The ``accuracy`` rows of one split's matrices (a result's test matrices, or its validation ones)."""
    n_tasks = res.class_il.shape[0]
    return [
        {
            "run_id": rid,
            "split": split,
            "setting": setting,
            "after_task": i,
            "on_task": j,
            "accuracy": float(mat[i, j]),
            "n_correct": int(correct[i, j]),
            "n_total": int(counts[j]),
        }
        for setting, mat, correct in (
            ("class_il", res.class_il, res.class_il_correct),
            ("task_il", res.task_il, res.task_il_correct),
            ("class_il_seen", res.class_il_seen, res.class_il_seen_correct),
        )
        if mat is not None
        for i in range(n_tasks)
        for j in range(n_tasks)
    ]


def result_rows(res: RunResult) -> dict[type, list[dict]]:
    """The rows of each result table (``RESULT_TABLES``) that hold ``res``."""
    rid = res.run_id
    n_tasks = res.class_il.shape[0]
    accuracy = _accuracy_rows(rid, "test", res, res.test_counts)
    if res.validation is not None:
        accuracy += _accuracy_rows(rid, "validation", res.validation, res.validation.counts)
    class_accuracy = [
        {"run_id": rid, "after_task": i, "class_index": k, "accuracy": v}
        for i in range(n_tasks)
        for k, v in enumerate(finite_or_none(res.per_class_accuracy[i]))
    ]
    confidence = [
        {"run_id": rid, "after_task": i, "true_class": k, "probabilities": finite_or_none(res.confidence[i, k])}
        for i in range(n_tasks)
        for k in range(res.confidence.shape[1])
    ]
    losses = [
        {"run_id": rid, "task": i, "term": term, "loss": finite_or_none([values[i]])[0]}
        for term, values in res.train_loss.items()
        for i in range(len(values))
    ]
    timings = [
        {"run_id": rid, "task": i, "train_s": float(res.train_s[i]), "eval_s": float(res.eval_s[i])}
        for i in range(n_tasks)
    ]
    histograms = [
        {"run_id": rid, "after_task": i, "on_task": j, "kind": kind, "counts": [int(c) for c in counts[i, j]]}
        for kind, counts in res.histograms.items()
        for i in range(counts.shape[0])
        for j in range(counts.shape[1])
    ]
    plasticity = res.plasticity
    plasticity_rows = [
        {
            "run_id": rid,
            "after_task": i,
            **{k: finite_or_none([plasticity[k][i]])[0] for k in ("effective_rank", "dead_fraction")},
        }
        for i in range(len(plasticity.get("effective_rank", ())))
    ]
    return {
        TaskPlasticity: plasticity_rows,
        Accuracy: accuracy,
        ClassAccuracy: class_accuracy,
        Confidence: confidence,
        TaskLoss: losses,
        TaskTiming: timings,
        ConfidenceHistogram: histograms,
    }


# ---------------------------------------------------------------------------------------------
# Reading


def read_result(run: Mapping[str, Any], rows: Mapping[type, Sequence]) -> RunResult:
    """The :class:`RunResult` of a finished or diverged ``runs`` row ``run`` and its rows of each result
    table (``rows``: table -> its rows of this run), exactly as it was saved."""
    every, cls_acc, conf = rows[Accuracy], rows[ClassAccuracy], rows[Confidence]
    acc = [r for r in every if getattr(r, "split", "test") == "test"]
    held = [r for r in every if getattr(r, "split", "test") == "validation"]
    n_tasks = 1 + max(r.after_task for r in acc)
    n_classes = 1 + max(r.class_index for r in cls_acc)
    mats, correct, test_counts = _accuracy_arrays(acc, n_tasks)
    per_class = np.full((n_tasks, n_classes), np.nan)
    for r in cls_acc:
        per_class[r.after_task, r.class_index] = np.nan if r.accuracy is None else r.accuracy
    confidence = np.full((n_tasks, n_classes, n_classes), np.nan)
    for r in conf:
        confidence[r.after_task, r.true_class] = _nan_if_none(r.probabilities)
    terms = sorted({r.term for r in rows[TaskLoss]})
    train_loss = {t: np.full(n_tasks, np.nan) for t in terms}
    for r in rows[TaskLoss]:
        train_loss[r.term][r.task] = np.nan if r.loss is None else r.loss
    train_s, eval_s = np.zeros(n_tasks), np.zeros(n_tasks)
    for r in rows[TaskTiming]:
        train_s[r.task], eval_s[r.task] = r.train_s, r.eval_s
    return RunResult(
        config=ResolvedConfig.from_dict(run["config"]),
        class_il=mats["class_il"],
        task_il=mats["task_il"],
        class_il_correct=correct["class_il"],
        task_il_correct=correct["task_il"],
        test_counts=test_counts,
        per_class_accuracy=per_class,
        confidence=confidence,
        train_loss=train_loss,
        train_s=train_s,
        eval_s=eval_s,
        group_size=int(run["group_size"]),
        device=run["device"],
        versions=dict(run["versions"] or {}),
        class_names=tuple(run["class_names"] or ()),
        class_il_seen=mats.get("class_il_seen"),
        class_il_seen_correct=correct.get("class_il_seen"),
        divergence=None
        if run["status"] != "diverged"
        else Divergence(
            run["diverged_task"],
            run["diverged_step"],
            math.nan if run["last_finite_loss"] is None else run["last_finite_loss"],
        ),
        histograms=histogram_arrays(rows[ConfidenceHistogram]).get(run["run_id"], {}),
        validation=_split_matrices(held, n_tasks),
        plasticity=_plasticity_arrays(rows.get(TaskPlasticity, ()), n_tasks),
    )


def _split_matrices(acc: Sequence, n_tasks: int) -> SplitMatrices | None:
    """A split's ``accuracy`` rows of one run -> its matrices (None: no rows, the run has no such split)."""
    if not acc:
        return None
    _, correct, counts = _accuracy_arrays(acc, n_tasks)
    return SplitMatrices(correct["class_il"], correct["task_il"], correct["class_il_seen"], counts)


def _plasticity_arrays(rows: Sequence, n_tasks: int) -> dict[str, np.ndarray]:
    """``task_plasticity`` rows of one run -> measure -> (T,) (empty for a run without them)."""
    if not rows:
        return {}
    out = {k: np.full(n_tasks, np.nan) for k in ("effective_rank", "dead_fraction")}
    for r in rows:
        for k in out:
            value = getattr(r, k)
            out[k][r.after_task] = np.nan if value is None else value
    return out


def _accuracy_arrays(acc: Sequence, n_tasks: int) -> tuple[dict, dict, np.ndarray]:
    """``accuracy`` rows of one run -> setting -> accuracy matrix, setting -> correct counts, and the
    number of test samples of each task (only the settings the run has)."""
    present = {r.setting for r in acc}
    mats = {name: np.zeros((n_tasks, n_tasks)) for name in SETTINGS if name in present}
    correct = {name: np.zeros((n_tasks, n_tasks), dtype=np.int64) for name in SETTINGS if name in present}
    test_counts = np.zeros(n_tasks, dtype=np.int64)
    for r in acc:
        mats[r.setting][r.after_task, r.on_task] = r.accuracy
        correct[r.setting][r.after_task, r.on_task] = r.n_correct
        test_counts[r.on_task] = r.n_total
    return mats, correct, test_counts


def histogram_rows(conn, run_ids: Sequence[str]) -> list:
    """The ``confidence_histograms`` rows of ``run_ids``."""
    rows = []
    for chunk in in_chunks(list(run_ids)):
        rows += conn.execute(select(ConfidenceHistogram.__table__).where(ConfidenceHistogram.run_id.in_(chunk))).all()
    return rows


def histogram_arrays(rows) -> dict[str, dict[str, np.ndarray]]:
    """``confidence_histograms`` rows -> run_id -> kind -> (T, T, bins) counts."""
    by_run: dict[str, list] = {}
    for r in rows:
        by_run.setdefault(r.run_id, []).append(r)
    out: dict[str, dict[str, np.ndarray]] = {}
    for rid, run_rows in by_run.items():
        n_tasks = 1 + max(max(r.after_task, r.on_task) for r in run_rows)
        n_bins = len(run_rows[0].counts)
        arrays = {kind: np.zeros((n_tasks, n_tasks, n_bins), dtype=np.int64) for kind in {r.kind for r in run_rows}}
        for r in run_rows:
            arrays[r.kind][r.after_task, r.on_task] = r.counts
        out[rid] = arrays
    return out
