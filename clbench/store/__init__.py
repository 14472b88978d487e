"""The registry of runs: every run is a row in a SQL database (SQLite or PostgreSQL).

What a user of the registry needs is named here. The modules inside, each holding one thing:

- ``basics``: ``SCHEMA_VERSION``, the status vocabularies and read-only SQLite connections (no SQLAlchemy);
- ``schema``: the tables;
- ``connection``: database URLs, engines for SQLite and PostgreSQL, transactions retried past conflicts;
- ``migrations``: the chain of steps that brings an older schema version to this one;
- ``ownership``: which process holds a run, and whether it still lives;
- ``rows``: a run's results as table rows, and back;
- ``store``: :class:`Store`, a run's lifecycle (claim, run, save, mark) and reading one run;
- ``opening``: :func:`inspect_db` and :func:`open_store` (creating or migrating the schema first);
- ``listing``: :func:`list_runs`, the rows ``clbench runs`` prints (an SQLite file read without
  SQLAlchemy or pandas); its filters and ordering are those of ``queries`` too;
- ``queries``: runs as DataFrames, and summaries over seeds; ``exports``: runs into files;
  ``mlflow``: runs into an MLflow tracking store.

Modules inside clbench import from those modules, not from here.
"""

from clbench.errors import StoreError

# Each name is imported when first asked for (PEP 562): a module of this package that needs no
# SQLAlchemy (``basics``, ``listing``: ``clbench runs`` on an SQLite file) must not load it with the package.
_WHERE = {
    "describe_url": "connection",
    "is_in_memory": "connection",
    "resolve_db_url": "connection",
    "sqlite_path": "connection",
    "inspect_db": "opening",
    "open_store": "opening",
    "Owner": "ownership",
    "shown_status": "ownership",
    "ACTIVE_STATUSES": "basics",
    "DONE_STATUSES": "basics",
    "STATUSES": "basics",
    "Store": "store",
    "list_runs": "listing",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # noqa: PLC0415

    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


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
    "list_runs",
    "open_store",
    "resolve_db_url",
    "shown_status",
    "sqlite_path",
]
