"""What the migrations of state/schema.py need on PostgreSQL that SQLite has built in, and their record there.

The migrations are one history for both engines (state/schema.py): their DDL is written once, in SQLite's words,
and `dialect.to_postgres` gives it PostgreSQL's types. What cannot be said the same way on both is here:

- `json_valid(text)`: SQLite's function (1 valid, 0 not, NULL for NULL), so that the same queries run on both;
- the triggers that keep invalid JSON out of contacts and events (SQLite's are in schema.py), with the same
  names and messages;
- the record of applied migrations: the table sqlite-utils keeps on SQLite, `_sqlite_migrations`, with the same
  name, columns and unique index, so that both engines' schemas compare table for table and a state copied from
  one to the other carries its history.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence

from reconciler.state.postgres import PostgresDatabase

JSON_VALID = """
CREATE FUNCTION json_valid(value text) RETURNS integer LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    PERFORM value::jsonb;
    RETURN 1;
EXCEPTION WHEN data_exception THEN
    RETURN 0;
END $$;
"""

JSON_TRIGGERS = """
CREATE FUNCTION contacts_json_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF json_valid(NEW.fields) = 0 OR json_valid(NEW.tags) = 0 THEN
        RAISE EXCEPTION 'contacts.fields or contacts.tags is not valid JSON' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE FUNCTION events_json_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF json_valid(NEW.properties) = 0 THEN
        RAISE EXCEPTION 'events.properties is not valid JSON' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER contacts_json_insert BEFORE INSERT ON contacts
    FOR EACH ROW EXECUTE FUNCTION contacts_json_check();
CREATE TRIGGER contacts_json_update BEFORE UPDATE OF fields, tags ON contacts
    FOR EACH ROW EXECUTE FUNCTION contacts_json_check();
CREATE TRIGGER events_json_insert BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_json_check();
CREATE TRIGGER events_json_update BEFORE UPDATE OF properties ON events
    FOR EACH ROW EXECUTE FUNCTION events_json_check();
"""

JSON_COLUMNS = {"contacts": ("fields", "tags"), "events": ("properties",)}
"""The columns JSON_TRIGGERS check, by table (each table's insert trigger is `<table>_json_insert`): a bulk load
that disables those triggers checks these columns itself (state/postgres_load.py)."""

RECORD = "_sqlite_migrations"
_RECORD_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {RECORD} (id INTEGER PRIMARY KEY, migration_set TEXT, name TEXT, applied_at TEXT)"
)
_RECORD_INDEX = f"CREATE UNIQUE INDEX IF NOT EXISTS idx_{RECORD}_migration_set_name ON {RECORD} (migration_set, name)"

Migration = Callable[[PostgresDatabase], None]


def applied(db: PostgresDatabase, migration_set: str) -> list[str]:
    """The names of the migrations applied, in order (none on a new database)."""
    (exists,) = db.conn.execute("SELECT to_regclass(?) IS NOT NULL", (RECORD,)).fetchone()
    if not exists:
        return []
    rows = db.conn.execute(f"SELECT name FROM {RECORD} WHERE migration_set = ? ORDER BY id", (migration_set,))  # noqa: S608
    return [str(name) for (name,) in rows]


def apply(db: PostgresDatabase, migration_set: str, steps: Sequence[tuple[str, Migration]]) -> list[str]:
    """Inside the caller's write (which holds the writers' lock): apply the migrations not yet recorded, each
    with its record, as sqlite-utils does on SQLite; returns the names applied."""
    db.conn.execute(_RECORD_TABLE)
    db.conn.execute(_RECORD_INDEX)
    done = set(applied(db, migration_set))
    names = []
    for name, step in steps:
        if name in done:
            continue
        step(db)
        db.conn.execute(
            f"INSERT INTO {RECORD}(migration_set, name, applied_at) VALUES (?, ?, ?)",  # noqa: S608
            (migration_set, name, str(datetime.datetime.now(datetime.UTC))),
        )
        names.append(name)
    return names
