"""Changing the state as the product's own paths do, for tests that set up people who left or bounced."""

from __future__ import annotations

from sqlite_utils import Database

from reconciler.state.db import write
from reconciler.state.subscribers import Status, change_subscriptions
from reconciler.state.suppressions import SuppressionReason, email_hash, suppress

AT = "2026-11-24T11:00:00Z"


def set_status(db: Database, email: str, list_name: str, status: Status, *, at: str = AT) -> None:
    """One contact's subscription to one list, with its consent record, as the web service writes it."""
    with write(db):
        contact_id = db.conn.execute("SELECT id FROM contacts WHERE email = ?", (email,)).fetchone()[0]
        change_subscriptions(db, contact_id, {list_name: status}, at=at, source="test")


def suppress_address(db: Database, email: str, reason: SuppressionReason, *, at: str = AT) -> None:
    with write(db):
        suppress(db, email_hash(email), reason, at=at)
