"""Opening the state database: WAL, a busy timeout, foreign keys, and the schema brought up to date.

There is one writer at a time: every write runs in `write()`, a ``BEGIN IMMEDIATE`` transaction that takes the
write lock up front, so two processes (a daemon and a `tick`) queue on the lock instead of failing half-way.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlite_utils import Database

from reconciler.errors import ReconcilerError
from reconciler.state.schema import migrations

BUSY_TIMEOUT_MS = 30_000
POOLED_CACHE_KB = 8_000
"""The page cache of each connection of a pool (the web service's): requests touch a few rows each."""
DEFAULT_PATH = ".state/reconciler.db"


class StateError(ReconcilerError):
    """The state database cannot be used (unreadable, locked for too long, newer than this program)."""


def state_path(workspace: Path, override: Path | str | None = None) -> Path:
    """`--state`, else `RECONCILER_STATE`, else `.state/reconciler.db` under the workspace."""
    chosen = override or os.environ.get("RECONCILER_STATE")
    return Path(chosen) if chosen else workspace / DEFAULT_PATH


def open_db(path: Path, *, create: bool = True, migrate: bool = True) -> Database:
    """Open (or create) the state database and apply pending migrations (`migrate=False`: a further connection
    of a process that migrated already)."""
    if not path.exists() and not create:
        raise StateError(f"{path}: no state database here yet (run `reconciler apply` or import contacts first)")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        db = Database(conn)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.enable_wal()
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: commits survive kill -9
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA cache_size = -65536")  # up to 64 MB of pages: indexes over a million contacts stay hot
        conn.execute("PRAGMA wal_autocheckpoint = 10000")  # fewer, larger checkpoints: hot pages written once
        if migrate:
            with write(db):  # under the write lock, so two processes starting at once migrate once
                migrations.apply(db)
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path}: cannot open the state database: {exc}") from exc
    return db


class ConnectionPool:
    """Connections to one state database for worker threads: each call takes a connection of its own, so a thread
    waiting for the write lock never holds up the others (reads never wait in WAL mode); at most `size` are open."""

    def __init__(self, path: Path, *, size: int = 8) -> None:
        self.path, self.size = path, size
        self.idle: queue.SimpleQueue[Database] = queue.SimpleQueue()
        self.opened: list[Database] = []
        self.lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[Database]:
        try:
            db = self.idle.get_nowait()
        except queue.Empty:
            db = open_db(self.path, create=False, migrate=False)
            db.conn.execute(f"PRAGMA cache_size = -{POOLED_CACHE_KB}")  # many small requests, not big scans
            with self.lock:
                self.opened.append(db)
        try:
            yield db
        finally:
            if db.conn.in_transaction:  # a failed write never leaks its transaction into the next user
                db.conn.execute("ROLLBACK")
            self.idle.put(db)

    def close(self) -> None:
        with self.lock:
            while True:
                try:
                    self.idle.get_nowait()
                except queue.Empty:
                    break
            for db in self.opened:
                db.conn.close()
            self.opened.clear()


def empty_db() -> Database:
    """An empty state in memory: what `plan` compares with where there is no state database (as in CI)."""
    db = Database(memory=True)
    migrations.apply(db)
    return db


@contextmanager
def write(db: Database) -> Iterator[Database]:
    """One write transaction holding the write lock from its first statement (``BEGIN IMMEDIATE``)."""
    if db.conn.in_transaction:  # nested: part of the caller's transaction
        yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.conn.execute("ROLLBACK")
        raise
    else:
        db.conn.execute("COMMIT")


def get_meta(db: Database, key: str) -> str | None:
    row = db.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(db: Database, key: str, value: str) -> None:
    db.conn.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


class StaleState(StateError):
    """The state changed between observing it and applying a plan made from it (another process applied first)."""


def claim_serial(db: Database, expected: int) -> None:
    """Inside a write: fail if someone applied since `expected` was observed, else move the serial on."""
    current = int(get_meta(db, "serial") or 0)
    if current != expected:
        raise StaleState(f"the state changed while planning (serial {expected} -> {current}); plan again")
    set_meta(db, "serial", str(current + 1))


def bump_serial(db: Database) -> None:
    set_meta(db, "serial", str(int(get_meta(db, "serial") or 0) + 1))


def audit(
    db: Database, *, at: str, actor: str, subject: str, action: str, detail: str = "", revision: str | None = None
) -> None:
    db.conn.execute(
        "INSERT INTO audit(at, revision, actor, subject, action, detail) VALUES (?, ?, ?, ?, ?, ?)",
        (at, revision, actor, subject, action, detail or None),
    )
