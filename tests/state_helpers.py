"""The state a test's workspace uses, on the engine of the test run, and changing it as the product's own paths do.

The suite runs twice (`make test`): on SQLite (each workspace's `.state/reconciler.db`), then with
RECONCILER_TEST_ENGINE=postgresql, where every test that uses a state gets a fresh PostgreSQL database of its own
(conftest's `engine_state`, made from a migrated template on the session's throwaway cluster). A test reaches its
state through these helpers, not through a file, so that the same assertions run on both engines:

- `place(root)`: where the workspace's state is (the file, or the test's database);
- `open_state(root)`: that state opened (created, migrated) as the commands open it;
- `query(root, sql, *params)`: rows of one statement, in SQLite's dialect (`?` parameters), on either engine;
- `state_env()`: what a child process (`reconciler …`, a daemon) needs in its environment to use it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from reconciler.state.db import write
from reconciler.state.engine import open_state as _open_state
from reconciler.state.location import ENV, StateLocation
from reconciler.state.portable import is_postgres
from reconciler.state.postgres import PostgresDatabase, StateDatabase, connect
from reconciler.state.subscribers import Status, change_subscriptions
from reconciler.state.suppressions import SuppressionReason, email_hash, suppress

AT = "2026-11-24T11:00:00Z"
ENGINE_ENV = "RECONCILER_TEST_ENGINE"
"""`postgresql`: the PostgreSQL pass of the suite (`make test` runs it after the SQLite one)."""
SQLITE_FILE = ".state/reconciler.db"

current_url: str | None = None
"""The PostgreSQL database of the test running now (set by conftest's `engine_state`), None on SQLite."""
module_url: str | None = None
"""The PostgreSQL database a module-scoped fixture built a state in (conftest's `module_state`): its tests use it."""


def on_postgres() -> bool:
    """This is the PostgreSQL pass of the suite."""
    return os.environ.get(ENGINE_ENV, "sqlite") == "postgresql"


def place(root: Path) -> StateLocation:
    """Where the state of the workspace at `root` is on this pass: its SQLite file, or the test's database."""
    if current_url is not None:
        return StateLocation(conninfo=current_url)
    return StateLocation(path=root / SQLITE_FILE)


def state_arg(root: Path) -> str:
    """The workspace's state as `--state` names it: the file's path, or the database's URL."""
    return current_url if current_url is not None else str(root / SQLITE_FILE)


def exists(root: Path) -> bool:
    """The workspace has a state (on PostgreSQL, the test's database always exists)."""
    return current_url is not None or (root / SQLITE_FILE).exists()


def state_env() -> dict[str, str]:
    """The environment a child process needs to use the test's state (nothing on SQLite: the workspace's own)."""
    return {ENV: current_url} if current_url is not None else {}


_opened: list[StateDatabase] = []


def open_state(root: Path) -> StateDatabase:
    """The workspace's state, created and migrated where it is not yet (as `reconciler run` opens it). Closed at
    the end of the test (`close_opened`) where the test leaves it open."""
    db = _open_state(place(root))
    _opened.append(db)
    return db


def close_opened() -> None:
    """Close what `open_state` opened during the test: a PostgreSQL connection left to the garbage collector
    warns (a ResourceWarning, an error in this suite), a SQLite one does not."""
    while _opened:
        _opened.pop().close()


@contextmanager
def connected(root: Path) -> Iterator[StateDatabase]:
    """The workspace's state for the statements of a `with` block (each commits on its own), closed after."""
    db = open_state(root)
    try:
        yield db
    finally:
        db.close()


def query(root: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """The rows of one statement (SQLite's dialect: `?` parameters) on the workspace's state; a write commits."""
    db = open_state(root)
    try:
        return [tuple(row) for row in db.execute(sql, params).fetchall()]
    finally:
        db.close()


def dump(root: Path) -> list[str]:
    """Every row of every table of the workspace's state, as text, in order: equal dumps, equal content."""
    with connected(root) as db:
        if isinstance(db, Database):
            tables = [str(row[0]) for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        else:
            tables = [
                str(row[0])
                for row in db.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
                )
            ]
        lines: list[str] = []
        for table in sorted(tables):
            rows = [repr(tuple(row)) for row in db.execute(f'SELECT * FROM "{table}"')]  # noqa: S608 (a table's name)
            lines += [f"{table}: {row}" for row in sorted(rows)]
        return lines


REFUSE = """
CREATE TABLE IF NOT EXISTS test_refused (tbl text PRIMARY KEY, deletes integer NOT NULL);
CREATE OR REPLACE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM test_refused WHERE tbl IN (TG_TABLE_NAME, '*') AND (TG_OP <> 'DELETE' OR deletes = 1)) THEN
    RAISE EXCEPTION 'not authorized: the test refuses this write to %', TG_TABLE_NAME;
  END IF;
  RETURN COALESCE(NEW, OLD);
END $$;
"""


def _trigger_every_table(db: PostgresDatabase, script: str, function: str, when: str) -> None:
    """`script` (which creates the trigger function `function`) run, then that function made a row trigger of every
    table of the PostgreSQL state, run `when` ("BEFORE", "AFTER") each insert, update and delete."""
    db.conn.run_script(script)
    for table in _tables(db):
        db.conn.run_script(
            f'CREATE TRIGGER {function} {when} INSERT OR UPDATE OR DELETE ON "{table}" '
            f"FOR EACH ROW EXECUTE FUNCTION {function}()"
        )


class RefusedWrites:
    """Writes the state database refuses while a test says so, as a failing disk or a broken database would: on
    SQLite through the connection's authorizer (that connection only; a statement is refused as it is prepared), on
    PostgreSQL through a trigger on each row of every table that raises while a row of `test_refused` names it
    (every connection; switched from a connection of its own, so that it takes effect at once, whatever the code
    under test holds)."""

    def __init__(self, db: StateDatabase) -> None:
        self.db = db
        if isinstance(db, Database):
            return
        _trigger_every_table(db, REFUSE, "test_refuse", "BEFORE")

    def refuse(self, table: str | None = None, *, deletes: bool = False) -> None:
        """From now on, inserts and updates of `table` (None: of every table; `deletes`: deletes too) fail."""
        if isinstance(self.db, Database):
            self.db.conn.set_authorizer(partial(_deny, table, deletes))
            return
        with connected_to(self.db) as switch:
            switch.execute("INSERT INTO test_refused (tbl, deletes) VALUES (?, ?)", (table or "*", int(deletes)))

    def allow(self) -> None:
        """Every write goes through again."""
        if isinstance(self.db, Database):
            self.db.conn.set_authorizer(None)
            return
        with connected_to(self.db) as switch:
            switch.execute("DELETE FROM test_refused")


COUNT = """
CREATE TABLE test_writes (n bigint NOT NULL);
INSERT INTO test_writes (n) VALUES (0);
CREATE FUNCTION test_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE test_writes SET n = n + 1;
  RETURN NULL;
END $$;
"""


class RowWrites:
    """How many rows have been inserted, updated or deleted so far: SQLite's `total_changes` of the connection;
    on PostgreSQL, a count a trigger on each table keeps (every connection's writes)."""

    def __init__(self, db: StateDatabase) -> None:
        self.db = db
        if isinstance(db, Database):
            return
        _trigger_every_table(db, COUNT, "test_count", "AFTER")

    def count(self) -> int:
        if isinstance(self.db, Database):
            return self.db.conn.total_changes
        return int(self.db.execute("SELECT n FROM test_writes").fetchone()[0])


def _tables(db: PostgresDatabase) -> list[str]:
    """The state's tables (not the tests' own, `test_…`)."""
    return [
        str(row[0])
        for row in db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
            "AND table_type = 'BASE TABLE' AND table_name NOT LIKE 'test\\_%'"
        )
    ]


def _deny(table: str | None, deletes: bool, action: int, name: str | None, *_: object) -> int:
    actions = {sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_INSERT} | ({sqlite3.SQLITE_DELETE} if deletes else set())
    if action in actions and name is not None and (table is None or name == table):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


@contextmanager
def connected_to(db: PostgresDatabase) -> Iterator[PostgresDatabase]:
    """A further connection to the PostgreSQL database `db` is on."""
    assert db.place is not None and db.place.conninfo is not None
    other = connect(db.place.conninfo, lock_timeout_ms=30_000)
    try:
        yield other
    finally:
        other.close()


def set_status(db: StateDatabase, email: str, list_name: str, status: Status, *, at: str = AT) -> None:
    """One contact's subscription to one list, with its consent record, as the web service writes it."""
    with write(db):
        contact_id = db.conn.execute("SELECT id FROM contacts WHERE email = ?", (email,)).fetchone()[0]
        change_subscriptions(db, contact_id, {list_name: status}, at=at, source="test")


def suppress_address(db: StateDatabase, email: str, reason: SuppressionReason, *, at: str = AT) -> None:
    with write(db):
        suppress(db, email_hash(email), reason, at=at)


def recorded_statements(db: Any) -> tuple[list[tuple[str, Any]], Callable[[], None]]:
    """The statements `db` runs from now on, with their parameters (SQLite: as run, values in the text), and how
    to stop recording them."""
    seen: list[tuple[str, Any]] = []
    if is_postgres(db):
        execute = db.conn.execute

        def recording(sql: str, params: Any = None) -> Any:
            seen.append((sql, params))
            return execute(sql, params)

        db.conn.execute = recording
        return seen, lambda: setattr(db.conn, "execute", execute)
    db.conn.set_trace_callback(lambda sql: seen.append((sql, None)))
    return seen, lambda: db.conn.set_trace_callback(None)
