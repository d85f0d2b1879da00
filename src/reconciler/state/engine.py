"""The state where `--state` points, on either engine, behind one interface: what the commands, the daemon and the
web service use instead of asking which engine it is.

- `open_state(place)` opens (creates, migrates) it; `open_existing(place)` is None where there is no state yet (no
  SQLite file; a PostgreSQL database no migration has run on), for the commands that work without one.
- `connection_pool(place)` gives each worker thread a connection of its own: `state.db.ConnectionPool` for a
  SQLite file, `PostgresPool` (over psycopg-pool's) for PostgreSQL; both `connection()`, `interrupt()`, `close()`.
- `unavailable_errors(place)`: what a failure to use the state now looks like on its engine (the write lock held
  too long, a statement cancelled, the server gone): the web service answers 503 to them.
- `revive(db)`: the daemon's loops call it before each pass, so a PostgreSQL connection the server closed (a
  restart, a failover) is made again; while it cannot be, the pass fails and is reported like any other.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.state.db import BUSY_TIMEOUT_MS, POOL_IDLE, ConnectionPool, NoState, StateError, open_db, open_postgres
from reconciler.state.db import unreachable as unreachable_error
from reconciler.state.location import StateLocation
from reconciler.state.postgres import PostgresDatabase, StateDatabase, connection_options

if TYPE_CHECKING:
    import psycopg

POOL_MAX = 20
"""Connections the web service may hold on PostgreSQL: its 8 readers and 8 writers, and the few reads beside them
(a metrics scrape, the engagement writer's flush)."""
POOL_WAIT = 5.0
"""Seconds a request waits for a connection before it is answered 503 (the server cannot be reached)."""


def place_of(state: StateLocation | Path) -> StateLocation:
    """A location, also from a plain path (a SQLite file, as callers named it before there were two engines)."""
    return state if isinstance(state, StateLocation) else StateLocation(path=state)


def open_state(
    place: StateLocation, *, create: bool = True, migrate: bool = True, read_only: bool = False, bulk: bool = False
) -> StateDatabase:
    """The state at `place`, migrated (`migrate=False`: a further connection of a process that migrated already).
    `create=False`: NoState where there is none yet. `read_only` and `bulk` are SQLite's (`state.db.open_db`): a
    PostgreSQL reader opens as any other (its reads run in `snapshot`, which cannot write), and its checkpoints
    are the server's."""
    if place.conninfo is not None:
        return open_postgres(place.conninfo, create=create, migrate=migrate)
    assert place.path is not None
    return open_db(place.path, create=create, migrate=migrate, read_only=read_only, bulk=bulk)


def open_existing(place: StateLocation, *, read_only: bool = False) -> StateDatabase | None:
    """The state at `place`, or None where there is none yet; a server that cannot be reached is a StateError."""
    try:
        return open_state(place, create=False, read_only=read_only)
    except NoState:
        return None


def unavailable_errors(place: StateLocation) -> tuple[type[Exception], ...]:
    """What "the state database cannot take this now" raises on the engine at `place`: SQLite's OperationalError
    (locked, busy, interrupted, a full disk) or psycopg's (a lock timeout, a cancelled statement, a lost or refused
    connection, no pooled connection in time), and StateError."""
    errors: tuple[type[Exception], ...] = (sqlite3.OperationalError, StateError)
    if place.is_postgres:
        import psycopg

        errors += (psycopg.OperationalError,)
    return errors


def revive(db: StateDatabase) -> None:
    """A PostgreSQL connection the server closed, made again (StateError while the server cannot be reached).
    Nothing on SQLite, nor on a connection that works."""
    if not isinstance(db, PostgresDatabase) or not db.lost:
        return
    import psycopg

    try:
        db.reconnect()
    except psycopg.Error as exc:
        raise unreachable_error(db.place or StateLocation(conninfo=""), exc) from None


def database_bytes(db: StateDatabase) -> int | None:
    """The size of a PostgreSQL state database on its server (None on SQLite: its files are on this disk)."""
    if not isinstance(db, PostgresDatabase):
        return None
    row = db.conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0])


class PostgresPool:
    """Connections to a PostgreSQL state for worker threads, from psycopg-pool's pool (opened in the background:
    a server down at start delays nothing), each handed out as a `PostgresDatabase`. A connection the server
    closed is found out by the pool's check and replaced; a request that cannot get one within POOL_WAIT seconds
    fails with psycopg-pool's PoolTimeout (an OperationalError: 503)."""

    def __init__(self, place: StateLocation, *, max_size: int = POOL_MAX) -> None:
        from psycopg_pool import ConnectionPool as Pool

        assert place.conninfo is not None
        self.location = place
        self.busy: set[psycopg.Connection[Any]] = set()
        """Connections handed out now: `interrupt` cancels what they run."""
        self.lock = threading.Lock()
        self.pool: Pool[psycopg.Connection[Any]] = Pool(
            place.conninfo,
            kwargs=connection_options(place.conninfo),
            min_size=1,
            max_size=max_size,
            open=False,
            configure=_configure,
            check=Pool.check_connection,
            timeout=POOL_WAIT,
            max_idle=POOL_IDLE,
            name="reconciler",
        )
        self.pool.open(wait=False)

    @contextmanager
    def connection(self) -> Iterator[PostgresDatabase]:
        with self.pool.connection() as raw:
            with self.lock:
                self.busy.add(raw)
            db = PostgresDatabase(raw, place=self.location)
            try:
                yield db
            finally:
                with self.lock:
                    self.busy.discard(raw)
                if db.conn.in_transaction:  # a failed write never leaks its transaction into the next user
                    with suppress(Exception):
                        db.conn.execute("ROLLBACK")

    def interrupt(self) -> None:
        """Cancel what each connection handed out is running (waiting for the writers' lock): the daemon stops."""
        with self.lock:
            busy = list(self.busy)
        for raw in busy:
            PostgresDatabase(raw).conn.interrupt()

    def close(self) -> None:
        self.pool.close(timeout=1.0)


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Each new pooled connection waits for a lock as long as the state's own connections do."""
    conn.execute(f"SET lock_timeout = {int(BUSY_TIMEOUT_MS)}")


StatePool = ConnectionPool | PostgresPool
"""Connections for worker threads, on either engine."""


def connection_pool(state: StateLocation | Path) -> StatePool:
    """The pool for the state at `state`: SQLite's (a connection per thread, opened on demand) or PostgreSQL's."""
    place = place_of(state)
    if place.conninfo is not None:
        return PostgresPool(place)
    assert place.path is not None
    return ConnectionPool(place.path)
