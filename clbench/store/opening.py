"""Opening the registry: what is at an address (:func:`inspect_db`), and a :class:`Store` on it
(:func:`open_store`), creating the database and its schema, or migrating an older one, first.

A database written by another clbench version, or one that is not a clbench database at all, is
refused with a :class:`StoreError` before anything is written. Schema versions are migrated in place
(``clbench.store.migrations``) by the first process that opens an older database for writing; tables
added since are created the same way.
"""

from __future__ import annotations

import os

from sqlalchemy import insert, inspect
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from clbench.errors import first_line
from clbench.store.connection import (
    StoreError,
    connection_error,
    describe_url,
    make_engine,
    resolve_db_url,
    serialize_schema_changes,
    sqlite_file,
)
from clbench.store.migrations import migrate, schema_state
from clbench.store.schema import APPLICATION, SCHEMA_VERSION, Base, SchemaInfo, utc_now
from clbench.store.store import Store

_SQLITE_HEADER = b"SQLite format 3\x00"


def inspect_db(db: str | os.PathLike | URL | None = None) -> str:
    """The state of the database at ``db`` without creating or changing anything.

    Returns ``"missing"`` (no file yet; its folder exists), ``"empty"`` (exists, has no tables),
    ``"outdated"`` (a clbench database of an older schema version: :func:`open_store` migrates it)
    or ``"ready"`` (a clbench database of this schema version). Raises :class:`StoreError` for a
    database that cannot be reached, is not a clbench database, or has another schema version.
    """
    url = resolve_db_url(db)
    path = sqlite_file(url)
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
            raise StoreError(
                f"{path} is not a clbench database (it is not an SQLite file); "
                "give another --db path or move the file away"
            )
    engine = make_engine(url, readonly=True)
    try:
        with engine.connect() as conn:
            return schema_state(conn, describe_url(url))
    except StoreError:
        raise
    except DBAPIError as exc:
        raise connection_error(url, exc) from None
    finally:
        engine.dispose()


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
    path = sqlite_file(url)
    if (
        not readonly
        and path is not None
        and path.exists()
        and not (os.access(path, os.W_OK) and os.access(path.absolute().parent, os.W_OK | os.X_OK))
    ):
        # Found now rather than at the first write, after the work that was to be saved there.
        raise StoreError(
            f"cannot write the database {path}: it or its folder is not writable (no permission, or "
            "read-only storage); reading it works (clbench runs, show, export, compare, report --no-run)"
        )
    if state == "outdated":
        _upgrade(url)
    engine = make_engine(url, readonly=readonly)
    store = Store(engine, url, readonly=readonly)
    if state in ("missing", "empty"):
        try:
            store.transaction(lambda conn: _create_schema(conn, describe_url(url)))
        except DBAPIError as exc:
            store.close()
            raise connection_error(url, exc) from None
        except BaseException:
            store.close()
            raise
    return store


def _upgrade(url: URL) -> None:
    engine = make_engine(url, readonly=False)
    try:
        with engine.begin() as conn:
            migrate(conn, describe_url(url))
    except DBAPIError as exc:
        raise StoreError(
            f"{describe_url(url)} has an older clbench schema and could not be upgraded to version "
            f"{SCHEMA_VERSION} ({first_line(exc)}): open it once with write access"
        ) from None
    finally:
        engine.dispose()


def _create_schema(conn, where: str) -> None:
    serialize_schema_changes(conn)  # two processes creating the schema at once would race on PostgreSQL
    tables = set(inspect(conn).get_table_names())
    if tables:  # someone else created it meanwhile: check it is ours
        if schema_state(conn, where) == "outdated":
            migrate(conn, where)
        return
    Base.metadata.create_all(conn)
    conn.execute(insert(SchemaInfo).values(id=1, application=APPLICATION, version=SCHEMA_VERSION, created_at=utc_now()))
