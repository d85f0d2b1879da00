"""Contact fields and event properties kept typed beside their JSON, so that a segment condition on them reads an
indexed column instead of parsing a contact's or event's JSON (the migration `0017_typed_values`).

`contact_values` holds one row per custom field a contact has (JSON null is no row), `event_values` one per property
an event has. A row says the value's JSON type, `kind` (`string`, `number`, `boolean`, `array`, `object`: the same
words on both engines, so a state copied from SQLite to PostgreSQL reads the same), and the value itself: strings in
`text` (byte order on both engines), numbers in `number` as doubles (booleans as 1 and 0; REAL, which both engines
give back as the same float, so that `state migrate` copies and verifies them as they are),
a contact's arrays as their JSON text in `text` (list fields). Field names and property names are values in these
tables, never identifiers: no DDL is made from a workspace's names.

The database writes them itself, with triggers on `contacts` and `events`: every writer of a contact's fields or an
event (imports, the web service and API, workflow steps, erasure, a bulk load in SQL) keeps them in step without
knowing about them, and none can forget: a row trigger on each engine (a plpgsql function on PostgreSQL).
`state migrate` copies the tables as they are, with the triggers set aside (state/postgres_load.py).
"""

from __future__ import annotations

from reconciler.state.migrating import run_script
from reconciler.state.postgres import PostgresDatabase, StateDatabase

TABLES_SQLITE = """
CREATE TABLE contact_values (
    contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    field TEXT NOT NULL,
    kind TEXT NOT NULL,                       -- string | number | boolean | array | object
    text TEXT,                                -- a string; an array's JSON text
    number REAL,                              -- a number; a boolean as 1 or 0
    PRIMARY KEY (contact_id, field)
) WITHOUT ROWID;
CREATE INDEX contact_values_by_number ON contact_values(field, kind, number, contact_id) WHERE number IS NOT NULL;
CREATE INDEX contact_values_by_text ON contact_values(field, kind, text, contact_id) WHERE text IS NOT NULL;
CREATE TABLE event_values (
    event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT,
    number REAL,
    PRIMARY KEY (event_id, name)
) WITHOUT ROWID;
"""
TABLES_POSTGRES = TABLES_SQLITE.replace("text TEXT,", 'text TEXT COLLATE "C",')
"""The same tables; text in byte order, as SQLite compares it (and the compiler reads it)."""

_KIND_SQLITE = (
    "CASE j.type WHEN 'text' THEN 'string' WHEN 'integer' THEN 'number' WHEN 'real' THEN 'number' "
    "WHEN 'true' THEN 'boolean' WHEN 'false' THEN 'boolean' ELSE j.type END"
)


def _rows_sqlite(rows: str, owner: str, document: str, *, arrays: bool) -> str:
    """SELECT of the typed rows of the JSON object text `document` of the row `owner` (`rows`: what it is read
    from, or '' in a row trigger)."""
    text_types = "'text', 'array'" if arrays else "'text'"
    return (
        f"SELECT {owner}, j.key, {_KIND_SQLITE}, CASE WHEN j.type IN ({text_types}) THEN j.value END, "  # noqa: S608 - constant SQL
        "CASE WHEN j.type IN ('integer', 'real', 'true', 'false') THEN j.value END "
        f"FROM {rows}json_each({document}) AS j WHERE j.type <> 'null'"
    )


def _trigger_sqlite(table: str, values: str, columns: str, document: str, *, arrays: bool) -> str:
    key = columns.split(",")[0]
    insert = (
        f"INSERT OR IGNORE INTO {values} ({columns}, kind, text, number) "
        f"{_rows_sqlite('', 'NEW.id', f'NEW.{document}', arrays=arrays)};"
    )
    return f"""
CREATE TRIGGER {values}_insert AFTER INSERT ON {table} BEGIN
    {insert}
END;
CREATE TRIGGER {values}_update AFTER UPDATE OF {document} ON {table} WHEN OLD.{document} IS NOT NEW.{document}
BEGIN
    DELETE FROM {values} WHERE {key} = NEW.id;
    {insert}
END;
"""  # noqa: S608 - constant SQL


def _rows_postgres(rows: str, owner: str, document: str, *, arrays: bool) -> str:
    """PostgreSQL's SELECT of the same rows (jsonb_typeof's words are the kinds)."""
    array_text = "WHEN 'array' THEN j.value::text " if arrays else ""
    return (
        f"SELECT {owner}, j.key, jsonb_typeof(j.value), "  # noqa: S608 - constant SQL
        f"CASE jsonb_typeof(j.value) WHEN 'string' THEN j.value #>> '{{}}' {array_text}END, "
        "CASE jsonb_typeof(j.value) WHEN 'number' THEN CAST(j.value #>> '{}' AS double precision) "
        "WHEN 'boolean' THEN CASE WHEN j.value = 'true'::jsonb THEN 1 ELSE 0 END END "
        f"FROM {rows}jsonb_each(CAST({document} AS jsonb)) AS j WHERE jsonb_typeof(j.value) <> 'null'"
    )


def _trigger_postgres(table: str, values: str, columns: str, document: str, *, arrays: bool) -> str:
    """A row trigger's function and triggers: the typed rows of a new row, made again when an update changed its
    JSON (the writers upsert a row per statement, so a statement trigger would run as often, at more cost)."""
    key = columns.split(",")[0]
    return f"""
CREATE FUNCTION {values}_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.{document} IS NOT DISTINCT FROM OLD.{document} THEN
            RETURN NULL;
        END IF;
        DELETE FROM {values} WHERE {key} = NEW.id;
    END IF;
    INSERT INTO {values} ({columns}, kind, text, number)
        {_rows_postgres("", "NEW.id", f"NEW.{document}", arrays=arrays)}
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER {values}_insert AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {values}_write();
CREATE TRIGGER {values}_update AFTER UPDATE OF {document} ON {table} FOR EACH ROW EXECUTE FUNCTION {values}_write();
"""  # noqa: S608 - constant SQL


_WRITTEN = (
    ("contacts", "contact_values", "contact_id, field", "fields", True),
    ("events", "event_values", "event_id, name", "properties", False),
)
TRIGGERS = {table: (f"{values}_insert", f"{values}_update") for table, values, _, _, _ in _WRITTEN}
"""The triggers that write the typed rows, by table: a bulk load that copies the typed rows too sets them aside."""


def create(db: StateDatabase) -> None:
    """The tables and their triggers, filled from the JSON of every contact and event there is."""
    postgres = isinstance(db, PostgresDatabase)
    rows, trigger = (_rows_postgres, _trigger_postgres) if postgres else (_rows_sqlite, _trigger_sqlite)
    run_script(db, TABLES_POSTGRES if postgres else TABLES_SQLITE)
    for table, values, columns, document, arrays in _WRITTEN:
        alias = table[0]
        select = rows(f"{table} {alias}, ", f"{alias}.id", f"{alias}.{document}", arrays=arrays)
        db.conn.execute(f"INSERT INTO {values} ({columns}, kind, text, number) {select}")
        script = trigger(table, values, columns, document, arrays=arrays)
        if isinstance(db, PostgresDatabase):
            db.conn.run_script(script)
        else:
            run_script(db, script)
