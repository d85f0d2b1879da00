"""A SQLite state database copied into an empty PostgreSQL one (`reconciler state migrate --to postgresql://…`), and
verified before it is committed.

Both databases are first brought up to date by the one migration history, so they have the same tables and columns
(the copy refuses to start otherwise). Then, in one transaction on PostgreSQL holding the writers' lock, and in one
read transaction on SQLite (one moment of the source, even with a daemon writing beside it):

- the target must be empty: no row in any table but the migration record, which is what a database the migrations
  just created holds (they seed nothing else); a database with anything in it is refused, never overwritten or
  mixed with the copy;
- every table is copied in foreign-key order (parents first) with COPY in binary format, in batches, each value as
  the Python value SQLite gives (INTEGER, REAL, TEXT, BLOB: BIGINT, DOUBLE PRECISION, TEXT, BYTEA there), ids
  included; the migration record is replaced by the source's, so the copy carries its history;
- the typed rows of fields and properties, which only PostgreSQL keeps (state/typed_values.py), are written from
  the contacts and events copied, in one statement each, not copied;
- each identity sequence is moved past the largest id copied, so new rows get fresh ids;
- each table is read back from PostgreSQL and compared with what was read from SQLite: its number of rows, and a
  checksum of every value of every row (`Checksum`). Any difference, or any error on the way, rolls everything
  back: the target is left as empty as it was.
"""

from __future__ import annotations

import graphlib
import hashlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database

from reconciler.state.db import StateError, open_postgres, snapshot, write
from reconciler.state.postgres import PostgresDatabase
from reconciler.state.postgres_load import InvalidJson, set_aside
from reconciler.state.postgres_schema import RECORD
from reconciler.state.typed_values import TYPED_TABLES

if TYPE_CHECKING:
    import psycopg

BATCH = 10_000
"""Rows read, written and reported on at a time."""
DIGEST_BYTES = 16
MODULUS = 1 << (8 * DIGEST_BYTES)

Progress = Callable[[str, str, int, int], None]
"""Told (phase: "copy" or "verify", table, rows done, rows in all) after each batch."""


class CopyError(StateError):
    """The state could not be copied; nothing was written to the target."""


class TargetNotEmpty(CopyError):
    """The PostgreSQL database already holds a state (or anything else): it is not overwritten."""


class CopyMismatch(CopyError):
    """What PostgreSQL holds after the copy differs from the SQLite state; the copy was rolled back."""


def row_text(row: Sequence[object]) -> str:
    """A row's values as text that tells any two different rows apart: Python's repr of the tuple. A float is
    written with the shortest digits that read back as the same double (0.1 and 0.1000000000000001 differ, 1 and
    1.0 differ), None apart from 'None', bytes apart from text, and every character of a text (JSON included)
    as it is, or escaped where not printable. Both drivers give a stored value as the same Python value (None,
    int, float, str, bytes); a value of any other type (a column type the migrations do not use) is written
    differently from SQLite's, so it shows as a difference rather than passing unnoticed."""
    return repr(tuple(row))


@dataclass
class Checksum:
    """Rows counted and a checksum of their values that does not depend on their order (the two engines need not
    return rows in the same order): the sum, modulo 2**128, of each row's BLAKE2b digest of `row_text`. A changed,
    missing, added or repeated row changes it."""

    rows: int = 0
    total: int = 0

    def add(self, rows: Iterable[Sequence[object]]) -> None:
        total, count, digest = self.total, self.rows, hashlib.blake2b
        for row in rows:
            total += int.from_bytes(digest(row_text(row).encode(), digest_size=DIGEST_BYTES).digest())
            count += 1
        self.total, self.rows = total % MODULUS, count

    @property
    def hex(self) -> str:
        return f"{self.total:032x}"


@dataclass(frozen=True)
class Table:
    """A table as both databases have it: its columns (in PostgreSQL's order) with their PostgreSQL types, and its
    identity column (SQLite's INTEGER PRIMARY KEY) if it has one."""

    name: str
    columns: tuple[str, ...]
    types: tuple[str, ...]
    identity: str | None


@dataclass(frozen=True)
class CopiedTable:
    name: str
    rows: int
    checksum: str


@dataclass(frozen=True)
class CopyReport:
    tables: tuple[CopiedTable, ...]
    copy_seconds: float
    verify_seconds: float

    @property
    def rows(self) -> int:
        return sum(table.rows for table in self.tables)


@dataclass
class _Run:
    """One copy under way: the target's cursor and who is told of progress."""

    cursor: psycopg.Cursor[Any]
    progress: Progress
    read: dict[str, Checksum] = field(default_factory=dict)
    """What was read from SQLite, by table."""


def copy_into(source: Database, conninfo: str, *, target_name: str, progress: Progress | None = None) -> CopyReport:
    """Copy `source` (a migrated SQLite state) into the PostgreSQL database `conninfo` names, which must be empty, and
    verify the copy. The target is looked at before anything is written to it, the migrations included: a database
    holding rows, or tables that are not a reconciler state's, is refused as it is. `target_name` names it in
    messages (without its password)."""
    target = open_postgres(conninfo, migrate=False)
    try:
        _refuse_non_empty(target.conn.raw.cursor(), set(_sqlite_tables(source)) | set(TYPED_TABLES), target_name)
    finally:
        target.close()
    target = open_postgres(conninfo)
    try:
        return copy_state(source, target, target_name=target_name, progress=progress)
    finally:
        target.close()


def copy_state(
    source: Database, target: PostgresDatabase, *, target_name: str, progress: Progress | None = None
) -> CopyReport:
    """Copy `source` (a migrated SQLite state) into `target` (a migrated, empty PostgreSQL state) and verify the copy,
    in one transaction that is committed only when every table matches."""
    import psycopg

    tables = _tables(source, target)
    _same_history(source, target)
    run = _Run(target.conn.raw.cursor(), progress or (lambda *_: None))
    started = time.monotonic()
    try:
        with snapshot(source), write(target):
            _refuse_non_empty(run.cursor, {t.name for t in tables} | set(TYPED_TABLES), target_name)  # under the lock
            _load(source, run, tables)
            _advance_identities(run.cursor, tables)
            copied = time.monotonic()
            _verify(run, tables)
    except psycopg.Error as exc:  # a lock or statement timeout, the connection lost ...
        raise CopyError(f"{target_name}: the copy stopped ({exc}); rolled back, nothing was written") from exc
    done = time.monotonic()
    report = tuple(CopiedTable(t.name, run.read[t.name].rows, run.read[t.name].hex) for t in tables)
    return CopyReport(report, copied - started, done - copied)


def _load(source: Database, run: _Run, tables: list[Table]) -> None:
    """Every table copied, with the indexes, keys and JSON triggers set aside meanwhile; what they refuse once
    put back stops the copy, naming it."""
    import psycopg

    try:
        with set_aside(run.cursor):
            for table in tables:
                run.read[table.name] = _copy_table(source, run, table)
    except InvalidJson as exc:
        raise CopyError(
            f"table {exc.table}: JSON that PostgreSQL does not read (rows {', '.join(map(str, exc.ids))}; a \\u0000 "
            "escape, which only SQLite accepts?): rolled back, nothing was written; correct those rows in the SQLite "
            "state and copy again"
        ) from None
    except psycopg.errors.IntegrityError as exc:
        raise CopyError(
            f"the rows copied break a constraint ({exc}): rolled back, nothing was written; correct those rows in the "
            "SQLite state and copy again"
        ) from exc


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_tables(source: Database) -> dict[str, list[str]]:
    """The SQLite state's tables (not SQLite's own) and their columns."""
    return {
        str(name): [str(row[1]) for row in source.conn.execute(f"PRAGMA table_info({_quoted(str(name))})")]
        for (name,) in source.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        )
    }


def _tables(source: Database, target: PostgresDatabase) -> list[Table]:
    """The tables to copy, parents before the tables whose foreign keys point at them; refused unless both
    databases have the same tables with the same columns (but PostgreSQL's typed rows, filled instead)."""
    sqlite_tables = _sqlite_tables(source)
    postgres_tables: dict[str, list[tuple[str, str, bool]]] = {}
    for table, column, kind, identity in target.conn.raw.execute(
        "SELECT c.table_name, c.column_name, c.udt_name, c.is_identity = 'YES' FROM information_schema.columns c "
        "JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
        "WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' ORDER BY c.table_name, "
        "c.ordinal_position"
    ):
        if table not in TYPED_TABLES:
            postgres_tables.setdefault(table, []).append((column, kind, identity))
    only_sqlite, only_postgres = (
        sorted(set(sqlite_tables) - set(postgres_tables)),
        sorted(set(postgres_tables) - set(sqlite_tables)),
    )
    if only_sqlite or only_postgres:
        raise CopyError(
            f"the two databases do not have the same tables (only in the SQLite state: {', '.join(only_sqlite) or '-'};"
            f" only in PostgreSQL: {', '.join(only_postgres) or '-'}): copy into a new, empty database, with the "
            "SQLite state of this version of reconciler"
        )
    tables = {}
    for name, columns in postgres_tables.items():
        if sorted(column for column, _, _ in columns) != sorted(sqlite_tables[name]):
            raise CopyError(
                f"table {name}: the columns differ (SQLite: {', '.join(sqlite_tables[name])}; PostgreSQL: "
                f"{', '.join(column for column, _, _ in columns)}): copy into a new, empty database"
            )
        identity = next((column for column, _, is_identity in columns if is_identity), None)
        tables[name] = Table(name, tuple(c for c, _, _ in columns), tuple(k for _, k, _ in columns), identity)
    return [tables[name] for name in _foreign_key_order(target, sorted(tables))]


def _foreign_key_order(target: PostgresDatabase, names: list[str]) -> list[str]:
    """`names` with every table after the tables its foreign keys point at (as PostgreSQL enforces them)."""
    parents: dict[str, set[str]] = {name: set() for name in names}
    for child, parent in target.conn.raw.execute(
        "SELECT child.relname, parent.relname FROM pg_constraint c JOIN pg_class child ON child.oid = c.conrelid "
        "JOIN pg_class parent ON parent.oid = c.confrelid WHERE c.contype = 'f' "
        "AND child.relnamespace = current_schema()::regnamespace"
    ):
        if child in parents and parent != child:
            parents[child].add(parent)
    return list(graphlib.TopologicalSorter(parents).static_order())


def _same_history(source: Database, target: PostgresDatabase) -> None:
    """Both databases went through the same migrations (the ones this version has)."""
    query = f"SELECT migration_set, name FROM {RECORD}"  # noqa: S608 - a constant
    had = {tuple(row) for row in source.conn.execute(query)}
    has = {tuple(row) for row in target.conn.raw.execute(query)}
    if had != has:
        missing = sorted(name for _, name in had ^ has)
        raise CopyError(
            f"the two databases' migration histories differ ({', '.join(missing)}): copy into a new database"
        )


def _refuse_non_empty(cursor: psycopg.Cursor[Any], known: set[str], target_name: str) -> None:
    """A database the migrations just made holds rows only in their record: tables of something else, or rows in
    the state's tables, mean that something is there already, which the copy must neither overwrite nor mix with."""
    cursor.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
        "AND table_type = 'BASE TABLE' ORDER BY table_name"
    )
    present = [str(name) for (name,) in cursor.fetchall()]
    foreign = [name for name in present if name not in known]
    holding = []
    for name in present:
        if name in known and name != RECORD:
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {_quoted(name)})")  # noqa: S608 - a catalog name
            if (row := cursor.fetchone()) and row[0]:
                holding.append(name)
    if foreign or holding:
        what = f"tables that are not a reconciler state's ({_some(foreign)})" if foreign else ""
        what += (" and " if what else "") + (f"a state ({_some(holding)} hold rows)" if holding else "")
        raise TargetNotEmpty(
            f"{target_name} is not empty: it holds {what}. The state is copied only into an empty database, never "
            "over or beside anything; nothing was changed. Create a new database (createdb NAME) and name it with --to"
        )


def _some(names: list[str]) -> str:
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def _copy_table(source: Database, run: _Run, table: Table) -> Checksum:
    """One table, in batches, through COPY in binary format; returns what was read (rows and checksum)."""
    import psycopg
    from psycopg import sql

    name, columns = table.name, ", ".join(_quoted(c) for c in table.columns)
    total = int(source.conn.execute(f"SELECT count(*) FROM {_quoted(name)}").fetchone()[0])  # noqa: S608
    rows = source.conn.execute(f"SELECT {columns} FROM {_quoted(name)}")  # noqa: S608 - catalog names
    read = Checksum()
    if name == RECORD:  # the target's own record of the migrations it was just given; the source's replaces it
        run.cursor.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(name)))
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(c) for c in table.columns)
    )
    try:
        with run.cursor.copy(statement) as copy:
            copy.set_types(list(table.types))
            while batch := rows.fetchmany(BATCH):
                for row in batch:
                    copy.write_row(row)
                read.add(batch)
                run.progress("copy", name, read.rows, total)
    except (psycopg.Error, TypeError, ValueError, OverflowError) as exc:
        raise CopyError(
            f"table {name}: a row could not be copied ({str(exc).strip()}); rolled back, nothing was written"
        ) from exc
    return read


def _advance_identities(cursor: psycopg.Cursor[Any], tables: list[Table]) -> None:
    """Each identity's next value is past the largest id copied (the ids were given, so the sequences stayed)."""
    from psycopg import sql

    for table in tables:
        if table.identity is not None:
            cursor.execute(
                sql.SQL(
                    "SELECT setval(pg_get_serial_sequence(%s, %s), coalesce(max({}), 0) + 1, false) FROM {}"
                ).format(sql.Identifier(table.identity), sql.Identifier(table.name)),
                (_quoted(table.name), table.identity),
            )


def _verify(run: _Run, tables: list[Table]) -> None:
    """Each table read back from PostgreSQL (inside the copy's transaction) against what was read from SQLite."""
    from psycopg import sql

    differ = []
    for table in tables:
        expected, found = run.read[table.name], Checksum()
        statement = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in table.columns), sql.Identifier(table.name)
        )
        with run.cursor.connection.cursor(name="reconciler_verify") as rows:  # on the server, read a batch at a time
            rows.execute(statement)
            while batch := rows.fetchmany(BATCH):
                found.add(batch)
                run.progress("verify", table.name, found.rows, expected.rows)
        if found.rows != expected.rows:
            differ.append(f"{table.name} ({expected.rows} rows in SQLite, {found.rows} in PostgreSQL)")
        elif found.total != expected.total:
            differ.append(f"{table.name} (as many rows, {found.rows}, but different values)")
    if differ:
        raise CopyMismatch(
            f"the copy differs from the SQLite state in {'; '.join(differ)}: rolled back, the PostgreSQL database is "
            "as empty as it was. Something changed the rows on their way in (a trigger or rule added to that "
            "database?); the SQLite state is untouched"
        )
