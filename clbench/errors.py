"""An exception as the one line a person reads (the first line of its message), for every error
clbench reports: bad input, a damaged database, a failed group, an unreadable checkpoint; and
``StoreError``, here so that the command line can name it without loading a database driver."""

from __future__ import annotations


def first_line(exc: BaseException, *, with_type: bool = False, limit: int | None = None) -> str:
    """The first line of ``exc``'s message (of the driver's own error for a database error that wraps
    one, SQLAlchemy's ``orig``), at most ``limit`` characters; with ``with_type``, as
    ``TypeName: line``. An exception without a message is its type's name."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    line = lines[0] if lines else ""
    if limit is not None and len(line) > limit:
        line = line[: limit - 3] + "..."
    if not line:
        return type(exc).__name__
    return f"{type(exc).__name__}: {line}" if with_type else line


class StoreError(Exception):
    """The database cannot be used: unreachable, not a clbench database, another schema version.

    The message is one line meant for the person running clbench.
    """
