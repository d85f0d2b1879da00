"""Contact fields and event properties kept typed beside their JSON on PostgreSQL, so that a segment condition on
them reads an indexed column instead of parsing each contact's or event's jsonb (the migration `0017_typed_values`).

Only on PostgreSQL: there parsing jsonb per row made the slowest example segment take 6.6 s at 200,000 contacts,
1.35 s from these rows. SQLite parses its JSON text in C fast enough that a condition most contacts meet is faster
from the JSON than from a join (about 3x), and the triggers that keep these rows made imports 1.5-1.8x slower;
so on SQLite the migration makes nothing and the compiler reads the JSON (`jsonsql.Dialect.typed_rows`).

`contact_values` holds one row per custom field a contact has (JSON null is no row), `event_values` one per property
an event has. A row says the value's JSON type, `kind` (`string`, `number`, `boolean`, `array`, `object`, as
`jsonb_typeof` names them), and the value itself: strings in `text` (in byte order, ``COLLATE "C"``, as SQLite
compares them), numbers in `number` as doubles (booleans as 1 and 0), a contact's arrays as their JSON text in
`text` (list fields). Field names and property names are values in these tables, never identifiers: no DDL is made
from a workspace's names.

The database writes them itself, with row triggers (a plpgsql function) on `contacts` and `events`: every writer
of a contact's fields or an event (imports, the web service and API, workflow steps, erasure, a bulk load in SQL)
keeps them in step without knowing about them, and none can forget. Two writers of many rows set the triggers
aside and write the rows at once: an import's batch (`later`: a trigger per row made PostgreSQL imports about
twice as slow), and `state migrate`, which copies every other table from a SQLite state (which has none of these)
and then writes them all (`fill`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler.state.migrating import run_script
from reconciler.state.postgres import PostgresDatabase, StateDatabase

if TYPE_CHECKING:
    import psycopg

TABLES = """
CREATE TABLE contact_values (
    contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
    field TEXT NOT NULL,
    kind TEXT NOT NULL,                       -- string | number | boolean | array | object
    text TEXT COLLATE "C",                    -- a string; an array's JSON text
    number REAL,                              -- a number; a boolean as 1 or 0
    PRIMARY KEY (contact_id, field)
) WITHOUT ROWID;
CREATE INDEX contact_values_by_number ON contact_values(field, kind, number, contact_id) WHERE number IS NOT NULL;
CREATE INDEX contact_values_by_text ON contact_values(field, kind, text, contact_id) WHERE text IS NOT NULL;
CREATE TABLE event_values (
    event_id INTEGER NOT NULL REFERENCES events(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT COLLATE "C",
    number REAL,
    PRIMARY KEY (event_id, name)
) WITHOUT ROWID;
"""
"""The tables, in the migrations' DDL words (state/dialect.py makes them PostgreSQL's)."""


def _rows_postgres(rows: str, owner: str, document: str, *, arrays: bool) -> str:
    """The SELECT of the typed rows of the JSON object text `document` of the row `owner` (`rows`: what it is read
    from, or '' in a row trigger)."""
    array_text = "WHEN 'array' THEN j.value::text " if arrays else ""
    return (
        f"SELECT {owner}, j.key, jsonb_typeof(j.value), "  # noqa: S608 - constant SQL
        f"CASE jsonb_typeof(j.value) WHEN 'string' THEN j.value #>> '{{}}' {array_text}END, "
        "CASE jsonb_typeof(j.value) WHEN 'number' THEN CAST(j.value #>> '{}' AS double precision) "
        "WHEN 'boolean' THEN CASE WHEN j.value = 'true'::jsonb THEN 1 ELSE 0 END END "
        f"FROM {rows}jsonb_each(CAST({document} AS jsonb)) AS j WHERE jsonb_typeof(j.value) <> 'null'"
    )


LATER = "reconciler.typed_later"
"""A setting local to a transaction: while it is 'on', the triggers leave the typed rows to the writer (`later`)."""


def _trigger_postgres(table: str, values: str, columns: str, document: str, *, arrays: bool) -> str:
    """A row trigger's function and triggers: the typed rows of a new row, made again when an update changed its
    JSON (the writers upsert a row per statement, so a statement trigger would run as often, at more cost)."""
    key = columns.split(",")[0]
    return f"""
CREATE FUNCTION {values}_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('{LATER}', true) = 'on' THEN
        RETURN NULL;  -- this transaction writes them after its statement, for a whole batch at once (`later`)
    END IF;
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
"""The triggers that write the typed rows, by table: a bulk load sets them aside and calls `fill` after."""
TYPED_TABLES = tuple(values for _, values, _, _, _ in _WRITTEN)
"""The tables only PostgreSQL has (a SQLite state copied into it has none of them: they are filled, not copied)."""


def create(db: StateDatabase) -> None:
    """On PostgreSQL, the tables and their triggers, filled from the JSON of every contact and event there is; on
    SQLite nothing (its conditions read the JSON)."""
    if not isinstance(db, PostgresDatabase):
        return
    run_script(db, TABLES)
    fill(db.conn.raw.cursor())
    for table, values, columns, document, arrays in _WRITTEN:
        db.conn.run_script(_trigger_postgres(table, values, columns, document, arrays=arrays))


def fill(cursor: psycopg.Cursor[Any]) -> None:
    """The typed rows of every contact and event there is, written in one statement per table (the migration, and
    `state migrate` after its copy, whose source, a SQLite state, has none)."""
    for written in _WRITTEN:
        cursor.execute(_insert(*written))


def _insert(table: str, values: str, columns: str, document: str, arrays: bool, where: str = "") -> str:
    """The INSERT of the typed rows of every row of `table` (that meets `where`, a condition on its alias, the
    table's initial)."""
    alias = table[0]
    select = _rows_postgres(f"{table} {alias}, ", f"{alias}.id", f"{alias}.{document}", arrays=arrays)
    return f"INSERT INTO {values} ({columns}, kind, text, number) {select}{f' AND {where}' if where else ''}"


@dataclass
class Written:
    """The contacts a batch wrote while the triggers stood aside, by id."""

    made: set[int] = field(default_factory=set)
    """New contacts: none of their typed rows is written yet."""
    changed: set[int] = field(default_factory=set)
    """Contacts it updated: their typed rows are those of their fields before."""


@contextmanager
def later(db: PostgresDatabase) -> Iterator[Written]:
    """Inside a write: the contacts written meanwhile, whose ids the writer notes in what is yielded, get their typed
    rows at the end, a few statements for them all, instead of from a trigger per row (an import's batch: the
    trigger made PostgreSQL's imports about twice as slow). By id: an index lookup each. A contact updated keeps
    the typed rows its fields still give: only those that differ are written (a file imported again changes few
    fields, and deleting every row to insert it again cost twice as much as the upsert of the contacts)."""
    db.conn.execute("SELECT set_config(?, 'on', true)", (LATER,))
    written = Written()
    yield written
    db.conn.execute("SELECT set_config(?, 'off', true)", (LATER,))
    chosen = "c.id = ANY(CAST(? AS bigint[]))"
    if written.changed:
        ids = _array(written.changed)
        db.conn.execute(_GONE, (ids,))
        db.conn.execute(_insert(*_WRITTEN[0], where=chosen) + _CHANGED, (ids,))
    if written.made:
        db.conn.execute(_insert(*_WRITTEN[0], where=chosen) + " ORDER BY c.id", (_array(written.made),))


_GONE = (
    "DELETE FROM contact_values v USING contacts c WHERE v.contact_id = c.id AND c.id = ANY(CAST(? AS bigint[])) "
    "AND coalesce(jsonb_typeof(CAST(c.fields AS jsonb) -> v.field), 'null') = 'null'"
)
"""The typed rows of contacts updated whose field is gone (or null now), found by a join: as `NOT IN (subquery)`
PostgreSQL, at its default work_mem, read the subquery's rows again for every typed row (a batch of contacts
imported again took minutes)."""
_CHANGED = (
    " ON CONFLICT (contact_id, field) DO UPDATE SET kind = excluded.kind, text = excluded.text,"
    " number = excluded.number WHERE (contact_values.kind, contact_values.text, contact_values.number)"
    " IS DISTINCT FROM (excluded.kind, excluded.text, excluded.number)"
)
"""A typed row of a contact updated: written where it differs from the row there is."""


def _array(ids: set[int]) -> str:
    """The text of a bigint[] of these ids (one parameter, however many: psycopg adapts a list of them slowly)."""
    return "{" + ",".join(str(int(contact)) for contact in sorted(ids)) + "}"


STATISTICS = """
CREATE STATISTICS contact_values_numbers (mcv, dependencies) ON field, kind, number FROM contact_values;
CREATE STATISTICS contact_values_texts (mcv, dependencies) ON field, kind, text FROM contact_values;
CREATE STATISTICS event_values_numbers (mcv, dependencies) ON name, kind, number FROM event_values;
CREATE STATISTICS event_values_texts (mcv, dependencies) ON name, kind, text FROM event_values;
ANALYZE contact_values;
ANALYZE event_values;
"""
"""What PostgreSQL's planner must know of the typed rows: a condition reads `field = ? AND kind = ? AND number > ?`,
and without these it multiplies the three selectivities as if they were independent, when a field has one kind
and values of its own. At a million contacts it took `wholesale = false` for 10,574 rows (322,581 matched) and
`total_spend > 100` for 101,395 (800,000), and chose nested loops of index probes: the example's top-customers
took 6.8 s, 1.4 s with these. ANALYZE (autovacuum's too) keeps them; the migration analyzes once, so that a state
with data has them at once."""


def add_statistics(db: StateDatabase) -> None:
    """On PostgreSQL, the extended statistics of the typed rows (`STATISTICS`); on SQLite nothing (no typed rows)."""
    if isinstance(db, PostgresDatabase):
        db.conn.run_script(STATISTICS)
