"""The typed rows of fields and properties (state/typed_values.py), PostgreSQL's alone: the migration fills them from
what a state held before it, and the triggers keep them in step with every later write. On SQLite the migration
makes nothing (conditions read the JSON there, and an import writes nothing more)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reconciler.state import typed_values
from reconciler.state.contacts import ContactRow, import_batch, start_import
from reconciler.state.db import open_postgres, write
from reconciler.state.postgres import connect
from test_postgres_state import migrate, sqlite_state

AT = "2026-11-24T12:00:00Z"
CONTACT = "INSERT INTO contacts(id, email, email_hash, fields, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
FIELDS = {"spend": 150, "ratio": 2.5, "roast": "dark", "vip": True, "new": False, "tags": ["a", "b"], "gone": None}


def _rows(db: Any, table: str) -> set[tuple[Any, ...]]:
    key = "contact_id, field" if table == "contact_values" else "event_id, name"
    rows = db.conn.execute(f"SELECT {key}, kind, text, number FROM {table}")  # noqa: S608 - constant names
    return {(a, b, kind, text, None if number is None else float(number)) for a, b, kind, text, number in rows}


def test_sqlite_keeps_no_typed_rows() -> None:
    db = sqlite_state()
    try:
        migrate(db)
        names = {row[0] for row in db.conn.execute("SELECT name FROM sqlite_master")}
        assert not {name for name in names if "values" in name}
        assert "0017_typed_values" in {name for (name,) in db.conn.execute("SELECT name FROM _sqlite_migrations")}
    finally:
        db.close()


@pytest.mark.postgresql
def test_values_written_before_the_migration_are_typed_and_later_writes_follow(postgres_url: str) -> None:
    db: Any = connect(postgres_url, lock_timeout_ms=30_000)
    try:
        migrate(db, before="0017_typed_values")
        db.conn.execute(CONTACT, (1, "a@x", "h", json.dumps(FIELDS), AT, AT))
        db.conn.execute(
            "INSERT INTO events(id, contact_id, type, occurred_at, properties) VALUES (1, 1, 'purchase', ?, ?)",
            (AT, json.dumps({"amount": 10, "sku": "A1", "lines": [1]})),
        )
        migrate(db)
        assert _rows(db, "contact_values") == {
            (1, "spend", "number", None, 150.0),
            (1, "ratio", "number", None, 2.5),
            (1, "roast", "string", "dark", None),
            (1, "vip", "boolean", None, 1.0),
            (1, "new", "boolean", None, 0.0),
            (1, "tags", "array", '["a", "b"]', None),
        }
        assert _rows(db, "event_values") == {
            (1, "amount", "number", None, 10.0),
            (1, "sku", "string", "A1", None),
            (1, "lines", "array", None, None),
        }
        db.conn.execute("UPDATE contacts SET fields = ? WHERE id = 1", (json.dumps({"spend": 7}),))
        db.conn.execute("UPDATE contacts SET first_name = 'Ann' WHERE id = 1")  # the fields as they were
        db.conn.execute(CONTACT, (2, "b@x", "i", '{"roast": "light"}', AT, AT))
        assert _rows(db, "contact_values") == {(1, "spend", "number", None, 7.0), (2, "roast", "string", "light", None)}
        db.conn.execute("DELETE FROM contacts WHERE id = 1")
        assert _rows(db, "contact_values") == {(2, "roast", "string", "light", None)}
        assert _rows(db, "event_values") == set()
    finally:
        db.close()


@pytest.mark.postgresql
def test_an_import_batch_writes_the_typed_rows_of_its_contacts_at_once(postgres_url: str) -> None:
    """An import's batch leaves the triggers out (`typed_values.later`) and writes its contacts' typed rows after its
    upserts: new contacts, updated ones (their fields merged), and nobody else's; later writes use the triggers."""
    db = open_postgres(postgres_url)
    try:
        with write(db):
            db.conn.execute(CONTACT, (90, "other@x", "o", '{"roast": "dark"}', AT, AT))
        first = start_import(db, file="a.csv", at=AT)
        rows = [
            ContactRow.build("ann@x", {}, [], {"spend": 150, "roast": "light"}),
            ContactRow.build("bob@x", {}, [], {"vip": True}),
        ]
        import_batch(db, rows, import_id=first, at=AT, source="import:a.csv", consent_text=None)
        again = start_import(db, file="b.csv", at=AT)
        changed = [ContactRow.build("ann@x", {}, [], {"spend": 7}), ContactRow.build("bob@x", {}, [], {})]
        import_batch(db, changed, import_id=again, at=AT, source="import:b.csv", consent_text=None)
        ids = dict(db.conn.execute("SELECT email, id FROM contacts").fetchall())
        assert _rows(db, "contact_values") == {
            (ids["ann@x"], "spend", "number", None, 7.0),
            (ids["ann@x"], "roast", "string", "light", None),
            (ids["bob@x"], "vip", "boolean", None, 1.0),
            (90, "roast", "string", "dark", None),
        }
        with write(db):  # the batch's setting ended with it: the triggers write again
            db.conn.execute("UPDATE contacts SET fields = '{}' WHERE id = ?", (ids["bob@x"],))
        assert (ids["bob@x"], "vip", "boolean", None, 1.0) not in _rows(db, "contact_values")
    finally:
        db.close()


@pytest.mark.postgresql
def test_after_a_batch_repeating_addresses_the_typed_rows_are_those_of_the_merged_fields(postgres_url: str) -> None:
    """A batch whose addresses come again (written in rounds, state/postgres_import.py), over contacts an earlier
    import made (only their typed rows that differ are written): the typed rows are what the contacts' fields give,
    as `fill` makes them from scratch."""
    db = open_postgres(postgres_url)
    try:
        first = start_import(db, file="a.csv", at=AT)
        earlier = [ContactRow.build("ann@x", {}, [], {"spend": 150, "roast": "light", "vip": True})]
        import_batch(db, earlier, import_id=first, at=AT, source="import:a.csv", consent_text=None)
        again = start_import(db, file="b.csv", at=AT)
        rows = [
            ContactRow.build("ann@x", {}, [], {"spend": 7, "vip": None}),  # null: no typed row
            ContactRow.build("bob@x", {}, [], {"roast": "dark", "tags": ["a"]}),
            ContactRow.build("ann@x", {}, [], {"roast": "medium", "ratio": 0.5}),
            ContactRow.build("bob@x", {}, [], {"vip": False}),
            ContactRow.build("bob@x", {}, [], {"tags": ["b", "c"]}),
        ]
        import_batch(db, rows, import_id=again, at=AT, source="import:b.csv", consent_text=None)
        ids = dict(db.conn.execute("SELECT email, id FROM contacts").fetchall())
        written = _rows(db, "contact_values")
        assert written == {
            (ids["ann@x"], "spend", "number", None, 7.0),
            (ids["ann@x"], "roast", "string", "medium", None),
            (ids["ann@x"], "ratio", "number", None, 0.5),
            (ids["bob@x"], "roast", "string", "dark", None),
            (ids["bob@x"], "vip", "boolean", None, 0.0),
            (ids["bob@x"], "tags", "array", '["b", "c"]', None),
        }
        with write(db):
            db.conn.execute("DELETE FROM contact_values")
            typed_values.fill(db.conn.raw.cursor())
        assert _rows(db, "contact_values") == written
    finally:
        db.close()
