"""The registry of runs: every run is a row in a SQL database (SQLite or PostgreSQL).

What a user of the registry needs is named here. The modules inside, each holding one thing:

- ``schema``: the tables, ``SCHEMA_VERSION`` and the status vocabularies;
- ``connection``: database URLs, engines for SQLite and PostgreSQL, transactions retried past conflicts;
- ``migrations``: the chain of steps that brings an older schema version to this one;
- ``ownership``: which process holds a run, and whether it still lives;
- ``rows``: a run's results as table rows, and back;
- ``store``: :class:`Store`, a run's lifecycle (claim, run, save, mark) and reading one run;
- ``opening``: :func:`inspect_db` and :func:`open_store` (creating or migrating the schema first);
- ``queries``: runs as DataFrames, and summaries over seeds; ``exports``: runs into files;
  ``mlflow``: runs into an MLflow tracking store.

Modules inside clbench import from those modules, not from here.
"""

from clbench.store.connection import StoreError, describe_url, is_in_memory, resolve_db_url, sqlite_path
from clbench.store.opening import inspect_db, open_store
from clbench.store.ownership import Owner, shown_status
from clbench.store.schema import ACTIVE_STATUSES, DONE_STATUSES, STATUSES
from clbench.store.store import Store

__all__ = [
    "ACTIVE_STATUSES",
    "DONE_STATUSES",
    "STATUSES",
    "Owner",
    "Store",
    "StoreError",
    "describe_url",
    "inspect_db",
    "is_in_memory",
    "open_store",
    "resolve_db_url",
    "shown_status",
    "sqlite_path",
]
