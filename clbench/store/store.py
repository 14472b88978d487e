"""The experiment store: every run is a row in a SQL database (SQLAlchemy 2 ORM).

The default database is an SQLite file, ``results.db`` in the working directory; any SQLAlchemy
URL works, PostgreSQL included. The schema is explicit (the ORM classes below) and versioned by
one row in ``clbench_schema``: a database written by another clbench version, or one that is not
a clbench database at all, is refused with a :class:`StoreError` before anything is written.

A run's row moves ``pending -> running -> finished | diverged | failed | interrupted``. Results are
written in one transaction together with ``status = finished`` (or ``diverged``: the run's loss or
weights became non-finite, see ``clbench.trainer``), so a finished row always has its matrices and
nothing interrupted can leave half a result behind. The process that claims a run records its
host, pid and process start time and keeps a heartbeat; a ``pending``/``running`` row whose
process is gone (on this host: the pid; elsewhere: a heartbeat older than ``HEARTBEAT_TIMEOUT_S``)
is abandoned, and :meth:`Store.mark_stale_runs` marks it ``interrupted``. A run held by a live
process is never claimed by another one: each run is computed once across processes.

Every row records the ``RESULTS_VERSION`` of the engine that computed it (part of the run's
identity, ``clbench.config``). Rows of an older version are reported with the derived status
``stale``: never reused as cached, left out of reports unless asked for.

Schema versions are migrated in place (``_MIGRATIONS``) by the first process that opens an older
database for writing; tables added since are created the same way.

Concurrency: SQLite runs in WAL mode with a busy timeout and ``BEGIN IMMEDIATE`` write
transactions (so two writers queue instead of dead-locking); every transaction is retried on
"database is locked", PostgreSQL serialization failures, deadlocks and insert races.
"""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from clbench.errors import first_line
from clbench.runs.checks import MAX_LABEL_LENGTH, check_label
from clbench.version import RESULTS_VERSION
from clbench.runs.resolved import ResolvedConfig
from clbench.runs.results import Divergence, RunResult

SCHEMA_VERSION = 2
APPLICATION = "clbench"
DEFAULT_DB = "results.db"
ENV_DB = "CLBENCH_DB"
# What a row's ``status`` column holds.
STORED_STATUSES = ("pending", "running", "finished", "diverged", "failed", "interrupted")
# What listings show: the stored status, or ``stale`` for a row of an older RESULTS_VERSION.
STATUSES = (*STORED_STATUSES, "stale")
ACTIVE_STATUSES = ("pending", "running")  # owned by a live process, or abandoned
DONE_STATUSES = ("finished", "diverged")  # with results; never recomputed unless forced
# The accuracy matrices a run stores (the ``setting`` column): class-IL with the argmax over all
# classes, task-IL, and class-IL over the classes seen so far (since schema 2; older runs lack it).
SETTINGS = ("class_il", "task_il", "class_il_seen")
HEARTBEAT_INTERVAL_S = 60.0  # how often a running sweep refreshes the heartbeat of its runs
HEARTBEAT_TIMEOUT_S = 600.0  # a run on another host with an older heartbeat is abandoned

SQLITE_BUSY_TIMEOUT_S = 60.0
_RETRIES = 8
_IN_CHUNK = 500  # ids per IN (...) list: far below SQLite's and PostgreSQL's parameter limits
_SQLITE_HEADER = b"SQLite format 3\x00"


class StoreError(Exception):
    """The database cannot be used: unreachable, not a clbench database, another schema version.

    The message is one line meant for the person running clbench.
    """


# ---------------------------------------------------------------------------------------------
# Schema


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON, list: JSON}


class SchemaInfo(Base):
    """One row: which application and schema version wrote this database."""

    __tablename__ = "clbench_schema"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Run(Base):
    """A run: its resolved config (the JSON is the record; the columns beside it are copies for
    filtering), its lifecycle and who ran it."""

    __tablename__ = "runs"
    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # ResolvedConfig.identity()
    config_hash: Mapped[str] = mapped_column(String(64), index=True)  # identity without the seed
    method: Mapped[str] = mapped_column(String(32), index=True)
    benchmark: Mapped[str] = mapped_column(String(64), index=True)
    backbone: Mapped[str] = mapped_column(String(32))
    buffer_size: Mapped[int] = mapped_column(Integer)
    mask: Mapped[str] = mapped_column(String(32))  # "none", "-inf" or the number
    mask_on: Mapped[str] = mapped_column(String(16))
    seed: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    process_start: Mapped[int | None] = mapped_column(BigInteger)  # guards against pid reuse
    device: Mapped[str | None] = mapped_column(String(64))
    versions: Mapped[dict | None] = mapped_column(JSON)
    class_names: Mapped[list | None] = mapped_column(JSON)
    group_size: Mapped[int | None] = mapped_column(Integer)
    wall_s: Mapped[float | None] = mapped_column(Float)  # this run's share of its group's time
    error: Mapped[str | None] = mapped_column(Text)
    # Added in schema version 2.
    results_version: Mapped[int | None] = mapped_column(Integer)  # the engine's RESULTS_VERSION
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # owner last seen alive
    diverged_task: Mapped[int | None] = mapped_column(Integer)  # where the loss became non-finite
    diverged_step: Mapped[int | None] = mapped_column(Integer)  # step within that task (all epochs)
    last_finite_loss: Mapped[float | None] = mapped_column(Float)


class RunExperiment(Base):
    """Experiment labels: a run belongs to every experiment whose sweep asked for it, cached or not."""

    __tablename__ = "run_experiments"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    experiment: Mapped[str] = mapped_column(String(MAX_LABEL_LENGTH), primary_key=True, index=True)


class Accuracy(Base):
    """A[after_task][on_task] for one setting: the record every metric is computed from."""

    __tablename__ = "accuracy"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    setting: Mapped[str] = mapped_column(String(16), primary_key=True)  # one of SETTINGS
    after_task: Mapped[int] = mapped_column(Integer, primary_key=True)
    on_task: Mapped[int] = mapped_column(Integer, primary_key=True)
    accuracy: Mapped[float] = mapped_column(Float)  # %
    n_correct: Mapped[int] = mapped_column(Integer)
    n_total: Mapped[int] = mapped_column(Integer)


class ClassAccuracy(Base):
    """Class-IL accuracy (%) of each class after each task."""

    __tablename__ = "class_accuracy"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    after_task: Mapped[int] = mapped_column(Integer, primary_key=True)
    class_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    accuracy: Mapped[float | None] = mapped_column(Float)


class Confidence(Base):
    """After each task, the mean softmax vector (over all K classes, a JSON list) of a true class's
    test samples. One row per vector rather than per cell: K x K cells per task grows too fast."""

    __tablename__ = "confidence"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    after_task: Mapped[int] = mapped_column(Integer, primary_key=True)
    true_class: Mapped[int] = mapped_column(Integer, primary_key=True)
    probabilities: Mapped[list] = mapped_column(JSON)


class TaskLoss(Base):
    """Mean training loss per step of each term (``total`` = their sum) during each task."""

    __tablename__ = "task_losses"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    task: Mapped[int] = mapped_column(Integer, primary_key=True)
    term: Mapped[str] = mapped_column(String(64), primary_key=True)
    loss: Mapped[float | None] = mapped_column(Float)  # NULL where the loss was NaN (SQLite has no NaN)


class TaskTiming(Base):
    """Wall seconds the run's whole lockstep group spent training and evaluating each task."""

    __tablename__ = "task_timings"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    task: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_s: Mapped[float] = mapped_column(Float)
    eval_s: Mapped[float] = mapped_column(Float)


class ConfidenceHistogram(Base):
    """After each task, the histogram (``clbench.evaluation.HISTOGRAM_BINS`` equal bins over [0, 1],
    a JSON list of counts) of one softmax probability (``kind``: of the true class, or the largest)
    over the test samples of one task."""

    __tablename__ = "confidence_histograms"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True)
    after_task: Mapped[int] = mapped_column(Integer, primary_key=True)
    on_task: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # true_class | max
    counts: Mapped[list] = mapped_column(JSON)


RESULT_TABLES = (Accuracy, ClassAccuracy, Confidence, TaskLoss, TaskTiming, ConfidenceHistogram)


class MlflowRun(Base):
    """Which MLflow run holds what was exported to a tracking store (``clbench export --mlflow``):
    a clbench run (``entity`` run, ``key`` its run id) or a config's parent run (``entity``
    config, ``key`` the config hash). Exporting again to the same store adds nothing."""

    __tablename__ = "mlflow_runs"
    tracking_uri: Mapped[str] = mapped_column(String(1000), primary_key=True)
    entity: Mapped[str] = mapped_column(String(16), primary_key=True)  # run | config
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    mlflow_run_id: Mapped[str] = mapped_column(String(64))
    experiment_id: Mapped[str] = mapped_column(String(64))
    exported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


TABLE_NAMES = frozenset(Base.metadata.tables)


# ---------------------------------------------------------------------------------------------
# Addresses and checks (nothing here creates or writes anything)


def resolve_db_url(db: str | os.PathLike | URL | None = None, env: Mapping[str, str] | None = None) -> URL:
    """``db`` (a SQLAlchemy URL or a file path), else ``$CLBENCH_DB``, else ``results.db``.

    A path becomes an SQLite URL of its absolute path, so the store does not depend on a later
    change of the working directory.
    """
    if isinstance(db, URL):
        return db
    env = os.environ if env is None else env
    raw = os.fspath(db) if db is not None else (env.get(ENV_DB) or DEFAULT_DB)
    if "://" in raw:
        try:
            return make_url(raw)
        except ArgumentError:
            raise StoreError(f"invalid database URL {raw!r}: give a file path or a SQLAlchemy URL such as "
                             "sqlite:///results.db or postgresql+psycopg://user@host/dbname") from None
    return URL.create("sqlite", database=str(Path(raw).expanduser().absolute()))


def is_in_memory(url: URL) -> bool:
    """An SQLite database that lives in the process's memory (``sqlite://``, ``:memory:``): it keeps
    nothing once the process ends."""
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return database in ("", ":memory:") or database.startswith("file::memory:") or \
        url.query.get("mode") == "memory"


def describe_url(url: URL) -> str:
    """The URL as shown to people: the file for SQLite, the URL without its password otherwise."""
    if _sqlite_file(url) is not None:
        return str(_sqlite_file(url))
    return url.render_as_string(hide_password=True)


def sqlite_path(db: str | os.PathLike | URL | None) -> Path | None:
    """The file of an SQLite registry (``None`` for a database server or an in-memory SQLite)."""
    return _sqlite_file(resolve_db_url(db))


def _sqlite_file(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def inspect_db(db: str | os.PathLike | URL | None = None) -> str:
    """The state of the database at ``db`` without creating or changing anything.

    Returns ``"missing"`` (no file yet; its folder exists), ``"empty"`` (exists, has no tables),
    ``"outdated"`` (a clbench database of an older schema version: :func:`open_store` migrates it)
    or ``"ready"`` (a clbench database of this schema version). Raises :class:`StoreError` for a
    database that cannot be reached, is not a clbench database, or has another schema version.
    """
    url = resolve_db_url(db)
    path = _sqlite_file(url)
    if path is not None:
        if not path.exists():
            if not path.parent.is_dir():
                raise StoreError(f"cannot create the database {path}: the folder {path.parent} does not exist")
            return "missing"
        if path.is_dir():
            raise StoreError(f"{path} is a folder, not a clbench database: give a file path or a database URL")
        try:
            with open(path, "rb") as fh:
                header = fh.read(len(_SQLITE_HEADER))
        except OSError as exc:
            raise StoreError(f"cannot read the database {path}: {exc.strerror or exc}") from None
        if not header:
            return "empty"
        if header != _SQLITE_HEADER:
            raise StoreError(f"{path} is not a clbench database (it is not an SQLite file); "
                             "give another --db path or move the file away")
    engine = _make_engine(url, readonly=True)
    try:
        with engine.connect() as conn:
            return _schema_state(conn, describe_url(url))
    except StoreError:
        raise
    except DBAPIError as exc:
        raise _connection_error(url, exc) from None
    finally:
        engine.dispose()


def _schema_state(conn, where: str) -> str:
    """``empty``, ``ready`` or ``outdated`` (an older schema version, or tables added since missing);
    raises :class:`StoreError` for a database that is not clbench's or is newer than this clbench."""
    tables = set(inspect(conn).get_table_names())
    if not tables:
        return "empty"
    if SchemaInfo.__tablename__ not in tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise StoreError(f"{where} is not a clbench database (it has the tables {shown} and no clbench_schema); "
                         "give another --db")
    row = conn.execute(select(SchemaInfo.application, SchemaInfo.version)).first()
    if row is None or row.application != APPLICATION:
        raise StoreError(f"{where} is not a clbench database (its clbench_schema table has no clbench row)")
    if row.version > SCHEMA_VERSION:
        raise StoreError(f"{where} was written by a newer clbench (schema version {row.version}; this clbench "
                         f"reads version {SCHEMA_VERSION}): upgrade clbench or use another --db")
    if row.version < SCHEMA_VERSION or TABLE_NAMES - tables:
        return "outdated"
    return "ready"


def _add_columns_v2(conn) -> None:
    """Schema 1 -> 2: the results version (1 for every existing row: they were computed by
    clbench 0.1.0), the owner's heartbeat and where a run diverged."""
    for column, sql_type in (("results_version", "INTEGER"), ("heartbeat_at", _timestamp_type(conn)),
                             ("diverged_task", "INTEGER"), ("diverged_step", "INTEGER"),
                             ("last_finite_loss", "DOUBLE PRECISION" if conn.dialect.name == "postgresql" else "FLOAT")):
        conn.execute(text(f"ALTER TABLE runs ADD COLUMN {column} {sql_type}"))
    conn.execute(text("UPDATE runs SET results_version = 1"))


def _timestamp_type(conn) -> str:
    return "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"


# from_version -> the step to from_version + 1. Each step runs in the migrating transaction.
_MIGRATIONS: dict[int, Callable[[Any], None]] = {1: _add_columns_v2}


def _migrate(conn, where: str) -> None:
    """Bring an older clbench database to ``SCHEMA_VERSION`` in one transaction: the version steps,
    then every table this clbench has and the database lacks. Safe against a concurrent migrator
    (an advisory lock on PostgreSQL; SQLite's write transactions are exclusive already)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})"))
    if _schema_state(conn, where) != "outdated":  # someone else migrated it meanwhile
        return
    version = conn.execute(select(SchemaInfo.version)).scalar_one()
    while version < SCHEMA_VERSION:
        _MIGRATIONS[version](conn)
        version += 1
    Base.metadata.create_all(conn, checkfirst=True)
    conn.execute(update(SchemaInfo).values(version=SCHEMA_VERSION))


def _connection_error(url: URL, exc: Exception) -> StoreError:
    return StoreError(f"cannot open the database {describe_url(url)}: {first_line(exc)}")


# ---------------------------------------------------------------------------------------------
# Engines


def _make_engine(url: URL, *, readonly: bool) -> Engine:
    backend = url.get_backend_name()
    try:
        if backend == "sqlite":
            return _sqlite_engine(url, readonly=readonly)
        connect_args: dict[str, Any] = {}
        if backend == "postgresql":
            connect_args["connect_timeout"] = 10
        return create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    except NoSuchModuleError:
        raise StoreError(f"unsupported database URL {describe_url(url)}: valid are file paths, sqlite:///... and "
                         "postgresql+psycopg://... URLs") from None
    except ImportError as exc:
        raise StoreError(f"the database driver for {describe_url(url)} is not installed (no module {exc.name!r}); "
                         "install it, e.g. for PostgreSQL: pip install 'psycopg[binary]'") from None


def _connect_readonly(path: Path) -> sqlite3.Connection:
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
        if getattr(exc, "sqlite_errorname", "") != "SQLITE_CANTOPEN" or not cannot_write_here or (
                wal.exists() and wal.stat().st_size > 0):
            raise
    return sqlite3.connect(uri + "&immutable=1", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False)


def _sqlite_engine(url: URL, *, readonly: bool) -> Engine:
    path = _sqlite_file(url)
    if readonly and path is not None:
        engine = create_engine("sqlite://", creator=lambda: _connect_readonly(path))
    else:
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # The driver's own transaction handling is turned off: we issue BEGIN ourselves (below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA foreign_keys = ON")
        if not readonly:
            cur.execute("PRAGMA journal_mode = WAL")  # readers never block the writer, nor it them
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # IMMEDIATE takes the write lock up front: a deferred transaction that later upgrades to a
        # writer can fail at once with "database is locked" instead of waiting its turn.
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


def _transient(exc: Exception) -> bool:
    """Errors that a fresh attempt of the same transaction can get past."""
    if isinstance(exc, IntegrityError):  # two writers inserted the same new row at once
        return True
    if not isinstance(exc, (OperationalError, DBAPIError)):
        return False
    message = str(getattr(exc, "orig", exc)).lower()
    code = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return (
        "database is locked" in message or "database is busy" in message
        or code in ("40001", "40P01", "55P03")  # serialization failure, deadlock, lock not available
    )


def _damaged(exc: Exception) -> bool:
    """SQLite's errors for a file whose pages are corrupt: no retry or other query gets past them."""
    message = str(getattr(exc, "orig", exc)).lower()
    return ("database disk image is malformed" in message or "file is not a database" in message
            or "malformed database schema" in message)


T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Who runs a run


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) is in parentheses and may hold spaces.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass(frozen=True)
class Owner:
    """The process that claims runs: host, pid and the pid's start time."""

    host: str
    pid: int
    process_start: int | None

    @classmethod
    def current(cls) -> "Owner":
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _process_start(pid))

    def is_alive(self) -> bool:
        """Whether the process still runs (only decidable on its own host; elsewhere: assumed;
        the store decides for other hosts by the heartbeat)."""
        if self.host != socket.gethostname():
            return True
        if not _pid_alive(self.pid):
            return False
        start = _process_start(self.pid)
        return self.process_start is None or start is None or start == self.process_start


def _now() -> datetime:
    return datetime.now(timezone.utc)




def _finite_or_none(values: Iterable[float]) -> list[float | None]:
    # JSON has no NaN/inf (PostgreSQL rejects them): store null, read back as NaN.
    return [float(v) if math.isfinite(v) else None for v in values]


def _nan_if_none(values: Iterable[float | None]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def in_chunks(items: Sequence[T], size: int = _IN_CHUNK) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _histogram_rows(conn, run_ids: Sequence[str]) -> list:
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


# ---------------------------------------------------------------------------------------------
# The store


class Store:
    """A clbench database. Open it with :func:`open_store`; close it (or use ``with``) when done."""

    def __init__(self, engine: Engine, url: URL, *, readonly: bool):
        self.engine = engine
        self.url = url
        self.readonly = readonly

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Store({describe_url(self.url)!r}{', readonly' if self.readonly else ''})"

    @property
    def where(self) -> str:
        return describe_url(self.url)

    # -- transactions ---------------------------------------------------------------------------

    def transaction(self, work: Callable[[Any], T]) -> T:
        """Run ``work(connection)`` in one transaction, retrying transient conflicts."""
        delay = 0.05
        for attempt in range(_RETRIES):
            try:
                with self.engine.begin() as conn:
                    return work(conn)
            except DBAPIError as exc:
                if _damaged(exc):
                    raise StoreError(f"the database {self.where} is damaged ({first_line(exc)}): restore it from a "
                                     "backup, or recover what is readable with: sqlite3 FILE .recover") from None
                if attempt == _RETRIES - 1 or not _transient(exc):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    def _write(self, work: Callable[[Any], T]) -> T:
        if self.readonly:
            raise StoreError(f"the store {self.where} was opened read-only")
        return self.transaction(work)

    # -- reading --------------------------------------------------------------------------------

    def statuses(self, run_ids: Sequence[str]) -> dict[str, str]:
        """Status of each of ``run_ids`` that has a row, as listings show it (:func:`shown_status`:
        an abandoned ``pending``/``running`` run is ``interrupted``)."""

        def work(conn):
            out = {}
            now = _now()
            for chunk in in_chunks(list(run_ids)):
                stmt = select(Run.run_id, Run.status, Run.host, Run.pid, Run.process_start, Run.heartbeat_at)
                for row in conn.execute(stmt.where(Run.run_id.in_(chunk))).mappings():
                    out[row["run_id"]] = shown_status(row, now)
            return out

        return self.transaction(work)

    def find_run_id(self, prefix: str) -> str:
        """The run id that starts with ``prefix`` (like git: any unique prefix of 4+ characters)."""
        prefix = prefix.strip().lower()
        if len(prefix) < 4 or any(c not in "0123456789abcdef" for c in prefix):
            raise KeyError(f"invalid run id {prefix!r}: give 4 or more hex digits of a run id (see clbench runs)")
        ids = self.transaction(
            lambda conn: conn.execute(select(Run.run_id).where(Run.run_id.startswith(prefix)).limit(3)).scalars().all()
        )
        if not ids:
            raise KeyError(f"no run {prefix!r} in {self.where} (see clbench runs)")
        if len(ids) > 1:
            raise KeyError(f"run id {prefix!r} is ambiguous ({', '.join(ids)}, ...): give more digits")
        return ids[0]

    def run_row(self, run_id: str) -> dict:
        """The ``runs`` row of ``run_id`` as a dict, with its experiment labels; ``status`` is the one
        listings show (:func:`shown_status`), ``stored_status`` the column's."""

        def work(conn):
            row = conn.execute(select(Run.__table__).where(Run.run_id == run_id)).mappings().first()
            if row is None:
                raise KeyError(f"no run {run_id!r} in {self.where}")
            out = dict(row)
            out["stored_status"], out["status"] = row["status"], shown_status(row)
            out["experiments"] = sorted(conn.execute(
                select(RunExperiment.experiment).where(RunExperiment.run_id == run_id)).scalars())
            return out

        return self.transaction(work)

    def load_result(self, run_id: str) -> RunResult:
        """The full :class:`RunResult` of a finished run, exactly as it was saved."""

        def work(conn):
            run = conn.execute(select(Run.__table__).where(Run.run_id == run_id)).mappings().first()
            if run is None:
                raise KeyError(f"no run {run_id!r} in {self.where}")
            if run["status"] not in DONE_STATUSES:
                raise KeyError(f"run {run_id} has no results: its status is {run['status']}")
            acc = conn.execute(select(Accuracy.__table__).where(Accuracy.run_id == run_id)).all()
            cls_acc = conn.execute(select(ClassAccuracy.__table__).where(ClassAccuracy.run_id == run_id)).all()
            conf = conn.execute(select(Confidence.__table__).where(Confidence.run_id == run_id)).all()
            losses = conn.execute(select(TaskLoss.__table__).where(TaskLoss.run_id == run_id)).all()
            timings = conn.execute(select(TaskTiming.__table__).where(TaskTiming.run_id == run_id)).all()
            return run, acc, cls_acc, conf, losses, timings, _histogram_rows(conn, [run_id])

        run, acc, cls_acc, conf, losses, timings, hists = self.transaction(work)
        config = ResolvedConfig.from_dict(run["config"])
        n_tasks = 1 + max(r.after_task for r in acc)
        n_classes = 1 + max(r.class_index for r in cls_acc)
        present = {r.setting for r in acc}
        mats = {name: np.zeros((n_tasks, n_tasks)) for name in SETTINGS if name in present}
        correct = {name: np.zeros((n_tasks, n_tasks), dtype=np.int64) for name in SETTINGS if name in present}
        test_counts = np.zeros(n_tasks, dtype=np.int64)
        for r in acc:
            mats[r.setting][r.after_task, r.on_task] = r.accuracy
            correct[r.setting][r.after_task, r.on_task] = r.n_correct
            test_counts[r.on_task] = r.n_total
        per_class = np.full((n_tasks, n_classes), np.nan)
        for r in cls_acc:
            per_class[r.after_task, r.class_index] = np.nan if r.accuracy is None else r.accuracy
        confidence = np.full((n_tasks, n_classes, n_classes), np.nan)
        for r in conf:
            confidence[r.after_task, r.true_class] = _nan_if_none(r.probabilities)
        terms = sorted({r.term for r in losses})
        train_loss = {t: np.full(n_tasks, np.nan) for t in terms}
        for r in losses:
            train_loss[r.term][r.task] = np.nan if r.loss is None else r.loss
        train_s, eval_s = np.zeros(n_tasks), np.zeros(n_tasks)
        for r in timings:
            train_s[r.task], eval_s[r.task] = r.train_s, r.eval_s
        return RunResult(
            config=config,
            class_il=mats["class_il"], task_il=mats["task_il"],
            class_il_correct=correct["class_il"], task_il_correct=correct["task_il"],
            test_counts=test_counts, per_class_accuracy=per_class, confidence=confidence,
            train_loss=train_loss, train_s=train_s, eval_s=eval_s,
            group_size=int(run["group_size"]), device=run["device"], versions=dict(run["versions"] or {}),
            class_names=tuple(run["class_names"] or ()),
            class_il_seen=mats.get("class_il_seen"), class_il_seen_correct=correct.get("class_il_seen"),
            divergence=None if run["status"] != "diverged" else Divergence(
                run["diverged_task"], run["diverged_step"],
                math.nan if run["last_finite_loss"] is None else run["last_finite_loss"]),
            histograms=histogram_arrays(hists).get(run_id, {}),
        )

    # -- MLflow exports -------------------------------------------------------------------------

    def mlflow_runs(self, tracking_uri: str) -> dict[tuple[str, str], tuple[str, str]]:
        """(entity, key) -> (MLflow run id, experiment id) of what was exported to ``tracking_uri``."""
        stmt = select(MlflowRun.entity, MlflowRun.key, MlflowRun.mlflow_run_id, MlflowRun.experiment_id).where(
            MlflowRun.tracking_uri == tracking_uri)
        return {(r.entity, r.key): (r.mlflow_run_id, r.experiment_id)
                for r in self.transaction(lambda conn: conn.execute(stmt).all())}

    def remember_mlflow_runs(self, tracking_uri: str, rows: Sequence[tuple[str, str, str, str]]) -> None:
        """Record (entity, key, MLflow run id, experiment id) rows for ``tracking_uri`` (replacing any)."""
        now = _now()

        def work(conn):
            for entity, key, run_id, experiment_id in rows:
                conn.execute(delete(MlflowRun).where(MlflowRun.tracking_uri == tracking_uri, MlflowRun.entity == entity,
                                                     MlflowRun.key == key))
                conn.execute(insert(MlflowRun).values(tracking_uri=tracking_uri, entity=entity, key=key,
                                                      mlflow_run_id=run_id, experiment_id=experiment_id,
                                                      exported_at=now))

        self._write(work)

    # -- the lifecycle --------------------------------------------------------------------------

    def claim(self, configs: Sequence[ResolvedConfig], owner: Owner, *, experiment: str | None = None,
              tag: Sequence[ResolvedConfig] = (), force: bool = False) -> "Claim":
        """Make ``configs`` ``pending`` runs of ``owner`` and label them and ``tag`` (e.g. cached runs
        of the same sweep) with ``experiment``.

        New runs get a row; failed, interrupted and abandoned ones (their owner is gone) are taken
        over; runs that another live process holds are left to it (``Claim.held``), so concurrent
        sweeps compute each run once. Finished and diverged runs are claimed only with ``force``
        (they keep their results until new ones replace them).
        """
        if experiment is not None:
            check_label(experiment)  # what every backend stores, checked before anything is written
        now = _now()

        def work(conn):
            _serialize_writers(conn)
            ids = [c.identity() for c in configs]
            existing = {}
            for chunk in in_chunks(ids):
                for row in conn.execute(select(Run.run_id, Run.status, Run.host, Run.pid, Run.process_start,
                                               Run.heartbeat_at).where(Run.run_id.in_(chunk))):
                    existing[row.run_id] = row
            claimed, held, takeover = [], {}, []
            for rid in ids:
                row = existing.get(rid)
                if row is None:
                    claimed.append(rid)
                elif row.status in DONE_STATUSES:
                    if force:
                        claimed.append(rid)
                elif row.status in ACTIVE_STATUSES and _row_owner(row) != owner and _holder_alive(row, now):
                    held[rid] = f"{row.host} pid {row.pid}"
                else:
                    claimed.append(rid)
                    takeover.append(rid)
            new_rows = [self._run_row(c, "pending", owner, now) for c in configs if c.identity() not in existing]
            if new_rows:
                conn.execute(insert(Run), new_rows)
            for chunk in in_chunks(takeover):
                conn.execute(
                    update(Run).where(Run.run_id.in_(chunk), Run.status.not_in(DONE_STATUSES)).values(
                        status="pending", host=owner.host, pid=owner.pid, process_start=owner.process_start,
                        started_at=None, finished_at=None, error=None, heartbeat_at=now,
                    )
                )
            if experiment:
                self._tag(conn, ids + [c.identity() for c in tag], experiment)
            return Claim(tuple(claimed), held)

        return self._write(work)

    def heartbeat(self, owner: Owner) -> None:
        """``owner`` is alive: refresh the heartbeat of the runs it holds (see ``HEARTBEAT_TIMEOUT_S``)."""
        self._write(lambda conn: conn.execute(update(Run).where(
            Run.status.in_(ACTIVE_STATUSES), Run.host == owner.host, Run.pid == owner.pid,
        ).values(heartbeat_at=_now())))

    def _tag(self, conn, run_ids: list[str], experiment: str) -> None:
        have: set[str] = set()
        for chunk in in_chunks(run_ids):
            have.update(conn.execute(select(RunExperiment.run_id).where(
                RunExperiment.experiment == experiment, RunExperiment.run_id.in_(chunk))).scalars())
        rows = [{"run_id": i, "experiment": experiment} for i in dict.fromkeys(run_ids) if i not in have]
        if rows:
            conn.execute(insert(RunExperiment), rows)

    @staticmethod
    def _run_row(cfg: ResolvedConfig, status: str, owner: Owner, now: datetime) -> dict:
        return {
            "run_id": cfg.identity(), "config_hash": cfg.config_hash(), "method": cfg.method,
            "benchmark": cfg.benchmark, "backbone": cfg.backbone, "buffer_size": cfg.buffer_size,
            "mask": cfg.mask.label, "mask_on": cfg.mask.on, "seed": cfg.seed, "config": cfg.to_dict(),
            "status": status, "created_at": now, "host": owner.host, "pid": owner.pid,
            "process_start": owner.process_start, "heartbeat_at": now, "results_version": RESULTS_VERSION,
        }

    def mark_running(self, run_ids: Sequence[str], owner: Owner) -> None:
        """The group ``run_ids`` starts training in ``owner`` (finished rows stay as they are)."""
        now = _now()

        def work(conn):
            for chunk in in_chunks(list(run_ids)):
                conn.execute(update(Run).where(Run.run_id.in_(chunk), Run.status != "finished").values(
                    status="running", started_at=now, host=owner.host, pid=owner.pid,
                    process_start=owner.process_start))

        self._write(work)

    def save_results(self, results: Sequence[RunResult], owner: Owner) -> None:
        """Write finished runs, each with all its results, in one transaction (replacing any
        earlier results of the same run: the same identity gives the same results). A run that
        diverged is stored with status ``diverged``, where it happened and its last finite loss."""
        now = _now()
        payload = [(res, self._result_rows(res)) for res in results]

        def work(conn):
            _serialize_writers(conn)
            ids = [res.run_id for res, _ in payload]
            for table in RESULT_TABLES:
                for chunk in in_chunks(ids):
                    conn.execute(delete(table).where(table.run_id.in_(chunk)))
            present: set[str] = set()
            for chunk in in_chunks(ids):
                present.update(conn.execute(select(Run.run_id).where(Run.run_id.in_(chunk))).scalars())
            for res, rows in payload:
                div = res.divergence
                values = {
                    **self._run_row(res.config, "diverged" if div is not None else "finished", owner, now),
                    "finished_at": now, "device": res.device, "versions": dict(res.versions),
                    "class_names": list(res.class_names), "group_size": res.group_size, "wall_s": res.wall_s,
                    "error": None, "diverged_task": None if div is None else div.task,
                    "diverged_step": None if div is None else div.step,
                    "last_finite_loss": None if div is None else _finite_or_none([div.last_finite_loss])[0],
                }
                if res.run_id in present:
                    values.pop("created_at")
                    conn.execute(update(Run).where(Run.run_id == res.run_id).values(**values))
                else:
                    conn.execute(insert(Run).values(**values))
                for table, table_rows in rows.items():
                    if table_rows:
                        conn.execute(insert(table), table_rows)

        self._write(work)

    @staticmethod
    def _result_rows(res: RunResult) -> dict[type, list[dict]]:
        rid = res.run_id
        n_tasks = res.class_il.shape[0]
        accuracy = [
            {"run_id": rid, "setting": setting, "after_task": i, "on_task": j, "accuracy": float(mat[i, j]),
             "n_correct": int(correct[i, j]), "n_total": int(res.test_counts[j])}
            for setting, mat, correct in (("class_il", res.class_il, res.class_il_correct),
                                          ("task_il", res.task_il, res.task_il_correct),
                                          ("class_il_seen", res.class_il_seen, res.class_il_seen_correct))
            if mat is not None
            for i in range(n_tasks) for j in range(n_tasks)
        ]
        class_accuracy = [
            {"run_id": rid, "after_task": i, "class_index": k, "accuracy": v}
            for i in range(n_tasks) for k, v in enumerate(_finite_or_none(res.per_class_accuracy[i]))
        ]
        confidence = [
            {"run_id": rid, "after_task": i, "true_class": k, "probabilities": _finite_or_none(res.confidence[i, k])}
            for i in range(n_tasks) for k in range(res.confidence.shape[1])
        ]
        losses = [
            {"run_id": rid, "task": i, "term": term, "loss": _finite_or_none([values[i]])[0]}
            for term, values in res.train_loss.items() for i in range(len(values))
        ]
        timings = [
            {"run_id": rid, "task": i, "train_s": float(res.train_s[i]), "eval_s": float(res.eval_s[i])}
            for i in range(n_tasks)
        ]
        histograms = [
            {"run_id": rid, "after_task": i, "on_task": j, "kind": kind, "counts": [int(c) for c in counts[i, j]]}
            for kind, counts in res.histograms.items() for i in range(counts.shape[0]) for j in range(counts.shape[1])
        ]
        return {Accuracy: accuracy, ClassAccuracy: class_accuracy, Confidence: confidence, TaskLoss: losses,
                TaskTiming: timings, ConfidenceHistogram: histograms}

    def mark_interrupted(self, run_ids: Sequence[str], owner: Owner) -> None:
        """Runs of ``owner`` that were stopped before finishing (never another process's runs)."""
        self._finish_unfinished(run_ids, owner, "interrupted", None)

    def mark_failed(self, run_ids: Sequence[str], owner: Owner, error: str) -> None:
        """Runs of ``owner`` whose group raised ``error`` (the traceback)."""
        self._finish_unfinished(run_ids, owner, "failed", error)

    def _finish_unfinished(self, run_ids: Sequence[str], owner: Owner, status: str, error: str | None) -> None:
        now = _now()

        def work(conn):
            for chunk in in_chunks(list(run_ids)):
                conn.execute(update(Run).where(
                    Run.run_id.in_(chunk), Run.status.in_(ACTIVE_STATUSES),
                    Run.host == owner.host, Run.pid == owner.pid,
                ).values(status=status, finished_at=now, error=error))

        self._write(work)

    def mark_stale_runs(self) -> list[str]:
        """Mark ``interrupted`` the pending/running rows whose owner is gone: on this host, its
        process has ended; on another, its heartbeat is older than ``HEARTBEAT_TIMEOUT_S``.
        Returns their run ids."""
        now = _now()

        def work(conn):
            rows = conn.execute(select(Run.run_id, Run.host, Run.pid, Run.process_start, Run.heartbeat_at).where(
                Run.status.in_(ACTIVE_STATUSES))).all()
            stale = [r for r in rows if r.pid is not None and not _holder_alive(r, now)]
            for r in stale:
                conn.execute(update(Run).where(
                    Run.run_id == r.run_id, Run.status.in_(ACTIVE_STATUSES), Run.pid == r.pid, Run.host == r.host,
                ).values(status="interrupted", error=f"process {r.pid} on {r.host} ended before the run finished"))
            return [r.run_id for r in stale]

        return self._write(work)


@dataclass(frozen=True)
class Claim:
    """What :meth:`Store.claim` got: the runs this owner now computes, and those another live
    process holds (run id -> ``host pid N``), which this owner must leave alone."""

    claimed: tuple[str, ...]
    held: dict[str, str]


def _row_owner(row) -> Owner:
    return Owner(row.host or "", row.pid, row.process_start)


def shown_status(row: Mapping[str, Any], now: datetime | None = None) -> str:
    """The status a listing shows for a ``runs`` row (a mapping with its status and owner columns):
    the stored one, except that a ``pending``/``running`` row whose owner is gone (see
    :func:`_holder_alive`) is ``interrupted``, as :meth:`Store.mark_stale_runs` will mark it. Derived
    at read time, so that even a reader of read-only storage sees the truth."""
    status = row["status"]
    if status in ACTIVE_STATUSES and row["pid"] is not None:
        owner = _RowOwner(row["host"], row["pid"], row["process_start"], row["heartbeat_at"])
        if not _holder_alive(owner, now or _now()):
            return "interrupted"
    return status


@dataclass(frozen=True)
class _RowOwner:
    host: str | None
    pid: int | None
    process_start: int | None
    heartbeat_at: datetime | None


def _holder_alive(row, now: datetime) -> bool:
    """Whether the process holding an active row lives: its pid on this host (pid reuse ruled out
    by the start time); on another host, a heartbeat within ``HEARTBEAT_TIMEOUT_S``."""
    if row.pid is None:
        return False
    if (row.host or "") == socket.gethostname():
        return _row_owner(row).is_alive()
    beat = row.heartbeat_at
    if beat is None:
        return False
    if beat.tzinfo is None:  # SQLite keeps UTC without its zone
        beat = beat.replace(tzinfo=timezone.utc)
    return (now - beat).total_seconds() < HEARTBEAT_TIMEOUT_S

def open_store(db: str | os.PathLike | URL | None = None, *, create: bool = True, readonly: bool = False) -> Store:
    """Open the clbench database at ``db`` (URL or file path; default ``$CLBENCH_DB`` or
    ``results.db``), creating it and its schema when ``create`` and it does not exist yet, and
    migrating an older clbench database to this schema version.

    ``readonly`` opens it for reading only (SQLite files in ``mode=ro``) and implies not creating;
    an older schema is still migrated first, if the database can be written at all.
    Raises :class:`StoreError` when the database cannot be used; nothing is written then.
    """
    url = resolve_db_url(db)
    state = inspect_db(url)
    if state in ("missing", "empty") and (readonly or not create):
        raise StoreError(f"no clbench database at {describe_url(url)}: run `clbench run` first, or give --db")
    path = _sqlite_file(url)
    if not readonly and path is not None and path.exists() and not (
            os.access(path, os.W_OK) and os.access(path.absolute().parent, os.W_OK | os.X_OK)):
        # Found now rather than at the first write, after the work that was to be saved there.
        raise StoreError(f"cannot write the database {path}: it or its folder is not writable (no permission, or "
                         "read-only storage); reading it works (clbench runs, show, export, compare, report --no-run)")
    if state == "outdated":
        _upgrade(url)
    engine = _make_engine(url, readonly=readonly)
    store = Store(engine, url, readonly=readonly)
    if state in ("missing", "empty"):
        try:
            store.transaction(lambda conn: _create_schema(conn, describe_url(url)))
        except DBAPIError as exc:
            store.close()
            raise _connection_error(url, exc) from None
        except BaseException:
            store.close()
            raise
    return store


def _upgrade(url: URL) -> None:
    engine = _make_engine(url, readonly=False)
    try:
        with engine.begin() as conn:
            _migrate(conn, describe_url(url))
    except DBAPIError as exc:
        raise StoreError(f"{describe_url(url)} has an older clbench schema and could not be upgraded to version "
                         f"{SCHEMA_VERSION} ({first_line(exc)}): open it once with write access") from None
    finally:
        engine.dispose()


_SCHEMA_LOCK = 4721930183  # PostgreSQL advisory lock key: one process creates or migrates at a time
_RUNS_LOCK = 4721930184  # PostgreSQL advisory lock key: one process claims or saves runs at a time


def _serialize_writers(conn) -> None:
    """Claims and saves of concurrent processes take turns on PostgreSQL, as every SQLite write
    transaction does (BEGIN IMMEDIATE). Otherwise two processes claiming the same new runs both
    read "no row" and both insert it: one fails with a unique violation in the middle of psycopg's
    pipelined executemany (psycopg then logs "error ignored terminating <psycopg.Pipeline ...>:
    pipeline aborted") and takes another attempt. Taking turns, the second reads the first's rows
    (READ COMMITTED: the read follows the lock) and leaves the runs to it."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT pg_advisory_xact_lock({_RUNS_LOCK})"))


def _create_schema(conn, where: str) -> None:
    if conn.dialect.name == "postgresql":
        # Two processes creating the schema at once would race on PostgreSQL's catalogs.
        conn.execute(text(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})"))
    tables = set(inspect(conn).get_table_names())
    if tables:  # someone else created it meanwhile: check it is ours
        if _schema_state(conn, where) == "outdated":
            _migrate(conn, where)
        return
    Base.metadata.create_all(conn)
    conn.execute(insert(SchemaInfo).values(id=1, application=APPLICATION, version=SCHEMA_VERSION, created_at=_now()))
