"""What the state records about people, written through the product's own paths into a real SQLite file."""

from __future__ import annotations

from pathlib import Path

from sqlite_utils import Database

from reconciler.state import open_db
from reconciler.state.contacts import erase_contact
from reconciler.state.db import write
from reconciler.state.engagement import Engagement
from reconciler.state.subscribers import record_engagement, request_subscription
from reconciler.state.suppressions import email_hash, suppress

AT = "2026-11-24T10:00:00Z"
ADA = "ada@example.com"


def _db(tmp_path: Path) -> Database:
    return open_db(tmp_path / "state.db")


def _confirmation_row(db: Database) -> int:
    """Ada asks for a double opt-in list: her confirmation email is a ledger row (a message to her)."""
    assert request_subscription(db, ADA, [("news", True)], first_name="Ada", at=AT, ip="192.0.2.1", text="v1") == [
        "news"
    ]
    return int(db.execute("SELECT id FROM ledger").fetchone()[0])


def test_a_second_subscribe_request_while_the_first_waits_is_recorded_as_consent_too(tmp_path: Path) -> None:
    db = _db(tmp_path)
    _confirmation_row(db)
    request_subscription(db, ADA, [("news", True)], first_name="Ada", at=AT, ip="198.51.100.7", text="v2")
    consent = db.execute("SELECT action, text, ip FROM consent ORDER BY id").fetchall()
    assert consent == [("subscribe", "v1", "192.0.2.1"), ("subscribe", "v2", "198.51.100.7")]
    assert db.execute("SELECT count(*) FROM ledger").fetchone()[0] == 2  # and a second confirmation email


def test_a_click_is_recorded_with_its_whole_destination(tmp_path: Path) -> None:
    db = _db(tmp_path)
    row = _confirmation_row(db)
    url = "https://shop.example.com/product?" + "&".join(f"p{i}=value{i}" for i in range(40))
    assert len(url) > 300
    record_engagement(db, [Engagement(row, "clicked", AT, detail=url)])
    assert db.execute("SELECT detail FROM engagement").fetchone()[0] == url


def test_nothing_more_is_recorded_about_an_erased_contact(tmp_path: Path) -> None:
    db = _db(tmp_path)
    row = _confirmation_row(db)
    erase_contact(db, ADA, at=AT)
    record_engagement(db, [Engagement(row, "opened", AT)])  # a late open of a message sent before the erasure
    assert db.execute("SELECT count(*) FROM engagement").fetchone()[0] == 0


def test_a_stronger_reason_replaces_a_weaker_suppression_never_the_other_way(tmp_path: Path) -> None:
    db = _db(tmp_path)
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
