"""The web service's rate limits and ended dashboard sessions in the state database (`web_limits`,
`signed_out`), so that every daemon serving HTTP from one PostgreSQL database counts the same sign-in attempts,
wrong tokens and subscribe-form posts, and refuses a session signed out on any of them. (On SQLite the web service
keeps them in memory, `web.security.RateLimit`: one daemon serves from one file.)

A limit allows at most `limit` events per key (a client address, an email address) in any `window` seconds, as
the memory version does: a row per limit and key holds the times of the events still in the window (a JSON
array, at most `limit` of them) and when the last of them leaves it (`expires_at`). Counting an event is one
short transaction that locks only that row (PostgreSQL: no writers' lock); two daemons counting for one address
at once wait for each other, so together they never allow more than one would.

Times are seconds since the epoch by each process's clock (hosts sharing a database keep their clocks in step),
not a monotonic clock, which means nothing to another host. A row whose events have all left the window, and a
sign-out past its session's expiry, are deleted by `prune`, a batch at a time: a flood of addresses cannot grow
the tables for ever.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from reconciler.state.db import write_rows
from reconciler.state.portable import is_postgres
from reconciler.state.postgres import StateDatabase

PRUNED_AT_ONCE = 1_000
"""Rows `prune` deletes at most in one statement (of each table): a short statement, whatever piled up."""

_LOCK = (  # makes the row or locks it as it is (an update of nothing but its own expiry takes the row's lock)
    "INSERT INTO web_limits(name, key, events, expires_at) VALUES (?, ?, '[]', ?) "
    "ON CONFLICT (name, key) DO UPDATE SET expires_at = web_limits.expires_at"
)
_EVENTS = "SELECT events FROM web_limits WHERE name = ? AND key = ?"


def take(db: StateDatabase, name: str, key: str, *, limit: int, window: float, now: float) -> int:
    """Count an event for `key` under the limit `name` (at most `limit` in any `window` seconds) and return 0 when
    it is allowed; else count nothing and return the seconds until it would be (at least 1)."""
    with write_rows(db):
        db.conn.execute(_LOCK, (name, key, now))
        events = _in_window(db, name, key, window=window, now=now)
        seconds = window_wait(events, limit=limit, window=window, now=now)
        if not seconds:
            events.append(now)
        _store(db, name, key, events, window=window)
    return seconds


def wait(db: StateDatabase, name: str, key: str, *, limit: int, window: float, now: float) -> int:
    """The seconds until an event for `key` would be allowed (0: it would be now), counting nothing."""
    return window_wait(_in_window(db, name, key, window=window, now=now), limit=limit, window=window, now=now)


def window_wait(events: Sequence[float], *, limit: int, window: float, now: float) -> int:
    """The seconds until one more event is allowed (0: now) when `events`, oldest first, are those in the window:
    until the oldest leaves it, at least 1. The one rule of a sliding window, for memory and database alike."""
    return max(1, math.ceil(events[0] + window - now)) if len(events) >= limit else 0


def refund(db: StateDatabase, name: str, key: str, *, window: float, now: float) -> None:
    """Take back the last event counted for `key` (it turned out not to be one that counts)."""
    with write_rows(db):
        db.conn.execute(_LOCK, (name, key, now))  # locked as `take` locks it (a row made here holds nothing)
        events = _in_window(db, name, key, window=window, now=now)
        if events:
            events.pop()
        _store(db, name, key, events, window=window)


def sign_out(db: StateDatabase, session: str, *, expires_at: float) -> None:
    """Refuse the session `session` (a digest of its cookie) from now until `expires_at`, when it would have
    expired anyway."""
    db.conn.execute("INSERT OR IGNORE INTO signed_out(session, expires_at) VALUES (?, ?)", (session, expires_at))


def signed_out(db: StateDatabase, session: str, *, now: float) -> bool:
    """The session (a digest of its cookie) was signed out and has not expired yet."""
    found = db.conn.execute("SELECT 1 FROM signed_out WHERE session = ? AND expires_at > ?", (session, now)).fetchone()
    return found is not None


def prune(db: StateDatabase, *, now: float) -> int:
    """Delete up to PRUNED_AT_ONCE rows of each table that hold nothing any more (every event out of its window, a
    sign-out past its session's expiry); returns how many went. Each delete is a statement of its own that skips
    rows another process has locked (PostgreSQL), so it waits for no one and no one waits for it for long."""
    skip = " FOR UPDATE SKIP LOCKED" if is_postgres(db) else ""
    deleted = 0
    for table, keys in (("web_limits", "name, key"), ("signed_out", "session")):
        cursor = db.conn.execute(
            f"DELETE FROM {table} WHERE expires_at <= ? AND ({keys}) IN "  # noqa: S608 - names from this module
            f"(SELECT {keys} FROM {table} WHERE expires_at <= ? LIMIT ?{skip})",
            (now, now, PRUNED_AT_ONCE),
        )
        deleted += max(0, cursor.rowcount)
    return deleted


def _in_window(db: StateDatabase, name: str, key: str, *, window: float, now: float) -> list[float]:
    """The times of the key's events still in the window, oldest first."""
    row = db.conn.execute(_EVENTS, (name, key)).fetchone()
    if row is None:
        return []
    return sorted(float(at) for at in json.loads(str(row[0])) if float(at) > now - window)


def _store(db: StateDatabase, name: str, key: str, events: list[float], *, window: float) -> None:
    """The key's events written back with the time the last of them leaves the window (its row may go then)."""
    expires_at = events[-1] + window if events else 0.0
    db.conn.execute(
        "UPDATE web_limits SET events = ?, expires_at = ? WHERE name = ? AND key = ?",
        (json.dumps(events), expires_at, name, key),
    )
