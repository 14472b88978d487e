"""Querying the registry: runs as pandas DataFrames, and summaries over seeds.

``load_runs`` is what ``clbench runs``, ``clbench export`` (``clbench.store.exports``) and the reports
stand on: one row per run, with the metrics computed from the stored accuracy matrices (the matrices
are the record; ``clbench.metrics`` defines what is computed from them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from sqlalchemy import literal_column, select, text
from sqlalchemy.engine import URL

from clbench.metrics import summarize
from clbench.runs.results import CLASS_IL_CONVENTIONS
from clbench.store.connection import in_chunks
from clbench.store.listing import EFFECTIVE_STATUS_SQL, ORDER_SQL, as_list, check_methods, method_labels, run_conditions
from clbench.store.opening import open_store
from clbench.store.ownership import shown_status
from clbench.store.schema import (
    SETTINGS,
    SPLITS,
    Accuracy,
    Run,
    RunExperiment,
)
from clbench.store.store import Store

# The columns of ``clbench export`` (one row per run), in this order.
EXPORT_COLUMNS = (
    "run_id",
    "experiment",
    "method",
    "dataset",
    "backbone",
    "buffer_size",
    "mask",
    "mask_on",
    "seed",
    "status",
    "faa_class_il",
    "faa_task_il",
    "forgetting_class_il",
    "forgetting_task_il",
    "bwt_class_il",
    "wall_s",
    "config_hash",
    "class_order",  # 0: the benchmark's class order; K > 0: the permutation drawn from K
)
# More columns of ``load_runs`` after those: the rest of the metrics and of the config, and the record.
EXTRA_METRICS = ("bwt_task_il", "forgetting_mammoth_class_il", "forgetting_mammoth_task_il")
HYPERPARAMETERS = ("epochs", "batch_size", "minibatch_size", "lr", "alpha", "beta")
RECORD_COLUMNS = (
    "group_size",
    "device",
    "host",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "results_version",
    "diverged_task",
    "diverged_step",
    "last_finite_loss",
    "config",
)
MATRIX_COLUMNS = ("run_id", "setting", "after_task", "on_task", "accuracy")
SUMMARY_METRICS = ("faa_class_il", "faa_task_il", "forgetting_class_il", "forgetting_task_il")

Db = Store | str | os.PathLike | URL | None
T = TypeVar("T")


def with_store(db: Db, work: Callable[[Store], T]) -> T:
    if isinstance(db, Store):
        return work(db)
    with open_store(db, readonly=True) as store:
        return work(store)


def _run_filters(**filters) -> list:
    """SQL conditions for the filters (:func:`clbench.store.listing.run_conditions`, the one place they
    are written); each filter takes one value or a list (any of them)."""
    return [text(sql).bindparams(**params) for sql, params in run_conditions(**filters)]


def _check_methods(conn, method) -> None:
    """An unknown method in a filter is an error (:func:`clbench.store.listing.check_methods`)."""
    check_methods(method, lambda: conn.execute(select(Run.method).distinct()).scalars())


def effective_status():
    """The status a run is listed with (SQL): its stored status, or ``stale`` when an older engine
    (``results_version`` below ``RESULTS_VERSION``) computed it: its numbers may differ from what
    this clbench computes, so it is never reused or reported unless asked for."""
    return literal_column(EFFECTIVE_STATUS_SQL)


def _accuracy_matrices(conn, run_ids: Sequence[str], split: str = "test") -> dict[str, dict[str, np.ndarray]]:
    """run_id -> setting -> the T x T accuracy matrix on ``split`` (runs without that split: absent)."""
    cells: dict[str, list] = {}
    for chunk in in_chunks(list(run_ids)):
        stmt = select(Accuracy.run_id, Accuracy.setting, Accuracy.after_task, Accuracy.on_task, Accuracy.accuracy)
        for row in conn.execute(stmt.where(Accuracy.run_id.in_(chunk), Accuracy.split == split)):
            cells.setdefault(row.run_id, []).append(row)
    out = {}
    for rid, rows in cells.items():
        n = 1 + max(r.after_task for r in rows)
        mats = {s: np.full((n, n), np.nan) for s in SETTINGS}
        for r in rows:
            mats[r.setting][r.after_task, r.on_task] = r.accuracy
        out[rid] = mats
    return out


def load_runs(
    db: Db = None,
    *,
    method: str | Sequence[str] | None = None,
    dataset: str | Sequence[str] | None = None,
    mask: str | float | Sequence[str | float] | None = None,
    mask_on: str | Sequence[str] | None = None,
    buffer: int | Sequence[int] | None = None,
    seed: int | Sequence[int] | None = None,
    status: str | Sequence[str] | None = None,
    experiment: str | Sequence[str] | None = None,
    run_id: str | Sequence[str] | None = None,
    class_il: str = "all",
    split: str = "test",
    class_order: int | Sequence[int] | None = None,
) -> pd.DataFrame:
    """One row per run in ``db`` (a :class:`Store`, URL or path; default ``$CLBENCH_DB`` or
    ``results.db``) matching every given filter; a filter is one value or a list of values.

    ``dataset`` takes benchmark or dataset names (``seq-fmnist`` or ``fmnist``), ``mask`` mask
    values or their text (``"none"``, ``"-inf"``, ``-5``). Columns: ``EXPORT_COLUMNS``, then
    ``EXTRA_METRICS``, ``HYPERPARAMETERS`` and ``RECORD_COLUMNS`` (``config`` is the resolved
    config as a dict). ``status`` is the effective status (``stale`` for runs of an older engine,
    see :func:`effective_status`). Metrics are NaN for runs without trusted results (not finished,
    e.g. ``diverged``), but computed for ``stale`` runs that finished. ``experiment`` holds the
    run's experiment labels, comma-separated. ``class_il`` is the class-IL convention the class-IL
    metrics are computed with: ``all`` (argmax over every class) or ``seen`` (over the classes seen
    so far; NaN for runs stored before clbench measured it); ``df.attrs["class_il"]`` records it.
    ``split`` is the data the metrics are measured on: ``test`` or ``validation`` (the training rows a
    run held out; NaN for runs without a validation split); ``df.attrs["split"]`` records it.
    ``class_order`` filters by class order (0: the benchmark's; K > 0: the permutation drawn from K).
    """
    check_split(split)
    if class_il not in CLASS_IL_CONVENTIONS:
        raise ValueError(f"invalid class-IL convention {class_il!r}: valid are {', '.join(CLASS_IL_CONVENTIONS)}")
    conds = _run_filters(
        method=method,
        dataset=dataset,
        mask=mask,
        mask_on=mask_on,
        buffer=buffer,
        seed=seed,
        status=status,
        experiment=experiment,
        run_id=run_id,
        class_order=class_order,
    )
    rows, labels, matrices = with_store(
        db, lambda store: store.transaction(lambda conn: _query_runs(conn, conds, method, split))
    )
    now = datetime.now(UTC)
    shown = {r["run_id"]: shown_status({**r, "status": r["effective_status"]}, now) for r in rows}
    if (wanted := as_list(status)) is not None:
        rows = [r for r in rows if shown[r["run_id"]] in wanted]
    df = _runs_frame(rows, labels, matrices, shown, class_il)
    df.attrs["split"] = split
    return df


def _query_runs(
    conn, conds: list, method, split: str = "test"
) -> tuple[list, dict[str, list[str]], dict[str, dict[str, np.ndarray]]]:
    """The ``runs`` rows matching ``conds`` (with their ``effective_status``), their experiment labels
    and the accuracy matrices of the finished ones."""
    _check_methods(conn, method)
    stmt = select(Run.__table__, effective_status().label("effective_status")).where(*conds).order_by(text(ORDER_SQL))
    rows = conn.execute(stmt).mappings().all()
    ids = [r["run_id"] for r in rows]
    labels: dict[str, list[str]] = {}
    for chunk in in_chunks(ids):
        stmt = select(RunExperiment.run_id, RunExperiment.experiment).where(RunExperiment.run_id.in_(chunk))
        for rid, label in conn.execute(stmt.order_by(RunExperiment.experiment)):
            labels.setdefault(rid, []).append(label)
    # Metrics for runs with trusted results, and for stale ones (they had them once).
    finished = [r["run_id"] for r in rows if r["status"] == "finished"]
    return rows, labels, _accuracy_matrices(conn, finished, split)


def _runs_frame(
    rows: Sequence[Mapping],
    labels: Mapping[str, list[str]],
    matrices: Mapping[str, dict],
    shown: Mapping[str, str],
    class_il: str,
) -> pd.DataFrame:
    """The :func:`load_runs` frame of ``rows``, with the status each is ``shown`` with."""
    nan_metrics = dict.fromkeys(SUMMARY_METRICS + ("bwt_class_il",) + EXTRA_METRICS, np.nan)
    records = []
    for r in rows:
        mats = matrices.get(r["run_id"])
        class_il_matrix = "class_il" if class_il == "all" else "class_il_seen"
        metrics = summarize(mats[class_il_matrix], mats["task_il"]) if mats else nan_metrics
        cfg = r["config"]
        records.append(
            {
                "run_id": r["run_id"],
                "experiment": ",".join(labels.get(r["run_id"], [])) or None,
                "method": r["method"],
                "dataset": r["benchmark"],
                "backbone": r["backbone"],
                "buffer_size": r["buffer_size"],
                "mask": r["mask"],
                "mask_on": r["mask_on"],
                "seed": r["seed"],
                "status": shown[r["run_id"]],
                **{k: metrics[k] for k in nan_metrics},
                "wall_s": r["wall_s"],
                "config_hash": r["config_hash"],
                "class_order": int(r.get("class_order") or 0),
                **{k: cfg.get(k) for k in HYPERPARAMETERS},
                **{k: r[k] for k in RECORD_COLUMNS if k != "config"},
                "config": cfg,
            }
        )
    columns = list(EXPORT_COLUMNS + EXTRA_METRICS + HYPERPARAMETERS + RECORD_COLUMNS)
    df = pd.DataFrame.from_records(method_labels(records), columns=columns)
    for when in ("created_at", "started_at", "finished_at"):
        # UTC throughout (SQLite returns the stored UTC times without their zone).
        df[when] = pd.to_datetime(df[when], utc=True)
    df = df.astype({"wall_s": "float64", "last_finite_loss": "float64", **{k: "float64" for k in nan_metrics}})
    df.attrs["class_il"] = class_il
    return df


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"invalid split {split!r}: valid are {', '.join(SPLITS)}")
    return split


def load_matrices(db: Db = None, split: str = "test", **filters: Any) -> pd.DataFrame:
    """The accuracy matrices on ``split`` of the finished runs matching ``filters`` (as in
    :func:`load_runs`) in long format: run_id, setting, after_task, on_task, accuracy (%), n_correct, n_total."""
    check_split(split)
    conds = _run_filters(**filters) + [Run.status == "finished"]  # stale ones too, when asked for

    def work(store: Store):
        def query(conn):
            _check_methods(conn, filters.get("method"))
            ids = select(Run.run_id).where(*conds)
            columns = [getattr(Accuracy, c) for c in (*MATRIX_COLUMNS, "n_correct", "n_total")]
            stmt = (
                select(*columns)
                .where(Accuracy.run_id.in_(ids), Accuracy.split == split)
                .order_by(Accuracy.run_id, Accuracy.setting, Accuracy.after_task, Accuracy.on_task)
            )
            return conn.execute(stmt).all()

        return store.transaction(query)

    rows = with_store(db, work)
    columns = list(MATRIX_COLUMNS) + ["n_correct", "n_total"]
    return pd.DataFrame.from_records([tuple(r) for r in rows], columns=columns)


def summarize_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation (over seeds, ddof=1) of the headline metrics per config.

    ``runs`` is a :func:`load_runs` frame; only finished runs count. One row per ``config_hash``
    with a finished or diverged run, in order of first appearance, with the config's columns,
    ``n_seeds`` (finished runs), ``n_diverged`` (diverged runs: excluded from the means, and named
    by :func:`exclusion_note`) and ``<metric>_mean`` / ``<metric>_std`` for ``SUMMARY_METRICS``.
    """
    done = runs[runs["status"].isin(("finished", "diverged"))]
    keys = [
        "config_hash",
        "method",
        "dataset",
        "backbone",
        "buffer_size",
        "mask",
        "mask_on",
        *HYPERPARAMETERS,
        "class_order",
    ]
    rows = []
    for _, cell in done.groupby("config_hash", sort=False):
        finished = cell[cell["status"] == "finished"]
        row = {k: cell[k].iloc[0] for k in keys}
        row["n_seeds"] = len(finished)
        row["n_diverged"] = int((cell["status"] == "diverged").sum())
        for m in SUMMARY_METRICS:
            row[f"{m}_mean"] = finished[m].mean() if len(finished) else np.nan
            row[f"{m}_std"] = finished[m].std(ddof=1) if len(finished) > 1 else np.nan
        rows.append(row)
    columns = keys + ["n_seeds", "n_diverged"] + [f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std")]
    return pd.DataFrame.from_records(rows, columns=columns)


def exclusion_note(n_diverged: int, n_seeds: int) -> str:
    """``"1 of 10 seeds diverged and is excluded"`` (empty when none diverged)."""
    if not n_diverged:
        return ""
    total = n_diverged + n_seeds
    verb = "is" if n_diverged == 1 else "are"
    return f"{n_diverged} of {total} seed{'s' if total != 1 else ''} diverged and {verb} excluded"
