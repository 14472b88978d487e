"""Who runs a run, and whether that process still lives.

The process that claims a run records its host, pid and process start time in the run's row
(:class:`Owner`) and keeps a heartbeat (``heartbeat_at``, refreshed every ``HEARTBEAT_INTERVAL_S``).
A ``pending``/``running`` row whose process is gone is abandoned: on this host, its pid has ended
(a reused pid is told apart by its start time); elsewhere, its heartbeat is older than
``HEARTBEAT_TIMEOUT_S``. A listing shows an abandoned row as ``interrupted`` (:func:`shown_status`),
as ``Store.mark_stale_runs`` marks it; a run held by a live process is never claimed by another.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clbench.store.basics import ACTIVE_STATUSES, utc_now

HEARTBEAT_INTERVAL_S = 60.0  # how often a running sweep refreshes the heartbeat of its runs
HEARTBEAT_TIMEOUT_S = 600.0  # a run on another host with an older heartbeat is abandoned


def process_start(pid: int) -> int | None:
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
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, process_start(pid))

    def is_alive(self) -> bool:
        """Whether the process still runs (only decidable on its own host; elsewhere: assumed;
        for other hosts, :func:`holder_alive` decides by the heartbeat in the registry)."""
        if self.host != socket.gethostname():
            return True
        if not _pid_alive(self.pid):
            return False
        start = process_start(self.pid)
        return self.process_start is None or start is None or start == self.process_start


def row_owner(row) -> Owner:
    """The owner recorded in a ``runs`` row (any object with its host, pid and process_start)."""
    return Owner(row.host or "", row.pid, row.process_start)


def shown_status(row: Mapping[str, Any], now: datetime | None = None) -> str:
    """The status a listing shows for a ``runs`` row (a mapping with its status and owner columns):
    the stored one, except that a ``pending``/``running`` row whose owner is gone (see
    :func:`holder_alive`) is ``interrupted``, as :meth:`Store.mark_stale_runs` will mark it. Derived
    at read time, so that even a reader of read-only storage sees the truth."""
    status = row["status"]
    if status in ACTIVE_STATUSES and row["pid"] is not None:
        owner = _RowOwner(row["host"], row["pid"], row["process_start"], row["heartbeat_at"])
        if not holder_alive(owner, now or utc_now()):
            return "interrupted"
    return status


@dataclass(frozen=True)
class _RowOwner:
    host: str | None
    pid: int | None
    process_start: int | None
    heartbeat_at: datetime | None


def holder_alive(row, now: datetime) -> bool:
    """Whether the process holding an active row lives: its pid on this host (pid reuse ruled out
    by the start time); on another host, a heartbeat within ``HEARTBEAT_TIMEOUT_S``."""
    if row.pid is None:
        return False
    if (row.host or "") == socket.gethostname():
        return row_owner(row).is_alive()
    beat = row.heartbeat_at
    if beat is None:
        return False
    if beat.tzinfo is None:  # SQLite keeps UTC without its zone
        beat = beat.replace(tzinfo=UTC)
    return (now - beat).total_seconds() < HEARTBEAT_TIMEOUT_S
