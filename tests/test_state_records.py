"""What the state records about people, written through the product's own paths into a real database of each
engine (the `state_db` fixture: SQLite, then PostgreSQL)."""

from __future__ import annotations

from typing import Any

from reconciler.state.contacts import erase_contact
from reconciler.state.db import write
from reconciler.state.engagement import Engagement
from reconciler.state.subscribers import (
    confirm,
    left_by_choice,
    message_target,
    preferences,
    provider_event,
    record_engagement,
    request_subscription,
    save_preferences,
    sending_counts,
    subscription_status,
    suppress_addresses,
    unsubscribe,
    unsubscribe_all,
)
from reconciler.state.suppressions import email_hash, suppress

AT = "2026-11-24T10:00:00Z"
ADA = "ada@example.com"


def _confirmation_row(db: Any) -> int:
    """Ada asks for a double opt-in list: her confirmation email is a ledger row (a message to her)."""
    assert request_subscription(db, ADA, [("news", True)], first_name="Ada", at=AT, ip="192.0.2.1", text="v1") == [
        "news"
    ]
    return int(db.execute("SELECT id FROM ledger").fetchone()[0])


def test_a_second_subscribe_request_while_the_first_waits_is_recorded_as_consent_too(state_db: Any) -> None:
    db = state_db
    _confirmation_row(db)
    request_subscription(db, ADA, [("news", True)], first_name="Ada", at=AT, ip="198.51.100.7", text="v2")
    consent = db.execute("SELECT action, text, ip FROM consent ORDER BY id").fetchall()
    assert consent == [("subscribe", "v1", "192.0.2.1"), ("subscribe", "v2", "198.51.100.7")]
    assert db.execute("SELECT count(*) FROM ledger").fetchone()[0] == 2  # and a second confirmation email


def test_a_click_is_recorded_with_its_whole_destination(state_db: Any) -> None:
    db = state_db
    row = _confirmation_row(db)
    url = "https://shop.example.com/product?" + "&".join(f"p{i}=value{i}" for i in range(40))
    assert len(url) > 300
    record_engagement(db, [Engagement(row, "clicked", AT, detail=url)])
    assert db.execute("SELECT detail FROM engagement").fetchone()[0] == url


def test_nothing_more_is_recorded_about_an_erased_contact(state_db: Any) -> None:
    db = state_db
    row = _confirmation_row(db)
    erase_contact(db, ADA, at=AT)
    record_engagement(db, [Engagement(row, "opened", AT)])  # a late open of a message sent before the erasure
    assert db.execute("SELECT count(*) FROM engagement").fetchone()[0] == 0


def test_a_stronger_reason_replaces_a_weaker_suppression_never_the_other_way(state_db: Any) -> None:
    db = state_db
    hashed = email_hash(ADA)

    def reason() -> str:
        return str(db.execute("SELECT reason FROM suppressions WHERE email_hash = ?", (hashed,)).fetchone()[0])

    with write(db):
        suppress(db, hashed, "unsubscribed", at=AT)
        suppress(db, hashed, "bounced", at=AT)  # a bad address: out of transactional mail too
    assert reason() == "bounced"
    with write(db):
        suppress(db, hashed, "unsubscribed", at=AT)
        suppress(db, hashed, "complained", at=AT)
    assert reason() == "bounced"
    with write(db):
        suppress(db, hashed, "erased", at=AT)
        suppress(db, hashed, "bounced", at=AT)
    assert reason() == "erased"


def test_confirm_preferences_unsubscribes_and_provider_events(state_db: Any) -> None:
    db = state_db
    row = _confirmation_row(db)
    target = message_target(db, row)
    assert target is not None and (target.email, target.lists, target.stage) == (ADA, ("news",), "news:1")
    assert confirm(db, target, at=AT, ip=None) is True
    assert confirm(db, target, at=AT, ip=None) is False  # confirmed already
    ada = target.contact_id
    request_subscription(db, ADA, [("offers", False)], at=AT, ip=None, text="v1")
    found = preferences(db, ada)
    assert found is not None
    assert (found.subscriptions, found.unsubscribed_from_all) == ({"news": "subscribed", "offers": "subscribed"}, False)
    assert save_preferences(db, ada, lists={"news": False}, frequency="weekly", at=AT, ip=None) == ["news"]
    unsubscribe_all(db, ada, marketing_lists=["offers"], at=AT, source="preferences", ip=None)
    found = preferences(db, ada)
    assert found is not None and found.unsubscribed_from_all and found.frequency == "weekly"
    assert left_by_choice(db, ada, "offers") and subscription_status(db, ada, "offers") == "unsubscribed"
    assert save_preferences(db, ada, lists={"offers": True}, frequency=None, at=AT, ip=None) == ["offers"]
    found = preferences(db, ada)
    assert found is not None and not found.unsubscribed_from_all  # choosing a list again lifts "everything"
    assert unsubscribe(db, target, at=AT, source="one-click", ip=None) == []  # left news already
    assert provider_event(db, "ses", "e1", email=ADA, kind="bounce", hard=True, at=AT, detail="550") is True
    assert provider_event(db, "ses", "e1", email=ADA, kind="bounce", hard=True, at=AT, detail="550") is False
    done = suppress_addresses(db, [ADA, "bob@example.com"], "complained", at=AT, source="test")
    assert [(d.email, d.before, d.after) for d in done] == [
        (ADA, "bounced", "bounced"),
        ("bob@example.com", None, "complained"),
    ]
    assert sending_counts(db) == {"queued": 1}
