"""The registry of runs: every run is a row in a SQL database (SQLite or PostgreSQL).

What a user of the store needs is named here; the modules inside hold the schema, the
connection (engines and migrations), run ownership, the ``Store`` itself, and the queries and
exports built on it.
"""

from clbench.store.store import (
    ACTIVE_STATUSES,
    DONE_STATUSES,
    STATUSES,
    Owner,
    Store,
    StoreError,
    describe_url,
    inspect_db,
    is_in_memory,
    open_store,
    resolve_db_url,
    shown_status,
    sqlite_path,
)

__all__ = [
    "ACTIVE_STATUSES", "DONE_STATUSES", "STATUSES", "Owner", "Store", "StoreError", "describe_url", "inspect_db",
    "is_in_memory", "open_store", "resolve_db_url", "shown_status", "sqlite_path",
]
