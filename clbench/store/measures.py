"""Querying what the registry keeps per run beside its accuracy matrices: the confidence histograms,
the evaluations during training (accuracy curves) and the plasticity measures after each task."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sqlalchemy import select

from clbench.store.connection import in_chunks
from clbench.store.queries import Db, with_store
from clbench.store.rows import histogram_arrays, histogram_rows
from clbench.store.schema import Accuracy, AccuracyCurvePoint, TaskPlasticity


def load_histograms(db: Db, run_ids: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """The confidence histograms of ``run_ids``: run_id -> kind -> counts ``(T, T, bins)``.

    ``counts[i, j, b]``: after training task i, how many test samples of task j had that softmax
    probability (kind ``true_class``: of their true class; ``max``: the largest) in bin b, the
    bins being ``clbench.runs.results.HISTOGRAM_EDGES`` (equal bins over [0, 1]). Runs without
    histograms (unfinished, or computed before clbench recorded them) are absent.
    """

    rows = with_store(db, lambda store: store.transaction(lambda conn: histogram_rows(conn, run_ids)))
    return histogram_arrays(rows)


CURVE_COLUMNS = (
    "run_id",
    "split",
    "step",
    "task_trained",
    "on_task",
    "n_correct",
    "n_correct_task_il",
    "n_total",
    "class_il",
    "task_il",
)


def load_curves(db: Db, run_ids: Sequence[str]) -> pd.DataFrame:
    """The evaluations during training of ``run_ids`` (runs trained with ``--eval-every``), long format
    (``CURVE_COLUMNS``): one row per evaluation and seen task, ``step`` the global step (every epoch of
    every task counted), ``task_trained`` the task being trained, correct answers on ``n_total`` samples
    of task ``on_task``'s fixed subset, and the accuracies (%) ``class_il`` and ``task_il``. Runs without
    curves are absent. ``clbench.store.rows.curve_arrays`` turns one run's rows into an ``AccuracyCurve``."""

    def query(conn):
        rows = []
        for chunk in in_chunks(list(run_ids)):
            stmt = select(AccuracyCurvePoint.__table__).where(AccuracyCurvePoint.run_id.in_(chunk))
            rows += conn.execute(stmt).all()
        return rows

    rows = with_store(db, lambda store: store.transaction(query))
    df = pd.DataFrame.from_records([r._asdict() for r in rows], columns=list(CURVE_COLUMNS[:-2]))
    df = df.sort_values(["run_id", "step", "on_task"], kind="stable").reset_index(drop=True)
    df["class_il"] = 100.0 * df["n_correct"].astype("float64") / df["n_total"]
    df["task_il"] = 100.0 * df["n_correct_task_il"].astype("float64") / df["n_total"]
    return df


PLASTICITY_COLUMNS = (
    "run_id",
    "after_task",
    "diagonal_class_il",
    "diagonal_task_il",
    "effective_rank",
    "dead_fraction",
)


def load_plasticity(db: Db, run_ids: Sequence[str]) -> pd.DataFrame:
    """Plasticity beside stability after each task of ``run_ids`` (``PLASTICITY_COLUMNS``, long format):
    the diagonal accuracies A[i][i] (%, class-IL and task-IL) and the effective rank and dead-unit
    fraction of the penultimate features (``clbench.metrics.PLASTICITY_DEFINITIONS``; NaN for runs
    stored before clbench measured them)."""

    def query(conn):
        diag, measures = [], []
        for chunk in in_chunks(list(run_ids)):
            stmt = select(Accuracy.run_id, Accuracy.setting, Accuracy.after_task, Accuracy.accuracy).where(
                Accuracy.run_id.in_(chunk), Accuracy.after_task == Accuracy.on_task
            )
            diag += conn.execute(stmt).all()
            measures += conn.execute(select(TaskPlasticity.__table__).where(TaskPlasticity.run_id.in_(chunk))).all()
        return diag, measures

    diag, measures = with_store(db, lambda store: store.transaction(query))
    cells: dict[tuple[str, int], dict] = {}
    for r in diag:
        if r.setting in ("class_il", "task_il"):
            cells.setdefault((r.run_id, r.after_task), {})[f"diagonal_{r.setting}"] = r.accuracy
    for r in measures:
        cell = cells.setdefault((r.run_id, r.after_task), {})
        cell.update(effective_rank=r.effective_rank, dead_fraction=r.dead_fraction)
    records = [{"run_id": rid, "after_task": t, **values} for (rid, t), values in sorted(cells.items())]
    df = pd.DataFrame.from_records(records, columns=list(PLASTICITY_COLUMNS))
    return df.astype({k: "float64" for k in PLASTICITY_COLUMNS[2:]})
