"""The lease: which one of several daemons on one state database applies revisions, starts campaigns and runs
workflows (all of them send and serve).

A lease is a row of `leases`: its holder (a process id, with its host and pid), when it expires, and a generation
that goes up by one at every change of holder. The holder renews it every few seconds; anyone may take it when it
is free, expired, or held by a process on their own host that has exited (a restart after a kill does not wait for
the expiry). Every change is one statement that compares what it read (compare-and-set: the generation, and for a
takeover the expiry, which a renewal moves), so of two processes taking an expired lease at once exactly one gets
it, and a renewal that lands first keeps it; on either engine, without the writers' lock: a long write transaction
of the holder never keeps its own renewal waiting on PostgreSQL.

The generation fences: the holder's pass writes only while the lease row still names it at the generation it took
(`check`, run at the start of each of its write transactions by `state.db.fenced`), so a holder that stalled past
its expiry (a pause, a partition) and was replaced has its next write refused instead of interleaving with the new
holder's. Times are seconds since the epoch by each process's clock: hosts sharing a database keep their clocks in
step (NTP), as the dispatchers' heartbeats already assume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from reconciler.state.db import StateError
from reconciler.state.postgres import StateDatabase

RECONCILE = "reconcile"
"""The lease of the daemon that applies revisions, starts campaigns and runs workflows."""


class LeaseLost(StateError):
    """Another process holds the lease now: this one's pass stops writing and it stands by."""


@dataclass(frozen=True)
class Lease:
    """The lease as the database has it."""

    name: str
    holder: str | None
    host: str | None
    pid: int | None
    generation: int
    expires_at: float
    taken_at: str
    renewed_at: str

    def free_for(self, ident: str, *, now: float, host: str, alive: Callable[[int], bool]) -> bool:
        """Whether `ident` may take it now: nobody holds it, its holder let it expire, or its holder was a process
        on this host that has exited."""
        if self.holder is None or self.holder == ident or self.expires_at <= now:
            return True
        return self.host == host and self.pid is not None and not alive(self.pid)


@dataclass(frozen=True)
class Held:
    """This process holds the lease, at `generation`, until `expires_at` unless it renews."""

    name: str
    ident: str
    generation: int
    expires_at: float


def _stamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read(db: StateDatabase, name: str = RECONCILE) -> Lease | None:
    row = db.conn.execute(
        "SELECT name, holder, host, pid, generation, expires_at, taken_at, renewed_at FROM leases WHERE name = ?",
        (name,),
    ).fetchone()
    return None if row is None else Lease(*row)


def acquire(
    db: StateDatabase,
    ident: str,
    *,
    host: str,
    pid: int,
    now: float,
    ttl: float,
    alive: Callable[[int], bool],
    name: str = RECONCILE,
) -> Held | Lease:
    """Take the lease, or renew it if this process holds it; returns `Held`, or the lease as another holds it.
    Call it outside any transaction: each statement commits on its own."""
    current = read(db, name)
    if current is None:
        db.conn.execute(
            "INSERT OR IGNORE INTO leases(name, holder, host, pid, generation, expires_at, taken_at, renewed_at) "
            "VALUES (?, NULL, NULL, NULL, 0, 0, ?, ?)",
            (name, _stamp(now), _stamp(now)),
        )
        current = read(db, name)
        assert current is not None
    if current.holder == ident:
        renewed = renew(db, Held(name, ident, current.generation, current.expires_at), now=now, ttl=ttl)
        return renewed if renewed is not None else _lease(db, name)
    if not current.free_for(ident, now=now, host=host, alive=alive):
        return current
    taken = db.conn.execute(  # as read: not taken meanwhile (generation), nor renewed (expiry)
        "UPDATE leases SET holder = ?, host = ?, pid = ?, generation = generation + 1, expires_at = ?, "
        "taken_at = ?, renewed_at = ? WHERE name = ? AND generation = ? AND expires_at = ?",
        (ident, host, pid, now + ttl, _stamp(now), _stamp(now), name, current.generation, current.expires_at),
    ).rowcount
    if taken != 1:  # someone else changed it since it was read: theirs
        return _lease(db, name)
    return Held(name, ident, current.generation + 1, now + ttl)


def _lease(db: StateDatabase, name: str) -> Lease:
    found = read(db, name)
    assert found is not None
    return found


def renew(db: StateDatabase, held: Held, *, now: float, ttl: float) -> Held | None:
    """Push the expiry on; None when the lease is no longer this process's (it was taken over)."""
    renewed = db.conn.execute(
        "UPDATE leases SET expires_at = ?, renewed_at = ? WHERE name = ? AND holder = ? AND generation = ?",
        (now + ttl, _stamp(now), held.name, held.ident, held.generation),
    ).rowcount
    return Held(held.name, held.ident, held.generation, now + ttl) if renewed == 1 else None


def release(db: StateDatabase, held: Held, *, now: float) -> bool:
    """Let the lease go (a clean stop): a process standing by takes it at its next try, without waiting for the
    expiry. False when it was no longer this process's."""
    released = db.conn.execute(
        "UPDATE leases SET holder = NULL, host = NULL, pid = NULL, generation = generation + 1, expires_at = 0, "
        "renewed_at = ? WHERE name = ? AND holder = ? AND generation = ?",
        (_stamp(now), held.name, held.ident, held.generation),
    ).rowcount
    return released == 1


def check(db: StateDatabase, held: Held) -> None:
    """Inside a write transaction of the holder's pass: raise LeaseLost unless the lease still names this process at
    the generation it took (the fence `state.db.fenced` runs). Its expiry is not looked at: an expired lease that
    nobody took is still this process's to write under, and one that somebody took has a new generation."""
    row = db.conn.execute("SELECT holder, generation FROM leases WHERE name = ?", (held.name,)).fetchone()
    if row is None or (row[0], row[1]) != (held.ident, held.generation):
        holder = row[0] if row is not None and row[0] else "nobody"
        raise LeaseLost(
            f"the {held.name} lease was taken over by {holder} (generation {held.generation} -> "
            f"{row[1] if row is not None else '?'}); this process stands by"
        )
