"""What the store's modules share without SQLAlchemy, so that a reader that needs neither it nor pandas
(``clbench.store.listing``, behind ``clbench runs``) loads in milliseconds: the schema's version and
vocabularies, the time every row records, and read-only connections to an SQLite file.

``clbench.store.schema`` (the tables) and ``clbench.store.connection`` (engines) import these from here.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

SCHEMA_VERSION = 6  # raise it together with a step in clbench.store.migrations.STEPS
APPLICATION = "clbench"
# What a row's ``status`` column holds.
STORED_STATUSES = ("pending", "running", "finished", "diverged", "failed", "interrupted")
# What listings show: the stored status, or ``stale`` for a row of an older RESULTS_VERSION.
STATUSES = (*STORED_STATUSES, "stale")
ACTIVE_STATUSES = ("pending", "running")  # owned by a live process, or abandoned
DONE_STATUSES = ("finished", "diverged")  # with results; never recomputed unless forced
# The accuracy matrices a run stores (the ``setting`` column): class-IL with the argmax over all
# classes, task-IL, and class-IL over the classes seen so far (since schema 2; older runs lack it).
SETTINGS = ("class_il", "task_il", "class_il_seen")
# Which samples a matrix is measured on (the ``split`` column, since schema 3): the test sets, or the
# training rows a run held out for validation (runs with ``validation`` > 0).
SPLITS = ("test", "validation")
# The schema version from which a database must have each table: a database of that version or later
# without it was damaged (a table dropped by hand), not made by an older clbench. The tables added
# before schema 3 without a version of their own are in every database migrated to 3 or later.
# A new table raises SCHEMA_VERSION (with a step, even one that does nothing) and is listed here.
TABLE_SINCE = {
    "clbench_schema": 1,
    "runs": 1,
    "run_experiments": 1,
    "accuracy": 1,
    "class_accuracy": 3,
    "confidence": 3,
    "task_losses": 3,
    "task_timings": 3,
    "confidence_histograms": 3,
    "mlflow_runs": 3,
    "task_plasticity": 4,
    "accuracy_curve": 6,
}
SQLITE_BUSY_TIMEOUT_S = 60.0


def utc_now() -> datetime:
    """The time every ``DateTime(timezone=True)`` column records: now, in UTC."""
    return datetime.now(UTC)


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``: it can never create or change the file, even by accident).

    A database in WAL mode is read through its ``-shm`` file, which the first reader creates beside
    it. On read-only storage (a read-only mount, a folder this user cannot write) that is impossible
    and so is any change to the file: it is then opened ``immutable``, with no shared memory and
    no locks. Never otherwise, since a file that another process may still write cannot be
    immutable; and never with an unmerged ``-wal`` beside it, whose changes immutable would skip."""
    uri = path.absolute().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # WAL readers open the -shm here
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        wal = Path(f"{path}-wal")
        cannot_write_here = not os.access(path.absolute().parent, os.W_OK | os.X_OK)
        if (
            getattr(exc, "sqlite_errorname", "") != "SQLITE_CANTOPEN"
            or not cannot_write_here
            or (wal.exists() and wal.stat().st_size > 0)
        ):
            raise
    return sqlite3.connect(uri + "&immutable=1", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False)
