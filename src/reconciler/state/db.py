"""Opening the state database: WAL, a busy timeout, foreign keys, and the schema brought up to date.

There is one writer at a time: every write runs in `write()`, a ``BEGIN IMMEDIATE`` transaction that takes the
write lock up front, so two processes (a daemon and a `tick`) queue on the lock instead of failing half-way.
"""

from __future__ import annotations

import _sqlite3
import ctypes
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlite_utils import Database

from reconciler.errors import ReconcilerError
from reconciler.state import location, postgres, postgres_schema
from reconciler.state.postgres import PostgresDatabase, StateDatabase
from reconciler.state.schema import STEPS, migrations

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
"""How long a write waits for the write lock another process holds before it fails."""
BUSY_STEP_MS = 2_000
"""SQLite's own wait per attempt: `write` tries again until BUSY_TIMEOUT_MS, so a stopping daemon can give up."""
GIVING_UP = threading.Event()
"""Set by a daemon whose SIGTERM grace period is over: writes waiting for the lock fail at their next attempt (an
interrupt does not end SQLite's wait for a lock), so the daemon stops within BUSY_STEP_MS."""
WAL_PAGES = 1_000
"""Pages (4 KB) the write-ahead log may hold before it is checkpointed: about 4 MB."""
BULK_WAL_PAGES = 10_000
WAL_LIMIT = 8 * 1024 * 1024
"""Bytes the write-ahead log file is cut back to after a checkpoint (it would otherwise keep its largest size)."""
CACHE_ENV = "RECONCILER_CACHE_MB"
DEFAULT_CACHE_MB = 64
POOLED_CACHE_SHARE = 1 / 16
"""Each connection of a pool (the web service's, up to 16: 8 readers and 8 writers) keeps this share: requests
touch a few rows each."""
STATE_FOLDER = ".state"


class StateError(ReconcilerError):
    """The state database cannot be used (unreadable, locked for too long, newer than this program)."""


class NoState(StateError):
    """There is no state database where the location points (a command that only reads was asked first)."""


NO_STATE_YET = "no state database here yet (run `reconciler apply` or import contacts first)"


def sqlite_memory() -> int | None:
    """Bytes SQLite holds in this process (page caches of every connection, statements, schemas), or None when the
    library cannot be asked. Page caches fill up to their bound (cache_size) as a process reads: /metrics shows this
    apart from the rest of the memory, so that a full cache is not taken for a leak, nor a leak hidden in it."""
    global _memory_used
    if _memory_used is None:
        try:  # through the module Python's sqlite3 is built on: the same library, whether linked or built in
            used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
        except (OSError, AttributeError):
            return None
        used.restype, used.argtypes = ctypes.c_int64, []
        _memory_used = used
    return int(_memory_used())


_memory_used: Callable[[], int] | None = None


def cache_kb(share: float = 1.0) -> int:
    """The page cache one connection may keep, in KB: RECONCILER_CACHE_MB (default 64) for a process's main
    connection, `share` of it for others. Each connection fills its own cache as it reads and never goes beyond it,
    so a daemon's memory grows with its database until the caches are full (about 2.25 times this, for the
    daemon's own connection, the send loop's quarter and sixteen web connections' sixteenths), then stays."""
    text = os.environ.get(CACHE_ENV, "")
    try:
        megabytes = int(text) if text else DEFAULT_CACHE_MB
    except ValueError:
        megabytes = -1
    if megabytes < 1:
        raise StateError(f"{CACHE_ENV}={text!r}: set it to a whole number of megabytes, 1 or more (default 64)")
    return max(256, int(megabytes * 1024 * share))


def keep_cache(db: StateDatabase, share: float) -> None:
    """Let this connection keep `share` of RECONCILER_CACHE_MB as its page cache (the send loop's: a quarter).
    PostgreSQL: nothing (its server keeps one cache for every connection)."""
    if isinstance(db, PostgresDatabase):
        return
    db.conn.execute(f"PRAGMA cache_size = -{cache_kb(share)}")


def open_postgres(conninfo: str, *, create: bool = True, migrate: bool = True) -> PostgresDatabase:
    """Connect to a PostgreSQL state database (a libpq URL or key=value string) and apply pending migrations,
    under the writers' lock, so two processes starting at once migrate once (the second finds nothing to do).
    `create=False`: a database no migration has run on yet is no state (NoState), as a missing SQLite file is."""
    shown = postgres.located(conninfo)
    import psycopg

    try:
        db = postgres.connect(conninfo, lock_timeout_ms=BUSY_TIMEOUT_MS)
    except psycopg.Error as exc:
        raise unreachable(shown, exc) from None
    try:
        if not create and not postgres_schema.applied(db, migrations.name):
            raise NoState(f"{shown.display()}: {NO_STATE_YET}")
        if migrate and pending_postgres(db):
            with write(db):
                postgres_schema.apply(db, migrations.name, STEPS)
    except psycopg.Error as exc:
        db.close()
        message = shown.scrub(str(exc).strip())
        raise StateError(f"{shown.display()}: cannot bring the state database up to date: {message}") from None
    except BaseException:
        db.close()
        raise
    return db


def unreachable(place: location.StateLocation, exc: Exception) -> StateError:
    """The error for a PostgreSQL state that cannot be connected to: where (without the password), libpq's
    reason, and what to check."""
    reason = " ".join(place.scrub(str(exc)).split())
    return StateError(
        f"{place.display()}: cannot connect to the state database: {reason} (check that the server runs and can be "
        "reached from here, and the user, password and database name in --state or RECONCILER_STATE)"
    )


def pending_postgres(db: PostgresDatabase) -> list[str]:
    """The names of the migrations a PostgreSQL state database lacks."""
    done = set(postgres_schema.applied(db, migrations.name))
    return [name for name, _ in STEPS if name not in done]


def open_db(
    path: Path, *, create: bool = True, migrate: bool = True, read_only: bool = False, bulk: bool = False
) -> Database:
    """Open (or create) the state database and apply pending migrations (`migrate=False`: a further connection
    of a process that migrated already). `bulk`: a process that writes a lot at once (an import) checkpoints less
    often, so hot pages are written once. `read_only`: the command only reads, so a database that cannot be written
    here (a read-only mount, a folder without write permission) is opened read-only instead of refused."""
    if not path.exists() and not create:
        raise NoState(f"{path}: {NO_STATE_YET}")
    if read_only and path.exists() and not _writable(path):
        return _open_read_only(path)
    new_folder, new_database = not path.parent.exists(), not path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StateError(
            f"{path.parent}: cannot create the state folder ({exc.strerror}): create it where it can be written, "
            "or choose another place with --state or RECONCILER_STATE"
        ) from None
    if not _writable(path):
        raise StateError(
            f"{path}: the state database cannot be written here (a read-only mount, or no write permission on the "
            "file or its folder, where SQLite keeps its journal): run this command where it can be written; "
            "status, plan, segments show and contacts export only read and work here"
        )
    if new_database and (new_folder or path.parent.name == STATE_FOLDER):
        _keep_out_of_git(path.parent)
    try:
        conn = sqlite3.connect(path, timeout=BUSY_STEP_MS / 1000, isolation_level=None, check_same_thread=False)
        db = Database(conn)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_STEP_MS}")
        db.enable_wal()
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: commits survive kill -9
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA cache_size = -{cache_kb()}")  # 64 MB by default: a million contacts' indexes stay hot
        # the write-ahead log is folded back into the database every WAL_PAGES pages and cut back to WAL_LIMIT bytes:
        # it stays a few MB beside any database, and a nearly full disk is not refilled by one large checkpoint
        conn.execute(f"PRAGMA wal_autocheckpoint = {BULK_WAL_PAGES if bulk else WAL_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
        if migrate:
            with write(db):  # under the write lock, so two processes starting at once migrate once
                migrations.apply(db)
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path}: cannot open the state database: {exc}") from exc
    return db


def _keep_out_of_git(folder: Path) -> None:
    """A `.gitignore` of `*` in the state's own folder: the database, its WAL and shared-memory files hold personal
    data, and a plain `git add -A` in the workspace must not commit them. Only a folder that is the state's own gets
    one (`.state`, or one made for the database just now), never a folder it shares with other files."""
    ignore = folder / ".gitignore"
    try:
        if not ignore.exists():
            ignore.write_text("*\n", encoding="utf-8")
    except OSError as exc:  # the database may still be written (a folder that refuses new files fails just below)
        log.warning("%s: could not write it (%s); keep %s out of git yourself", ignore, exc.strerror, folder)


def _writable(path: Path) -> bool:
    """SQLite writes the file and, beside it, its WAL and shared-memory files: both must be writable."""
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def _open_read_only(path: Path) -> Database:
    """The database opened for reading only. A WAL database needs its shared-memory file, which a read-only folder
    cannot hold; when no writes wait in the WAL (a clean shutdown, a backup) the file alone is the whole state and
    is opened as immutable."""
    uri = path.resolve().as_uri()
    try:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError:
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StateError(
                f"{path}: read-only here, with writes not yet merged into it ({wal.name}): copy the folder somewhere "
                "writable and read the copy, or let the process that writes it stop cleanly"
            ) from None
        conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None, check_same_thread=False)
    db = Database(conn)
    try:
        pending = migrations.pending(db)
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path}: cannot read the state database: {exc}") from exc
    if pending:
        raise StateError(
            f"{path}: written by an older version and read-only here; it needs migrating, which needs write "
            "access: run `reconciler apply` once where it can be written"
        )
    return db


POOL_IDLE = 60.0
"""Seconds a pooled connection may go unused before it is closed (a burst's connections do not stay open)."""


class ConnectionPool:
    """Connections to one state database for worker threads: each call takes a connection of its own, so a thread
    waiting for the write lock never holds up the others (reads never wait in WAL mode). As many are open as threads
    used it at once: the web service allows 8 readers and 8 writers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = location.StateLocation(path=path)
        self.idle: list[tuple[Database, float]] = []
        """Connections not in use, with when they were last given back, the most recently used last: it is taken
        first (LIFO), so light traffic keeps reusing one warm connection, and the others opened for a burst stay
        as they are instead of each filling its page cache in turn (a daemon at rest would otherwise creep up to
        the pool's whole cache). Those unused for POOL_IDLE seconds are closed (their descriptors and caches with
        them), all but the one light traffic uses."""
        self.opened: list[Database] = []
        self.lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[Database]:
        with self.lock:
            db = self.idle.pop()[0] if self.idle else None
        if db is None:
            db = open_db(self.path, create=False, migrate=False)
            db.conn.execute(f"PRAGMA cache_size = -{cache_kb(POOLED_CACHE_SHARE)}")  # small requests, not scans
            with self.lock:
                self.opened.append(db)
        try:
            yield db
        finally:
            if db.conn.in_transaction:  # a failed write never leaks its transaction into the next user
                db.conn.execute("ROLLBACK")
            self._give_back(db)

    def _give_back(self, db: Database) -> None:
        now = time.monotonic()
        with self.lock:
            stale = [old for old, at in self.idle if now - at > POOL_IDLE]
            self.idle = [(old, at) for old, at in self.idle if now - at <= POOL_IDLE] + [(db, now)]
            for old in stale:
                self.opened.remove(old)
        for old in stale:
            old.conn.close()

    def interrupt(self) -> None:
        """Abort whatever each connection is doing (waiting for a lock): the daemon is stopping."""
        with self.lock:
            for db in self.opened:
                db.conn.interrupt()

    def close(self) -> None:
        with self.lock:
            self.idle.clear()
            for db in self.opened:
                db.conn.close()
            self.opened.clear()


def empty_db() -> Database:
    """An empty state in memory: what `plan` compares with where there is no state database (as in CI)."""
    db = Database(memory=True)
    migrations.apply(db)
    return db


AnyDatabase = TypeVar("AnyDatabase", bound=StateDatabase)


@contextmanager
def write(db: AnyDatabase) -> Iterator[AnyDatabase]:
    """One write transaction holding the write lock from its first statement (``BEGIN IMMEDIATE``)."""
    if db.conn.in_transaction:  # nested: part of the caller's transaction
        yield db
        return
    _begin(db)
    with _transaction(db):
        yield db


@contextmanager
def write_rows(db: AnyDatabase) -> Iterator[AnyDatabase]:
    """A write transaction that changes only rows it locks itself (``SELECT … FOR UPDATE``), such as a dispatcher's
    claim of one ledger row: on PostgreSQL it does not take the writers' lock, so dispatchers of several daemons
    claim at once instead of queueing behind each other (or behind an apply); what it writes must not need
    that lock (no counters, no rows of other tables that other writers update). On SQLite, one writer at a time
    anyway: `write`."""
    if not isinstance(db, PostgresDatabase):
        with write(db):
            yield db
        return
    if db.conn.in_transaction:
        yield db
        return
    db.conn.execute("BEGIN")
    with _transaction(db):
        yield db


@contextmanager
def _transaction(db: StateDatabase) -> Iterator[None]:
    """The rest of a transaction just begun: the connection's fence first (`fenced`), then commit or roll back."""
    try:
        fence = _FENCES.get(id(db.conn))
        if fence is not None:
            fence(db)
        yield
    except BaseException:
        _roll_back(db)
        raise
    else:
        db.conn.execute("COMMIT")


def _roll_back(db: StateDatabase) -> None:
    """End the transaction a failure cut short, if it is still open: SQLite ends some itself (an interrupted
    write), and a lost PostgreSQL connection took its transaction with it."""
    if db.conn.in_transaction:
        db.conn.execute("ROLLBACK")


_FENCES: dict[int, Callable[[StateDatabase], None]] = {}
"""The fence of each connection that has one (by the connection's id, for as long as `fenced` is entered)."""


def is_fenced(db: StateDatabase) -> bool:
    """Whether the connection's write transactions check a fence (`fenced`): a write that is a statement on its
    own, outside `write`/`write_rows`, would go past it."""
    return id(db.conn) in _FENCES


@contextmanager
def fenced(db: StateDatabase, check: Callable[[StateDatabase], None]) -> Iterator[None]:
    """Every write transaction on `db` begun inside runs `check` first, holding the write lock: the lease
    holder's pass refuses to write once another process took the lease over (`check` raises), so a holder that
    stalled past its lease never writes beside the new one."""
    key = id(db.conn)
    if key in _FENCES:
        raise RuntimeError("this connection is fenced already")
    _FENCES[key] = check
    try:
        yield
    finally:
        del _FENCES[key]


@contextmanager
def bulk_writes(db: StateDatabase) -> Iterator[None]:
    """Many write transactions in a row (a runner pass advancing thousands of runs): the write-ahead log is
    checkpointed every BULK_WAL_PAGES pages meanwhile, as an import's is, instead of every few transactions, so the
    pages they all touch (an index's last leaves, its inner pages) are copied back once; then as before (the
    log is cut back to WAL_LIMIT at its next checkpoint). Commits are as durable either way. PostgreSQL: nothing."""
    if isinstance(db, PostgresDatabase):
        yield
        return
    before = int(db.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    db.conn.execute(f"PRAGMA wal_autocheckpoint = {max(before, BULK_WAL_PAGES)}")
    try:
        yield
    finally:
        db.conn.execute(f"PRAGMA wal_autocheckpoint = {before}")


def roll_back_cut_off(db: StateDatabase) -> None:
    """A transaction a signal cut off between its BEGIN and its end (Ctrl-C in an import's batch), rolled back.
    On PostgreSQL the signal may also have cut a statement off half-way, between sending it and reading its answer
    (psycopg cancels only the statement it is waiting on): that connection takes no other command, so it is closed
    (the server rolls its transaction back; the write's own ROLLBACK may have closed it already) and a new one
    opened."""
    if isinstance(db, PostgresDatabase) and (db.lost or db.conn.mid_statement) and db.reopen is not None:
        db.conn.close()
        db.reconnect()
        return
    if db.conn.in_transaction:
        db.conn.execute("ROLLBACK")


@contextmanager
def snapshot(db: AnyDatabase) -> Iterator[AnyDatabase]:
    """Reads that see one moment of the state and cannot change it: a read transaction (a plan's several queries
    agree with each other while the daemon writes beside them) on a connection made `query_only` for the time,
    so even a bug in the code that runs here cannot write (a plan asked for over HTTP must change nothing). On
    PostgreSQL: a read-only transaction at repeatable read (one moment for all its statements)."""
    if isinstance(db, PostgresDatabase):
        db.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        try:
            yield db
        finally:
            _roll_back(db)
        return
    db.conn.execute("PRAGMA query_only = ON")
    try:
        db.conn.execute("BEGIN")
        try:
            yield db
        finally:
            _roll_back(db)
    finally:
        db.conn.execute("PRAGMA query_only = OFF")


def _begin(db: StateDatabase) -> None:
    """Take the write lock, waiting up to BUSY_TIMEOUT_MS for another process to let it go (in steps, so that a
    stopping daemon gives up at once)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or GIVING_UP.is_set() or time.monotonic() >= deadline:
                raise


def get_meta(db: StateDatabase, key: str) -> str | None:
    row = db.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(db: StateDatabase, key: str, value: str) -> None:
    db.conn.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


class StaleState(StateError):
    """The state changed between observing it and applying a plan made from it (another process applied first)."""


def claim_serial(db: StateDatabase, expected: int) -> None:
    """Inside a write: fail if someone applied since `expected` was observed, else move the serial on."""
    current = int(get_meta(db, "serial") or 0)
    if current != expected:
        raise StaleState(f"the state changed while planning (serial {expected} -> {current}); plan again")
    set_meta(db, "serial", str(current + 1))


def bump_serial(db: StateDatabase) -> None:
    set_meta(db, "serial", str(int(get_meta(db, "serial") or 0) + 1))


def audit(
    db: StateDatabase, *, at: str, actor: str, subject: str, action: str, detail: str = "", revision: str | None = None
) -> None:
    db.conn.execute(
        "INSERT INTO audit(at, revision, actor, subject, action, detail) VALUES (?, ?, ?, ?, ?, ?)",
        (at, revision, actor, subject, action, detail or None),
    )
