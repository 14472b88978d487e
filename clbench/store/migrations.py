"""Schema versions: what version a registry has, and the chain of steps that brings an older one to
``SCHEMA_VERSION`` in place.

The first process that opens an older database for writing migrates it (``clbench.store.opening``),
in one transaction: the version steps, then every table this clbench has and the database lacks
(a new table still raises the version, with a step that may do nothing, and goes into
``schema.TABLE_SINCE``; it is created here).

A table missing from a database whose version should have it (``schema.TABLE_SINCE``) is damage,
not age: the database is refused, never patched with an empty table.

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
from clbench.store.schema import APPLICATION, SCHEMA_VERSION, TABLE_NAMES, TABLE_SINCE, Base, SchemaInfo


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
    """Schema 2 -> 3: the accuracy table's ``split`` (``test`` for every existing row: runs were
    evaluated on the test sets only), part of its primary key."""
    columns = "run_id, setting, after_task, on_task, accuracy, n_correct, n_total"
    if conn.dialect.name == "postgresql":
        conn.execute(text("ALTER TABLE accuracy ADD COLUMN split VARCHAR(16) NOT NULL DEFAULT 'test'"))
        name = conn.execute(
            text("SELECT conname FROM pg_constraint WHERE conrelid = 'accuracy'::regclass AND contype = 'p'")
        ).scalar_one()
        conn.execute(text(f'ALTER TABLE accuracy DROP CONSTRAINT "{name}"'))
        conn.execute(text("ALTER TABLE accuracy ADD PRIMARY KEY (run_id, split, setting, after_task, on_task)"))
        return
    # SQLite cannot change a primary key: the table is rebuilt under its new definition.
    conn.execute(text("ALTER TABLE accuracy RENAME TO accuracy_schema2"))
    Base.metadata.tables["accuracy"].create(conn)
    conn.execute(text(f"INSERT INTO accuracy ({columns}, split) SELECT {columns}, 'test' FROM accuracy_schema2"))
    conn.execute(text("DROP TABLE accuracy_schema2"))


def to_version_4(conn) -> None:
    """Schema 3 -> 4: the class order as a column (from each run's config: its ``class_order_seed``,
    0 where it has none, as every run had before ``--class-order``)."""
    conn.execute(text("ALTER TABLE runs ADD COLUMN class_order INTEGER"))
    conn.execute(text("CREATE INDEX ix_runs_class_order ON runs (class_order)"))
    conn.execute(text("UPDATE runs SET class_order = 0"))
    runs = Base.metadata.tables["runs"]
    for run_id, config in conn.execute(select(runs.c.run_id, runs.c.config)):
        order = (config or {}).get("class_order_seed")
        if order:
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(class_order=int(order)))


def to_version_5(conn) -> None:
    """Schema 4 -> 5: the cluster job (a SLURM job id) that computes a pending or running run, so
    that a driver started again finds it instead of submitting the run's group twice."""
    conn.execute(text("ALTER TABLE runs ADD COLUMN job_id VARCHAR(64)"))


# The version each step brings a database to -> the step. Append a new version's step at the end.
STEPS: dict[int, Callable[[Any], None]] = {
    2: to_version_2,
    3: to_version_3,
    4: to_version_4,
    5: to_version_5,
}

if sorted(STEPS) != list(range(2, SCHEMA_VERSION + 1)):  # a version without its step, or a step too many
    raise RuntimeError(
        f"clbench.store.migrations.STEPS covers the versions {sorted(STEPS)}, but "
        f"SCHEMA_VERSION is {SCHEMA_VERSION}: give every version from 2 to it one step"
    )


if set(TABLE_SINCE) != TABLE_NAMES or max(TABLE_SINCE.values()) > SCHEMA_VERSION:
    raise RuntimeError(
        "clbench.store.schema.TABLE_SINCE must give every table of the schema the version it appeared in "
        f"(at most {SCHEMA_VERSION}); it lacks {sorted(TABLE_NAMES - set(TABLE_SINCE))}"
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
    dropped = sorted(t for t in TABLE_NAMES - tables if TABLE_SINCE[t] <= row.version)
    if dropped:  # re-created empty, its runs would be served from the cache without their results
        raise StoreError(
            f"{where} lacks the table{'s' if len(dropped) > 1 else ''} {', '.join(dropped)} that its schema "
            f"version {row.version} has (dropped by hand, or damaged): restore the database from a backup, "
            "or give another --db"
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
