"""The rows ``clbench runs`` prints, read without pandas, and from an SQLite file without SQLAlchemy.

:func:`list_runs` is :func:`clbench.store.queries.load_runs` cut to what a listing shows (one
:class:`RunListing` per run, its final average accuracies instead of every metric): on an SQLite file
of this schema version it reads the file through the standard library's ``sqlite3`` (read-only), and
of the accuracy matrices only their last rows, which is all a final average accuracy is made of; on a
database server, or a file that needs a migration or is damaged, it asks ``load_runs``, whose errors
say why. Both read with the same SQL: the filters (:func:`run_conditions`), the effective status and
the order here are ``load_runs``' own.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clbench.data.specs import benchmark_name
from clbench.methods import METHODS
from clbench.runs.mask import MASK_ON_CHOICES, format_mask_value, parse_mask_value
from clbench.store.basics import (
    ACTIVE_STATUSES,
    APPLICATION,
    SCHEMA_VERSION,
    SPLITS,
    STATUSES,
    TABLE_SINCE,
    connect_readonly,
)
from clbench.store.ownership import shown_status
from clbench.version import RESULTS_VERSION

# The status a run is listed with: its stored status, or ``stale`` when an older engine
# (``results_version`` below ``RESULTS_VERSION``) computed it (see queries.effective_status).
EFFECTIVE_STATUS_SQL = (
    f"CASE WHEN coalesce(runs.results_version, 1) < {RESULTS_VERSION} THEN 'stale' ELSE runs.status END"
)
# Sweeps in the order they were planned, groups in the order they trained, then seeds.
ORDER_SQL = (
    "runs.created_at, runs.finished_at ASC NULLS LAST, runs.benchmark, runs.method, runs.buffer_size, "
    "runs.mask_on, runs.mask, runs.seed"
)
_RUN_COLUMNS = (
    "run_id",
    "method",
    "benchmark",
    "buffer_size",
    "mask",
    "mask_on",
    "seed",
    "status",
    "config",
    "finished_at",
    "wall_s",
    "host",
    "pid",
    "process_start",
    "heartbeat_at",
    "diverged_task",
    "diverged_step",
    "last_finite_loss",
    "class_order",
)


@dataclass(frozen=True)
class RunListing:
    """One run as a listing shows it (the columns of :func:`load_runs` of the same names); a number
    that is not there (no trusted result, not diverged) is ``None``, a time is in UTC."""

    run_id: str
    experiment: str | None  # its experiment labels, comma-separated
    method: str
    dataset: str
    buffer_size: int
    mask: str
    mask_on: str
    seed: int
    class_order: int
    status: str  # as shown: stale, or interrupted for an abandoned pending/running row
    faa_class_il: float | None
    faa_task_il: float | None
    wall_s: float | None
    finished_at: datetime | None
    diverged_task: int | None
    diverged_step: int | None
    last_finite_loss: float | None


# ---------------------------------------------------------------------------------------------
# Filters: SQL text with named parameters, for sqlite3 and SQLAlchemy's text() alike


def as_list(value: Any) -> list | None:
    """A filter's values: ``None`` (no filter), one value, or an iterable of them."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, int, float)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def mask_label(value: Any) -> str:
    """A mask value (or its text) as the ``runs.mask`` column holds it."""
    if value is None:
        return "none"
    return format_mask_value(parse_mask_value(value) if isinstance(value, str) else float(value))


def _in(expression: str, name: str, values: Sequence) -> tuple[str, dict]:
    params = {f"{name}_{i}": v for i, v in enumerate(values)}
    return f"{expression} IN ({', '.join(':' + p for p in params) or 'NULL'})", params


def run_conditions(
    method=None,
    dataset=None,
    mask=None,
    mask_on=None,
    buffer=None,
    seed=None,
    status=None,
    experiment=None,
    run_id=None,
    class_order=None,
) -> list[tuple[str, dict]]:
    """The filters as SQL conditions on ``runs`` (each with its named parameters); each filter takes
    one value or a list (any of them). Bad values raise ``ValueError``."""
    conds = []
    if (methods := as_list(method)) is not None:  # names checked against the registry: check_methods
        conds.append(_in("runs.method", "method", [str(m) for m in methods]))
    if (datasets := as_list(dataset)) is not None:
        conds.append(_in("runs.benchmark", "dataset", [benchmark_name(str(d)) for d in datasets]))
    if (masks := as_list(mask)) is not None:
        conds.append(_in("runs.mask", "mask", [mask_label(m) for m in masks]))
    if (ons := as_list(mask_on)) is not None:
        bad = [o for o in ons if o not in MASK_ON_CHOICES]
        if bad:
            raise ValueError(f"invalid mask_on {bad[0]!r}: valid are {', '.join(MASK_ON_CHOICES)}")
        conds.append(_in("runs.mask_on", "mask_on", ons))
    if (buffers := as_list(buffer)) is not None:
        conds.append(_in("runs.buffer_size", "buffer", [int(b) for b in buffers]))
    if (seeds := as_list(seed)) is not None:
        conds.append(_in("runs.seed", "seed", [int(s) for s in seeds]))
    if (statuses := as_list(status)) is not None:
        bad = [s for s in statuses if s not in STATUSES]
        if bad:
            raise ValueError(f"invalid status {bad[0]!r}: valid are {', '.join(STATUSES)}")
        # An abandoned pending/running row is shown as interrupted (ownership.shown_status): the query
        # takes the active rows too when interrupted ones are asked for; the caller filters after.
        stored = set(statuses) | (set(ACTIVE_STATUSES) if "interrupted" in statuses else set())
        conds.append(_in(f"({EFFECTIVE_STATUS_SQL})", "status", sorted(stored)))
    if (experiments := as_list(experiment)) is not None:
        sql, params = _in("run_experiments.experiment", "experiment", [str(e) for e in experiments])
        conds.append((f"runs.run_id IN (SELECT run_experiments.run_id FROM run_experiments WHERE {sql})", params))
    if (ids := as_list(run_id)) is not None:
        conds.append(_in("runs.run_id", "run_id", [str(i) for i in ids]))
    if (orders := as_list(class_order)) is not None:
        conds.append(_in("coalesce(runs.class_order, 0)", "class_order", [int(k) for k in orders]))
    return conds


def check_methods(method, stored_methods: Callable[[], Iterable[str]]) -> None:
    """An unknown method in a filter is an error, like an unknown dataset: a typo, not a filter that
    matches nothing. Known: the shipped methods and any stored run's (``stored_methods()``, asked only
    when a name is not shipped: methods of your own)."""
    if (methods := as_list(method)) is None:
        return
    known = set(METHODS)
    if any(str(m) not in known for m in methods):
        known |= set(stored_methods())
    bad = [str(m) for m in methods if str(m) not in known]
    if bad:
        mine = sorted(known - set(METHODS))
        raise ValueError(
            f"unknown method {bad[0]!r}: valid methods are {', '.join(METHODS)}"
            + (f" (and in this database: {', '.join(mine)})" if mine else "")
        )


def method_labels(records: list[dict]) -> list[dict]:
    """The records with each method shown so that different code never looks the same: a name that
    two versions of a method of your own share (an edited file, another file of that name) as
    ``name@`` and the first 8 hex digits of its file's SHA-256; any character that is not printable
    (a name stored before clbench refused them) escaped, so no row splits and no escape code runs."""
    versions: dict[str, set] = {}
    for rec in records:
        versions.setdefault(rec["method"], set()).add((rec["config"] or {}).get("method_sha256"))
    out = []
    for rec in records:
        name, sha = rec["method"], (rec["config"] or {}).get("method_sha256")
        name = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in name)
        if sha and len(versions[rec["method"]]) > 1:
            name = f"{name}@{sha[:8]}"
        out.append({**rec, "method": name})
    return out


def numpy_mean(values: Sequence[float]) -> float:
    """``float(np.mean(values))``, bit for bit, without numpy: its pairwise sum (numpy's
    ``pairwise_sum``: 8 partial sums, halves over 128 values) divided by the count."""
    return _pairwise_sum(values, 0, len(values)) / len(values)


def _pairwise_sum(a: Sequence[float], lo: int, n: int) -> float:
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    if n <= 128:
        r = list(a[lo : lo + 8])
        i = 8
        while i < n - n % 8:
            for j in range(8):
                r[j] += a[lo + i + j]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for k in range(i, n):
            res += a[lo + k]
        return res
    half = n // 2
    half -= half % 8
    return _pairwise_sum(a, lo, half) + _pairwise_sum(a, lo + half, n - half)


# ---------------------------------------------------------------------------------------------
# Reading


def list_runs(
    db=None,
    *,
    method=None,
    dataset=None,
    mask=None,
    mask_on=None,
    buffer=None,
    seed=None,
    status=None,
    experiment=None,
    run_id=None,
    class_order=None,
    class_il: str = "all",
    split: str = "test",
) -> list[RunListing]:
    """The runs in ``db`` (a path, URL or :class:`~clbench.store.store.Store`; default ``$CLBENCH_DB``
    or ``results.db``) matching every filter, as :func:`clbench.store.queries.load_runs` takes them, in
    its order: what ``clbench runs`` lists. ``faa_class_il`` is measured with the class-IL convention
    ``class_il``, both on ``split``, as ``load_runs`` does."""
    filters = dict(method=method, dataset=dataset, mask=mask, mask_on=mask_on, buffer=buffer, seed=seed)
    filters.update(status=status, experiment=experiment, run_id=run_id, class_order=class_order)
    if split not in SPLITS or class_il not in ("all", "seen") or (path := sqlite_file_of(db)) is None:
        return _listing_of_frame(db, filters, class_il, split)
    conds = run_conditions(**filters)
    try:
        conn = _ready_connection(path)
    except sqlite3.Error:
        conn = None
    if conn is None:  # missing, not clbench's, another schema version, damaged: load_runs says which
        return _listing_of_frame(db, filters, class_il, split)
    try:
        conn.isolation_level = None
        conn.execute("BEGIN")  # one snapshot for every query
        check_methods(method, lambda: [m for (m,) in conn.execute("SELECT DISTINCT method FROM runs")])
        rows, labels, faa = _read(conn, conds, "class_il" if class_il == "all" else "class_il_seen", split)
    except sqlite3.Error:
        return _listing_of_frame(db, filters, class_il, split)
    finally:
        conn.close()
    return _listing(rows, labels, faa, as_list(status))


def sqlite_file_of(db) -> Path | None:
    """The SQLite file ``db`` names as a plain path (``None`` given: ``$CLBENCH_DB``, else
    ``results.db``), absolute, as ``clbench.store.connection.resolve_db_url`` makes it; ``None`` for a
    URL (``sqlite:///...`` included) or a :class:`Store`."""
    if db is not None and not isinstance(db, (str, os.PathLike)):
        return None
    raw = os.fspath(db) if db is not None else (os.environ.get("CLBENCH_DB") or "results.db")
    if "://" in raw:
        return None
    return Path(raw).expanduser().absolute()


def _ready_connection(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to ``path`` when it is a clbench database of this schema version."""
    try:
        with open(path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                return None
    except OSError:
        return None
    conn = connect_readonly(path)
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not set(TABLE_SINCE) <= tables:
            conn.close()
            return None
        row = conn.execute("SELECT application, version FROM clbench_schema").fetchone()
    except BaseException:
        conn.close()
        raise
    if row is None or tuple(row) != (APPLICATION, SCHEMA_VERSION):
        conn.close()
        return None
    return conn


def _read(conn: sqlite3.Connection, conds: list[tuple[str, dict]], setting: str, split: str):
    """The ``runs`` rows matching ``conds`` (as dicts, with their effective status), their experiment
    labels and, for the finished ones, the final average accuracies: run_id -> setting -> FAA."""
    where = " AND ".join(sql for sql, _ in conds) or "1 = 1"
    params: dict = {k: v for _, p in conds for k, v in p.items()}
    columns = ", ".join(f"runs.{c}" for c in _RUN_COLUMNS)
    cursor = conn.execute(
        f"SELECT {columns}, {EFFECTIVE_STATUS_SQL} AS effective_status FROM runs WHERE {where} ORDER BY {ORDER_SQL}",
        params,
    )
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, r)) for r in cursor]
    labels: dict[str, list[str]] = {}
    for rid, label in conn.execute(
        "SELECT run_experiments.run_id, run_experiments.experiment FROM run_experiments WHERE "
        f"run_experiments.run_id IN (SELECT runs.run_id FROM runs WHERE {where}) ORDER BY run_experiments.experiment",
        params,
    ):
        labels.setdefault(rid, []).append(label)
    return rows, labels, _final_accuracies(conn, where, params, setting, split)


def _final_accuracies(conn, where: str, params: dict, setting: str, split: str) -> dict[str, tuple[float, float]]:
    """The final average accuracies (class-IL by ``setting``, task-IL) of each finished run matching
    ``where``: the mean of its matrix's last row (T x T, T one more than the last task any setting
    of ``split`` records; a cell not recorded is NaN), exactly as ``clbench.metrics`` computes them."""
    cursor = conn.execute(
        "SELECT a.run_id, m.last, a.setting, a.on_task, a.accuracy FROM accuracy AS a JOIN ("
        "SELECT accuracy.run_id, max(accuracy.after_task) AS last FROM accuracy WHERE accuracy.split = :_split "
        "AND accuracy.run_id IN (SELECT runs.run_id FROM runs WHERE runs.status = 'finished' AND "
        f"{where}) GROUP BY accuracy.run_id) AS m ON a.run_id = m.run_id AND a.after_task = m.last "
        "WHERE a.split = :_split AND a.setting IN (:_class_il, 'task_il')",
        {**params, "_split": split, "_class_il": setting},
    )
    lasts: dict[str, dict[str, dict[int, float]]] = {}
    ends: dict[str, int] = {}
    for rid, last, which, on_task, accuracy in cursor:
        ends[rid] = last + 1
        lasts.setdefault(rid, {}).setdefault(which, {})[on_task] = float("nan") if accuracy is None else accuracy
    # A run whose last row holds neither setting has NaN for both: left out, it is None as NaN is.
    return {
        rid: tuple(
            numpy_mean([lasts[rid].get(which, {}).get(j, float("nan")) for j in range(n)])
            for which in (setting, "task_il")
        )
        for rid, n in ends.items()
    }


def _time(value) -> datetime | None:
    """A time as SQLite holds it (SQLAlchemy's text, in UTC) as an aware datetime."""
    if value is None:
        return None
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _listing(rows: list[dict], labels: Mapping, faa: Mapping, wanted: list | None) -> list[RunListing]:
    now = datetime.now(UTC)
    records = []
    for r in rows:
        r["config"] = json.loads(r["config"]) if isinstance(r["config"], str) else r["config"]
        r["heartbeat_at"] = _time(r["heartbeat_at"])
        shown = shown_status({**r, "status": r["effective_status"]}, now)
        if wanted is not None and shown not in wanted:
            continue
        records.append({**r, "status": shown, "faa": faa.get(r["run_id"], (None, None))})
    return [
        RunListing(
            run_id=r["run_id"],
            experiment=",".join(labels.get(r["run_id"], [])) or None,
            method=r["method"],
            dataset=r["benchmark"],
            buffer_size=r["buffer_size"],
            mask=r["mask"],
            mask_on=r["mask_on"],
            seed=r["seed"],
            class_order=int(r["class_order"] or 0),
            status=r["status"],
            faa_class_il=_number(r["faa"][0]),
            faa_task_il=_number(r["faa"][1]),
            wall_s=_number(r["wall_s"]),
            finished_at=_time(r["finished_at"]),
            diverged_task=r["diverged_task"],
            diverged_step=r["diverged_step"],
            last_finite_loss=_number(r["last_finite_loss"]),
        )
        for r in method_labels(records)
    ]


def _number(value) -> float | None:
    """A float, ``None`` for a missing one (NaN included: SQLite keeps no NaN, pandas no None)."""
    return None if value is None or value != value else float(value)


def _listing_of_frame(db, filters: dict, class_il: str, split: str) -> list[RunListing]:
    """:func:`list_runs` through ``load_runs`` (SQLAlchemy and pandas): a database server, or a file
    that the fast path does not read (``load_runs`` migrates it, or says what is wrong with it)."""
    from clbench.store.queries import load_runs  # noqa: PLC0415

    df = load_runs(db, class_il=class_il, split=split, **filters)
    out = []
    for rec in df.to_dict("records"):
        when = rec["finished_at"]
        out.append(
            RunListing(
                run_id=rec["run_id"],
                method=rec["method"],
                dataset=rec["dataset"],
                experiment=rec["experiment"] if isinstance(rec["experiment"], str) else None,
                buffer_size=int(rec["buffer_size"]),
                mask=rec["mask"],
                mask_on=rec["mask_on"],
                seed=int(rec["seed"]),
                class_order=int(rec["class_order"]),
                status=rec["status"],
                faa_class_il=_number(rec["faa_class_il"]),
                faa_task_il=_number(rec["faa_task_il"]),
                wall_s=_number(rec["wall_s"]),
                finished_at=None if when is None or when != when else when.to_pydatetime(),
                diverged_task=None if _number(rec["diverged_task"]) is None else int(rec["diverged_task"]),
                diverged_step=None if _number(rec["diverged_step"]) is None else int(rec["diverged_step"]),
                last_finite_loss=_number(rec["last_finite_loss"]),
            )
        )
    return out
