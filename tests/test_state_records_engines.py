"""What plan and apply read and write of the state, on both engines (the `state_db` fixture: SQLite, then
PostgreSQL): list and field records, revisions (applied and refused), meta and the serial, the Settings, the counts
of the last apply, the daemon's record, pruning, and the observed state a plan starts from (the membership
histogram by bits and by names), with the same assertions on each."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from reconciler.spec.documents import CustomField, MailingList
from reconciler.state import keys, pages, records, settings
from reconciler.state.contacts import ContactRow, import_batch, start_import
from reconciler.state.db import StaleState, bump_serial, claim_serial, get_meta, snapshot, write
from reconciler.state.observe import Signature, _histogram_by_names, audience_histogram, observe
from reconciler.state.suppressions import email_hash, suppress

AT = "2026-11-24T11:00:00Z"
LATER = "2026-11-25T09:00:00Z"


def _list(name: str) -> MailingList:
    return MailingList.model_validate({"kind": "List", "name": name, "title": name.title()})


def test_lists_and_fields_are_recorded_removed_and_restored(state_db: Any) -> None:
    with write(state_db):
        records.upsert_list(state_db, _list("news"))
        records.upsert_list(state_db, _list("offers"))
        records.upsert_field(state_db, CustomField(kind="Field", name="plan", type="string"))
        records.upsert_field(state_db, CustomField(kind="Field", name="age", type="integer"))
        records.remove_list(state_db, "offers", at=AT)
        records.remove_field(state_db, "age", at=AT)
    found = records.list_records(state_db)
    assert {name: record.removed_at for name, record in found.items()} == {"news": None, "offers": AT}
    assert found["news"].document == _list("news")
    assert records.field_types(state_db) == {"plan": "string"}
    with write(state_db):
        records.upsert_list(state_db, _list("offers"))
        records.upsert_field(state_db, CustomField(kind="Field", name="age", type="number"))
    assert sorted(records.lists(state_db)) == ["news", "offers"]
    assert records.list_records(state_db)["offers"].removed_at is None
    assert records.field_types(state_db) == {"plan": "string", "age": "number"}


def test_revisions_meta_and_the_serial(state_db: Any) -> None:
    with write(state_db):
        records.record_revision(state_db, "r1", git_commit=None, at=AT, actions=3)
        records.record_revision(state_db, "r2", git_commit="abc", at=LATER, actions=1)
    found = records.revisions(state_db)
    assert [(row["revision"], row["git_commit"], row["actions"]) for row in found] == [
        ("r2", "abc", 1),
        ("r1", None, 3),
    ]
    assert records.revisions(state_db, limit=1)[0]["applied_at"] == LATER
    assert (get_meta(state_db, "last_applied_revision"), get_meta(state_db, "last_applied_commit")) == ("r2", "abc")
    with write(state_db):
        claim_serial(state_db, 0)
        bump_serial(state_db)
    assert get_meta(state_db, "serial") == "2"
    with pytest.raises(StaleState), write(state_db):
        claim_serial(state_db, 1)
    assert get_meta(state_db, "serial") == "2"  # rolled back with its transaction


def test_a_refused_revision_is_remembered_until_cleared(state_db: Any) -> None:
    records.refuse_revision(state_db, "r3", ["one", "two"], at=AT)
    records.refuse_revision(state_db, "r3", ["one"], at=LATER)
    refused = records.refused_revision(state_db)
    assert refused == records.RefusedRevision("r3", AT, 1, ("one",))
    with write(state_db):
        records.clear_refused(state_db)
    assert records.refused_revision(state_db) is None


def test_settings_and_the_daemon_record(state_db: Any) -> None:
    assert settings.load(state_db).applied is False
    with write(state_db):
        settings.save(state_db, settings.INITIAL)
    assert settings.load(state_db).applied is True
    assert settings.load(state_db).settings == settings.INITIAL
    record = records.DaemonRecord("host", 42, AT, "ok", ("a problem",))
    records.save_daemon(state_db, record)
    assert records.daemon_record(state_db) == record


def test_counts_are_recorded_when_they_change(state_db: Any) -> None:
    with write(state_db):
        records.record_counts(state_db, {"Segment a": 3, "Campaign b": 5}, at=AT)
    with write(state_db):
        records.record_counts(state_db, {"Segment a": 3, "Campaign b": 6}, at=LATER)
    rows = state_db.conn.execute("SELECT subject, count, at FROM plan_counts ORDER BY subject").fetchall()
    assert [tuple(row) for row in rows] == [("Campaign b", 6, LATER), ("Segment a", 3, AT)]
    assert observe(state_db, audience=False).last_counts == {"Segment a": 3, "Campaign b": 6}


def test_prune_forgets_old_webhook_ids(state_db: Any) -> None:
    state_db.conn.execute(
        "INSERT INTO webhook_events(provider, event_id, at) VALUES ('ses', 'old', ?), ('ses', 'new', ?)",
        ("2026-10-01T00:00:00Z", AT),
    )
    pruned = records.prune(state_db, now=datetime(2026, 11, 25, tzinfo=UTC))
    assert pruned == {"webhook ids": 1, "dispatcher registrations": 0}


def _people(db: Any) -> None:
    """ann on news and offers, bob on news (then unsubscribed from offers), cy on news and bounced."""
    import_id = start_import(db, file="p.csv", at=AT)
    rows = [ContactRow.build(f"{name}@example.com", {}, [], {}) for name in ("ann", "bob", "cy")]
    common: dict[str, Any] = {"import_id": import_id, "at": AT, "source": "test", "consent_text": None}
    import_batch(db, rows, lists=[("news", ())], **common)
    import_batch(db, rows[:1], lists=[("offers", ())], **common)
    bob = [ContactRow.build("bob@example.com", {}, [], {}, status="unsubscribed")]
    import_batch(db, bob, lists=[("offers", ())], **common)
    with write(db):
        suppress(db, email_hash("cy@example.com"), "bounced", at=AT)


def test_the_observed_state_counts_contacts_by_membership_signature(state_db: Any) -> None:
    _people(state_db)
    expected = {
        Signature(frozenset({"news", "offers"}), frozenset(), frozenset(), None): 1,
        Signature(frozenset({"news"}), frozenset({"offers"}), frozenset(), None): 1,
        Signature(frozenset({"news"}), frozenset(), frozenset(), "bounced"): 1,
    }
    assert audience_histogram(state_db) == expected
    assert _histogram_by_names(state_db) == expected  # more lists than an integer has bits
    observed = observe(state_db)
    assert (observed.contacts, observed.audience, observed.serial) == (3, expected, 0)
    assert (observed.campaigns, observed.workflows, observed.runs) == ({}, {}, {})


def test_keys_and_pages(state_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_SIGNING_KEY", raising=False)
    signer = keys.signer_for(state_db, "TEST_SIGNING_KEY")
    assert keys.signer_for(state_db, "TEST_SIGNING_KEY").fingerprint == signer.fingerprint  # generated once, kept
    keys.note_signing(state_db, signer)
    keys.note_signing(state_db, signer)
    assert keys.signed_with(state_db) == [signer.fingerprint]
    assert keys.instance_id(state_db) == keys.instance_id(state_db)
    stored = pages.StoredPages(pages={"base.html": "<p>{{ body }}</p>"})
    with write(state_db):
        pages.save(state_db, stored)
    assert pages.load(state_db) == stored
    _people(state_db)
    (ann,) = state_db.conn.execute("SELECT id FROM contacts WHERE email = 'ann@example.com'").fetchone()
    reader = pages.reader(state_db, ann)
    assert reader is not None and (reader.locale, sorted(reader.lists)) == (None, ["news", "offers"])
    assert pages.reader(state_db, 10_000) is None


def test_a_snapshot_reads_one_moment_and_cannot_write(state_db: Any) -> None:
    with write(state_db):
        records.record_revision(state_db, "r1", git_commit=None, at=AT, actions=1)
    with snapshot(state_db):
        assert get_meta(state_db, "last_applied_revision") == "r1"
        with pytest.raises(Exception, match=r"(?i)read.?only"):
            state_db.conn.execute("UPDATE meta SET value = 'x' WHERE key = 'last_applied_revision'")
    assert not state_db.conn.in_transaction
    assert get_meta(state_db, "last_applied_revision") == "r1"
    with write(state_db):  # writes work again afterwards
        records.record_revision(state_db, "r2", git_commit=None, at=LATER, actions=1)
    assert get_meta(state_db, "last_applied_revision") == "r2"
