"""The contact functions of state/contacts.py on both engines (the `state_db` fixture: SQLite, then PostgreSQL):
an import's batches (upsert with merged tags and fields, subscriptions with their consent record and evidence,
status columns, suppressions), GDPR export and erasure, with the same assertions on each."""

from __future__ import annotations

from typing import Any

from reconciler.state.contacts import (
    ContactRow,
    change_tag,
    contacts_of_import,
    erase_contact,
    export_contact,
    find_contact,
    finish_import,
    import_batch,
    set_custom_field,
    start_import,
)
from reconciler.state.db import write
from reconciler.state.suppressions import email_hash, reason_for, suppress

AT = "2026-11-24T11:00:00Z"
LATER = "2026-11-25T09:00:00Z"
OFFERS = ("offers", ("bounced", "complained", "unsubscribed", "erased"))


def _row(email: str, **kwargs: Any) -> ContactRow:
    return ContactRow.build(
        email,
        kwargs.pop("builtins", {}),
        kwargs.pop("tags", []),
        kwargs.pop("fields", {}),
        kwargs.pop("created_at", None),
        **kwargs,
    )


def _import(db: Any, rows: list[ContactRow], *, at: str = AT, **kwargs: Any) -> Any:
    import_id = start_import(db, file="people.csv", at=at)
    kwargs.setdefault("lists", [OFFERS])
    kwargs.setdefault("consent_text", None)
    result = import_batch(db, rows, import_id=import_id, at=at, source="import:people.csv", **kwargs)
    return import_id, result


def _subscriptions(db: Any) -> dict[tuple[str, str], str]:
    rows = db.conn.execute(
        "SELECT c.email, s.list, s.status FROM subscriptions s JOIN contacts c ON c.id = s.contact_id"
    ).fetchall()
    return {(email, name): status for email, name, status in rows}


def _consent(db: Any) -> list[tuple[Any, ...]]:
    """The consent records, in the order of their statements (within one, the engines may go in any order)."""
    rows = db.conn.execute(
        "SELECT c.email, k.list, k.action, k.source, k.text FROM consent k JOIN contacts c ON c.id = k.contact_id "
        "ORDER BY k.id"
    ).fetchall()
    return [tuple(row) for row in rows]


def test_a_batch_creates_contacts_and_subscribes_them_with_consent_and_evidence(state_db: Any) -> None:
    first, second = start_import(state_db, file="a.csv", at=AT), start_import(state_db, file="b.csv", at=AT)
    assert second == first + 1
    import_id, result = _import(
        state_db,
        [
            _row("ann@example.com", builtins={"first_name": "Ann"}, tags=["vip", "b"], fields={"plan": "pro"}),
            _row("bob@example.com", evidence="opted in 2023-01-15"),
            _row("ann@example.com", tags=["a"]),  # again in the same file: merged into the first
        ],
        consent_text="Yes, offers",
    )
    assert (result.created, result.updated, result.duplicates, result.subscribed) == (2, 0, 1, 2)
    ann = find_contact(state_db, "ann@example.com")
    assert ann is not None
    assert (ann.first_name, ann.tags, ann.fields) == ("Ann", ("a", "b", "vip"), {"plan": "pro"})
    assert _subscriptions(state_db) == {
        ("ann@example.com", "offers"): "subscribed",
        ("bob@example.com", "offers"): "subscribed",
    }
    assert sorted(_consent(state_db)) == [
        ("ann@example.com", "offers", "subscribe", "import:people.csv", "Yes, offers"),
        ("bob@example.com", "offers", "subscribe", "import:people.csv", "Yes, offers (opted in 2023-01-15)"),
    ]
    assert contacts_of_import(state_db, import_id) == 2
    finish_import(state_db, import_id, at=LATER, rows=3, created=2, updated=0, rejected=0, file="people.csv")
    finished = state_db.conn.execute("SELECT finished_at, rows FROM imports WHERE id = ?", (import_id,)).fetchone()
    assert tuple(finished) == (LATER, 3)


def test_a_later_import_merges_tags_and_fields_and_keeps_what_the_file_left_out(state_db: Any) -> None:
    _import(
        state_db,
        [_row("ann@example.com", builtins={"first_name": "Ann", "country": "FR"}, tags=["b"], fields={"n": 1})],
    )
    _, result = _import(
        state_db,
        [_row("ann@example.com", builtins={"first_name": "Anne"}, tags=["a", "b"], fields={"m": "x", "n": 2.5})],
        at=LATER,
        preconfirmed=["offers"],
    )
    assert (result.created, result.updated, result.subscribed) == (0, 1, 0)  # subscribed already
    ann = find_contact(state_db, "ann@example.com")
    assert ann is not None
    assert (ann.first_name, ann.country, ann.tags, ann.fields) == ("Anne", "FR", ("a", "b"), {"n": 2.5, "m": "x"})
    _import(state_db, [_row("ann@example.com", fields={"l": ["x", "y"]})], at=LATER)  # no tags: the tags stay
    ann = find_contact(state_db, "ann@example.com")
    assert ann is not None
    assert (ann.tags, ann.fields) == (("a", "b"), {"n": 2.5, "m": "x", "l": ["x", "y"]})
    stored = state_db.conn.execute("SELECT tags FROM contacts").fetchone()[0]
    assert stored == '["a","b"]'  # compact and sorted, as SQLite writes it


def test_rows_of_one_address_in_a_batch_merge_over_each_other_in_file_order(state_db: Any) -> None:
    """Each later row of an address merges over the earlier ones as if it came in a later batch: a text field it
    gives replaces, one it leaves out stays, tags are united, fields set over (PostgreSQL writes a batch in rounds
    of one row per address, state/postgres_import.py)."""
    _import(state_db, [_row("bob@example.com", builtins={"first_name": "Bob", "country": "FR"}, tags=["x"])])
    bob_id = find_contact(state_db, "bob@example.com").id  # type: ignore[union-attr]
    _, result = _import(
        state_db,
        [
            _row("ann@example.com", builtins={"first_name": "Ann"}, tags=["b"], fields={"a": 1, "b": "one"}),
            _row("bob@example.com", builtins={"last_name": "Smith"}, fields={"n": 2}),
            _row("ann@example.com", builtins={"first_name": "Anna", "country": "PL"}, tags=["a"], fields={"b": 2}),
            _row("cy@example.com", fields={"c": True}),
            _row("ann@example.com", fields={"c": ["x", "y"]}),
            _row("bob@example.com", builtins={"first_name": "Robert"}, tags=["y"], fields={"n": 3.5}),
        ],
        at=LATER,
    )
    assert (result.created, result.updated, result.duplicates, result.subscribed) == (2, 1, 3, 2)
    ann, bob, cy = (find_contact(state_db, f"{name}@example.com") for name in ("ann", "bob", "cy"))
    assert ann is not None and bob is not None and cy is not None
    assert (ann.first_name, ann.country, ann.tags) == ("Anna", "PL", ("a", "b"))
    assert ann.fields == {"a": 1, "b": 2, "c": ["x", "y"]}
    assert (bob.id, bob.first_name, bob.last_name, bob.country, bob.tags) == (
        bob_id,
        "Robert",
        "Smith",
        "FR",
        ("x", "y"),
    )
    assert (bob.fields, cy.fields) == ({"n": 3.5}, {"c": True})
    assert bob_id < ann.id < cy.id  # new contacts are numbered in the order the file first names them
    assert {tuple(row) for row in state_db.conn.execute("SELECT email, import_id FROM contacts")} == {
        ("ann@example.com", 2),
        ("bob@example.com", 2),
        ("cy@example.com", 2),
    }
    assert len(_consent(state_db)) == 3  # bob's from the first import, ann's and cy's: once each


def test_status_columns_unsubscribe_blocklist_and_suppress(state_db: Any) -> None:
    _import(state_db, [_row("cy@example.com"), _row("di@example.com")], lists=[OFFERS, ("news", ())])
    _, result = _import(
        state_db,
        [
            _row("ann@example.com", status="held"),
            _row("bob@example.com", status="unsubscribed"),
            _row("cy@example.com", status="blocklisted", evidence="asked by phone"),
            _row("di@example.com", status="bounced"),
        ],
        at=LATER,
        lists=[],
        marketing=["offers", "news"],
    )
    assert result.statuses == {"held": 1, "unsubscribed": 1, "blocklisted": 1, "bounced": 1}
    assert _subscriptions(state_db) == {
        ("cy@example.com", "offers"): "unsubscribed",
        ("cy@example.com", "news"): "unsubscribed",
        ("di@example.com", "offers"): "subscribed",
        ("di@example.com", "news"): "subscribed",
    }
    unsubscribes = [row for row in _consent(state_db) if row[2] == "unsubscribe"]
    assert unsubscribes == [  # one statement per list, then one for everything
        ("cy@example.com", "offers", "unsubscribe", "import:people.csv", "asked by phone"),
        ("cy@example.com", "news", "unsubscribe", "import:people.csv", "asked by phone"),
        ("bob@example.com", None, "unsubscribe", "import:people.csv", None),
        ("cy@example.com", None, "unsubscribe", "import:people.csv", "asked by phone"),
    ]
    found = {e: reason_for(state_db, email_hash(f"{e}@example.com")) for e in ("ann", "bob", "cy", "di")}
    assert found == {"ann": None, "bob": "unsubscribed", "cy": "unsubscribed", "di": "bounced"}


def test_suppressed_and_unsubscribed_people_are_kept_out_and_the_erased_are_not_stored(state_db: Any) -> None:
    _import(state_db, [_row("ann@example.com"), _row("bob@example.com")])
    with write(state_db):
        suppress(state_db, email_hash("bob@example.com"), "bounced", at=AT)
        suppress(state_db, email_hash("eve@example.com"), "erased", at=AT)
    _, result = _import(state_db, [_row("ann@example.com"), _row("bob@example.com")], lists=[("news", ("bounced",))])
    _, again = _import(state_db, [_row("eve@example.com"), _row("bob@example.com")], lists=[("news", ("bounced",))])
    assert (result.subscribed, result.kept_out) == (1, {"bounced": 1})
    assert (again.skipped_erased, again.kept_out) == (1, {"bounced": 1})
    assert find_contact(state_db, "eve@example.com") is None


def test_export_and_erase(state_db: Any) -> None:
    _import(state_db, [_row("ann@example.com", builtins={"first_name": "Ann"}, tags=["vip"], fields={"n": 1})])
    exported = export_contact(state_db, "ann@example.com")
    assert exported is not None
    contact = exported["contact"]
    assert (contact["email"], contact["first_name"], contact["tags"], contact["fields"]) == (
        "ann@example.com",
        "Ann",
        ["vip"],
        {"n": 1},
    )
    assert "id" not in contact and "email_hash" not in contact
    assert exported["subscriptions"] == [{"list": "offers", "status": "subscribed", "updated_at": AT}]
    assert [row["action"] for row in exported["consent"]] == ["subscribe"]
    assert (exported["suppression"], exported["messages"], exported["events"]) == (None, [], [])
    assert export_contact(state_db, "nobody@example.com") is None

    assert erase_contact(state_db, "ann@example.com", at=LATER) is True
    assert find_contact(state_db, "ann@example.com") is None
    assert state_db.conn.execute("SELECT count(*) FROM consent").fetchone()[0] == 0
    left = export_contact(state_db, "ann@example.com")
    assert left is not None
    assert left["suppression"] == {"reason": "erased", "at": LATER, "detail": None}
    assert erase_contact(state_db, "ann@example.com", at=LATER) is False
    actions = [row[0] for row in state_db.conn.execute("SELECT action FROM audit ORDER BY id")]
    assert actions == ["erased", "erased"]


def test_a_workflow_step_tags_untags_and_sets_fields(state_db: Any) -> None:
    _import(state_db, [_row("ann@example.com", tags=["b"], fields={"n": 1, "plan": "pro"})])
    ann = find_contact(state_db, "ann@example.com")
    assert ann is not None
    with write(state_db):
        change_tag(state_db, ann.id, "a", present=True, at=LATER)
        change_tag(state_db, ann.id, "b", present=True, at=LATER)  # already there: once
        change_tag(state_db, ann.id, 'say "hi"', present=True, at=LATER)
        set_custom_field(state_db, ann.id, "n", 2.5, at=LATER)
        set_custom_field(state_db, ann.id, "odd key", ["x"], at=LATER)
        set_custom_field(state_db, ann.id, "plan", None, at=LATER)
    found = find_contact(state_db, "ann@example.com")
    assert found is not None
    assert (found.tags, found.fields) == (("a", "b", 'say "hi"'), {"n": 2.5, "odd key": ["x"]})
    with write(state_db):
        for tag in ("a", "b", 'say "hi"'):
            change_tag(state_db, ann.id, tag, present=False, at=LATER)
    assert state_db.conn.execute("SELECT tags FROM contacts").fetchone()[0] == "[]"
