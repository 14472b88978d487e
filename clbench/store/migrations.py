"""Schema versions: what version a registry has, and the chain of steps that brings an older one to
``SCHEMA_VERSION`` in place.

The first process that opens an older database for writing migrates it (``clbench.store.opening``),
in one transaction: the version steps, then every table this clbench has and the database lacks
(a new table needs no step: it is created here, and a database without it is "outdated").

Adding schema version N:

1. in ``clbench.store.schema``, add the new columns (commented "Added in schema version N") and set
   ``SCHEMA_VERSION = N``;
2. here, write ``to_version_N(conn)`` below the last step, altering what exists (new tables are
   created anyway) and filling the new columns of existing rows;
3. append ``N: to_version_N`` to ``STEPS``.

Each step runs in the migrating transaction, on SQLite and on PostgreSQL alike (write its SQL for
both: :func:`timestamp_type`, :func:`float_type`). Steps of versions that were released are never
changed: a database of any version walks the same chain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import inspect, select, text, update

from clbench.store.connection import StoreError, serialize_schema_changes
from clbench.store.schema import APPLICATION, SCHEMA_VERSION, TABLE_NAMES, Base, SchemaInfo


def timestamp_type(conn) -> str:
    """The SQL type of a ``DateTime(timezone=True)`` column on this connection's backend."""
    return "TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql" else "DATETIME"


def float_type(conn) -> str:
    """The SQL type of a ``Float`` column on this connection's backend."""
    return "DOUBLE PRECISION" if conn.dialect.name == "postgresql" else "FLOAT"


# ---------------------------------------------------------------------------------------------
# The steps, oldest first: ``to_version_N`` brings a database of version N - 1 to version N.


def to_version_2(conn) -> None:
    """Schema 1 -> 2: the results version (1 for every existing row: they were computed by
    clbench 0.1.0), the owner's heartbeat and where a run diverged."""
    for column, sql_type in (
        ("results_version", "INTEGER"),
        ("heartbeat_at", timestamp_type(conn)),
        ("diverged_task", "INTEGER"),
        ("diverged_step", "INTEGER"),
        ("last_finite_loss", float_type(conn)),
    ):
        conn.execute(text(f"ALTER TABLE runs ADD COLUMN {column} {sql_type}"))
    conn.execute(text("UPDATE runs SET results_version = 1"))


def to_version_3(conn) -> None:
    """Schema 2 -> 3: the cluster job (a SLURM job id) that computes a pending or running run, so
    that a driver started again finds it instead of submitting the run's group twice."""
    conn.execute(text("ALTER TABLE runs ADD COLUMN job_id VARCHAR(64)"))


# The version each step brings a database to -> the step. Append a new version's step at the end.
STEPS: dict[int, Callable[[Any], None]] = {
    2: to_version_2,
    3: to_version_3,
}

if sorted(STEPS) != list(range(2, SCHEMA_VERSION + 1)):  # a version without its step, or a step too many
    raise RuntimeError(
        f"clbench.store.migrations.STEPS covers the versions {sorted(STEPS)}, but "
        f"SCHEMA_VERSION is {SCHEMA_VERSION}: give every version from 2 to it one step"
    )


# ---------------------------------------------------------------------------------------------
# Checking and migrating


def schema_state(conn, where: str) -> str:
    """``empty``, ``ready`` or ``outdated`` (an older schema version, or tables added since missing);
    raises :class:`StoreError` for a database that is not clbench's or is newer than this clbench."""
    tables = set(inspect(conn).get_table_names())
    if not tables:
        return "empty"
    if SchemaInfo.__tablename__ not in tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise StoreError(
            f"{where} is not a clbench database (it has the tables {shown} and no clbench_schema); give another --db"
        )
    row = conn.execute(select(SchemaInfo.application, SchemaInfo.version)).first()
    if row is None or row.application != APPLICATION:
        raise StoreError(f"{where} is not a clbench database (its clbench_schema table has no clbench row)")
    if row.version > SCHEMA_VERSION:
        raise StoreError(
            f"{where} was written by a newer clbench (schema version {row.version}; this clbench "
            f"reads version {SCHEMA_VERSION}): upgrade clbench or use another --db"
        )
    if row.version < SCHEMA_VERSION or TABLE_NAMES - tables:
        return "outdated"
    return "ready"


def migrate(conn, where: str) -> None:
    """Bring an older clbench database to ``SCHEMA_VERSION`` in one transaction: the version steps,
    then every table this clbench has and the database lacks. Safe against a concurrent migrator
    (an advisory lock on PostgreSQL; SQLite's write transactions are exclusive already)."""
    serialize_schema_changes(conn)
    if schema_state(conn, where) != "outdated":  # someone else migrated it meanwhile
        return
    version = conn.execute(select(SchemaInfo.version)).scalar_one()
    while version < SCHEMA_VERSION:
        version += 1
        STEPS[version](conn)
    Base.metadata.create_all(conn, checkfirst=True)
    conn.execute(update(SchemaInfo).values(version=SCHEMA_VERSION))
