"""The daemons running on one state database: each registers when it starts, beats every few seconds with its
health, and goes when it stops cleanly; `status` and `/metrics` list them with the lease holder.

A process whose heartbeat is older than `SILENT` is not listed as live (it was killed, or its host is gone); its row
is forgotten after `FORGOTTEN`. Statements commit on their own, without the writers' lock on PostgreSQL (each
process writes only its own row), so a beat is never kept waiting by a long apply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta

from reconciler.state.postgres import StateDatabase

SILENT = timedelta(seconds=30)
"""A process that has not beaten for this long is not counted as running."""
FORGOTTEN = timedelta(days=1)


def pid_alive(pid: int) -> bool:
    """Whether a process of this host still exists: a daemon killed here is known gone at once, without waiting
    for its heartbeat to fall silent."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


@dataclass(frozen=True)
class Process:
    """A daemon as it said it was at its last beat."""

    id: str
    host: str
    pid: int
    role: str
    started_at: str
    heartbeat_at: str
    status: str


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def register(db: StateDatabase, process: Process) -> None:
    db.conn.execute(
        "INSERT INTO processes(id, host, pid, role, started_at, heartbeat_at, status) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, status = excluded.status",
        (process.id, process.host, process.pid, process.role, process.started_at, process.heartbeat_at, process.status),
    )


def beat(db: StateDatabase, process: Process, *, at: datetime, status: str) -> None:
    """Still running, with its health now (registering again if its row went missing)."""
    register(db, Process(process.id, process.host, process.pid, process.role, process.started_at, _iso(at), status))


def unregister(db: StateDatabase, ident: str) -> None:
    db.conn.execute("DELETE FROM processes WHERE id = ?", (ident,))


def live(db: StateDatabase, *, now: datetime) -> list[Process]:
    """Processes that beat within SILENT of `now`, oldest first."""
    rows = db.conn.execute(
        "SELECT id, host, pid, role, started_at, heartbeat_at, status FROM processes WHERE heartbeat_at >= ? "
        "ORDER BY started_at, id",
        (_iso(now - SILENT),),
    )
    return [Process(*row) for row in rows]


def prune(db: StateDatabase, *, now: datetime) -> int:
    """Forget the rows of processes silent for FORGOTTEN (killed long ago)."""
    return int(db.conn.execute("DELETE FROM processes WHERE heartbeat_at < ?", (_iso(now - FORGOTTEN),)).rowcount)
