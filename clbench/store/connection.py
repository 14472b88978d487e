"""Reaching the registry: its address, an SQLAlchemy engine for its backend, and transactions that get
past the conflicts of concurrent processes.

The address is any SQLAlchemy URL, or a file path for an SQLite file (default ``results.db`` in the
working directory, or ``$CLBENCH_DB``); PostgreSQL is the other backend clbench is tested on.

Concurrency: SQLite runs in WAL mode with a busy timeout and ``BEGIN IMMEDIATE`` write
transactions (so two writers queue instead of dead-locking); on PostgreSQL, claims and saves of runs
take turns under an advisory lock (:func:`serialize_writers`), as do schema changes. Every
transaction is retried on "database is locked", PostgreSQL serialization failures, deadlocks and
insert races (:func:`run_transaction`). Nothing here creates a database or writes to one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, OperationalError

from clbench.errors import StoreError, first_line
from clbench.store.basics import SQLITE_BUSY_TIMEOUT_S, connect_readonly

DEFAULT_DB = "results.db"
ENV_DB = "CLBENCH_DB"
_RETRIES = 8
_IN_CHUNK = 500  # ids per IN (...) list: far below SQLite's and PostgreSQL's parameter limits
_SCHEMA_LOCK = 4721930183  # PostgreSQL advisory lock key: one process creates or migrates at a time
_RUNS_LOCK = 4721930184  # PostgreSQL advisory lock key: one process claims or saves runs at a time

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Addresses (nothing here creates or writes anything)


def resolve_db_url(db: str | os.PathLike | URL | None = None, env: Mapping[str, str] | None = None) -> URL:
    """``db`` (a SQLAlchemy URL or a file path), else ``$CLBENCH_DB``, else ``results.db``.

    A path becomes an SQLite URL of its absolute path, so the registry's address does not depend on a
    later change of the working directory.
    """
    if isinstance(db, URL):
        return db
    env = os.environ if env is None else env
    raw = os.fspath(db) if db is not None else (env.get(ENV_DB) or DEFAULT_DB)
    if "://" in raw:
        try:
            return make_url(raw)
        except ArgumentError:
            raise StoreError(
                f"invalid database URL {raw!r}: give a file path or a SQLAlchemy URL such as "
                "sqlite:///results.db or postgresql+psycopg://user@host/dbname"
            ) from None
    return URL.create("sqlite", database=str(Path(raw).expanduser().absolute()))


def is_in_memory(url: URL) -> bool:
    """An SQLite database that lives in the process's memory (``sqlite://``, ``:memory:``): it keeps
    nothing once the process ends."""
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return database in ("", ":memory:") or database.startswith("file::memory:") or url.query.get("mode") == "memory"


def describe_url(url: URL) -> str:
    """The URL as shown to people: the file for SQLite, the URL without its password otherwise."""
    if sqlite_file(url) is not None:
        return str(sqlite_file(url))
    return url.render_as_string(hide_password=True)


def sqlite_path(db: str | os.PathLike | URL | None) -> Path | None:
    """The file of an SQLite registry (``None`` for a database server or an in-memory SQLite)."""
    return sqlite_file(resolve_db_url(db))


def sqlite_file(url: URL) -> Path | None:
    """The file of an SQLite URL (``None`` for another backend or an in-memory SQLite)."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def connection_error(url: URL, exc: Exception) -> StoreError:
    return StoreError(f"cannot open the database {describe_url(url)}: {first_line(exc)}")


# ---------------------------------------------------------------------------------------------
# Engines


def make_engine(url: URL, *, readonly: bool) -> Engine:
    """An engine for ``url``; raises :class:`StoreError` for an unsupported URL or a missing driver."""
    backend = url.get_backend_name()
    try:
        if backend == "sqlite":
            return _sqlite_engine(url, readonly=readonly)
        connect_args: dict[str, Any] = {}
        if backend == "postgresql":
            connect_args["connect_timeout"] = 10
        return create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    except NoSuchModuleError:
        raise StoreError(
            f"unsupported database URL {describe_url(url)}: valid are file paths, sqlite:///... and "
            "postgresql+psycopg://... URLs"
        ) from None
    except ImportError as exc:
        raise StoreError(
            f"the database driver for {describe_url(url)} is not installed (no module {exc.name!r}); "
            "install it, e.g. for PostgreSQL: pip install 'psycopg[binary]'"
        ) from None


def _sqlite_engine(url: URL, *, readonly: bool) -> Engine:
    path = sqlite_file(url)
    if readonly and path is not None:
        engine = create_engine("sqlite://", creator=lambda: connect_readonly(path))
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


# ---------------------------------------------------------------------------------------------
# Transactions


def run_transaction(engine: Engine, work: Callable[[Any], T], where: str) -> T:
    """Run ``work(connection)`` in one transaction on ``engine`` (the database shown as ``where``),
    retrying transient conflicts; a damaged SQLite file is a :class:`StoreError`."""
    delay = 0.05
    for attempt in range(_RETRIES):
        try:
            with engine.begin() as conn:
                return work(conn)
        except DBAPIError as exc:
            if _damaged(exc):
                raise StoreError(
                    f"the database {where} is damaged ({first_line(exc)}): restore it from a "
                    "backup, or recover what is readable with: sqlite3 FILE .recover"
                ) from None
            if _not_utf8(exc):
                raise _not_utf8_error(where, exc) from None
            if attempt == _RETRIES - 1 or not _transient(exc):
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


def _transient(exc: Exception) -> bool:
    """Errors that a fresh attempt of the same transaction can get past."""
    if isinstance(exc, IntegrityError):  # two writers inserted the same new row at once
        return True
    if not isinstance(exc, (OperationalError, DBAPIError)):
        return False
    message = str(getattr(exc, "orig", exc)).lower()
    code = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return (
        "database is locked" in message
        or "database is busy" in message
        or code in ("40001", "40P01", "55P03")  # serialization failure, deadlock, lock not available
    )


def _damaged(exc: Exception) -> bool:
    """SQLite's errors for a file whose pages are corrupt: no retry or other query gets past them."""
    message = str(getattr(exc, "orig", exc)).lower()
    return (
        "database disk image is malformed" in message
        or "file is not a database" in message
        or "malformed database schema" in message
    )


def _not_utf8(exc: Exception) -> bool:
    """SQLite's error for a text value whose bytes are not UTF-8 (written outside clbench, or a
    damaged page): every read of that row fails the same way."""
    return "could not decode to utf-8" in str(getattr(exc, "orig", exc)).lower()


def _not_utf8_error(where: str, exc: Exception) -> StoreError:
    shown = "".join(c if c.isprintable() else "?" for c in first_line(exc, limit=120))  # no escape codes
    return StoreError(
        f"the database {where} holds text that is not valid UTF-8 ({shown}): it was "
        "changed outside clbench or is damaged; restore it from a backup, or correct that value with the "
        "sqlite3 shell"
    )


def serialize_writers(conn) -> None:
    """Claims and saves of concurrent processes take turns on PostgreSQL, as every SQLite write
    transaction does (BEGIN IMMEDIATE). Otherwise two processes claiming the same new runs both
    read "no row" and both insert it: one fails with a unique violation in the middle of psycopg's
    pipelined executemany (psycopg then logs "error ignored terminating <psycopg.Pipeline ...>:
    pipeline aborted") and takes another attempt. Taking turns, the second reads the first's rows
    (READ COMMITTED: the read follows the lock) and leaves the runs to it."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT pg_advisory_xact_lock({_RUNS_LOCK})"))


def serialize_schema_changes(conn) -> None:
    """Processes creating or migrating the schema take turns on PostgreSQL (they would race on its
    catalogs); SQLite's write transactions are exclusive already."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})"))


def in_chunks(items: Sequence[T], size: int = _IN_CHUNK) -> Iterable[Sequence[T]]:
    """``items`` in slices short enough for one ``IN (...)`` list."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
