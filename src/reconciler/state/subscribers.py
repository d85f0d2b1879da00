"""What the web service records: unsubscribes, preferences, double opt-in, engagement, events and bounces.

Every change of a subscription writes a consent record (time, source, IP) in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database

from reconciler.state.contacts import email_hash
from reconciler.state.db import write

CONFIRMATION_SOURCE = "double-opt-in"
"""Ledger rows of confirmation emails: source_kind 'workflow', this source, stage '<list>:<n>'."""
MAX_CONFIRMATIONS = 3


@dataclass(frozen=True)
class MessageTarget:
    """Whom a link in a message speaks for: the ledger row, its contact and the lists the message was sent for."""

    row_id: int
    contact_id: int
    email: str
    source_kind: str
    source: str
    stage: str
    lists: tuple[str, ...]


def message_target(db: Database, row_id: int) -> MessageTarget | None:
    row = db.conn.execute(
        "SELECT l.id, l.contact_id, c.email, l.source_kind, l.source, l.stage, m.spec FROM ledger l "
        "JOIN contacts c ON c.id = l.contact_id LEFT JOIN campaigns m ON l.source_kind = 'campaign' "
        "AND m.name = l.source WHERE l.id = ?",
        (row_id,),
    ).fetchone()
    if row is None:
        return None
    row_id, contact_id, email, kind, source, stage, spec = row
    if spec:
        lists = tuple(json.loads(spec)["audience"]["lists"])
    elif source == CONFIRMATION_SOURCE:
        lists = (stage.split(":", 1)[0],)
    else:
        lists = ()
    return MessageTarget(row_id, contact_id, email, kind, source, stage, lists)


def unsubscribe(db: Database, target: MessageTarget, *, at: str, source: str, ip: str | None) -> list[str]:
    """Unsubscribe the contact from the lists the message was sent for; returns the lists that changed."""
    with write(db):
        changed = _set_lists(db, target.contact_id, {name: False for name in target.lists}, at=at, source=source, ip=ip)
        if changed:
            db.conn.execute(
                "INSERT INTO engagement(ledger_id, contact_id, source_kind, source, stage, action, at, detail) "
                "VALUES (?, ?, ?, ?, ?, 'unsubscribed', ?, ?)",
                (
                    target.row_id,
                    target.contact_id,
                    target.source_kind,
                    target.source,
                    target.stage,
                    at,
                    ", ".join(changed),
                ),
            )
    return changed


def _set_lists(
    db: Database,
    contact_id: int,
    wanted: dict[str, bool],
    *,
    at: str,
    source: str,
    ip: str | None,
    text: str | None = None,
) -> list[str]:
    current = dict(
        db.conn.execute("SELECT list, status FROM subscriptions WHERE contact_id = ?", (contact_id,)).fetchall()
    )
    changed = []
    for name, on in wanted.items():
        status = "subscribed" if on else "unsubscribed"
        before = current.get(name)
        if before == status or (not on and before is None):
            continue
        db.conn.execute(
            "INSERT INTO subscriptions(contact_id, list, status, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(contact_id, list) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
            (contact_id, name, status, at),
        )
        action = ("resubscribe" if before == "unsubscribed" else "subscribe") if on else "unsubscribe"
        db.conn.execute(
            "INSERT INTO consent(contact_id, list, action, at, source, text, ip) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (contact_id, name, action, at, source, text, ip),
        )
        changed.append(name)
    return changed


@dataclass(frozen=True)
class Preferences:
    email: str
    first_name: str | None
    frequency: str | None
    subscriptions: dict[str, str]
    unsubscribed_from_all: bool


def preferences(db: Database, contact_id: int) -> Preferences | None:
    row = db.conn.execute(
        "SELECT c.email, c.first_name, c.frequency, p.reason FROM contacts c "
        "LEFT JOIN suppressions p ON p.email_hash = c.email_hash WHERE c.id = ?",
        (contact_id,),
    ).fetchone()
    if row is None:
        return None
    email, first_name, frequency, suppressed = row
    subscriptions = dict(
        db.conn.execute("SELECT list, status FROM subscriptions WHERE contact_id = ?", (contact_id,)).fetchall()
    )
    return Preferences(email, first_name, frequency, subscriptions, suppressed == "unsubscribed")


def save_preferences(
    db: Database, contact_id: int, *, lists: dict[str, bool], frequency: str | None, at: str, ip: str | None
) -> list[str]:
    """The preference form: each public list on or off, and the frequency. Choosing a list again after
    "unsubscribe from everything" lifts that (it is the person's own new consent)."""
    with write(db):
        if any(lists.values()):
            db.conn.execute(
                "DELETE FROM suppressions WHERE reason = 'unsubscribed' AND email_hash = "
                "(SELECT email_hash FROM contacts WHERE id = ?)",
                (contact_id,),
            )
        changed = _set_lists(db, contact_id, lists, at=at, source="preferences", ip=ip, text="preference center")
        db.conn.execute("UPDATE contacts SET frequency = ?, updated_at = ? WHERE id = ?", (frequency, at, contact_id))
    return changed


def unsubscribe_all(
    db: Database, contact_id: int, *, marketing_lists: Sequence[str], at: str, source: str, ip: str | None
) -> None:
    """Leave every marketing list and keep the address out of marketing mail (receipts still go)."""
    with write(db):
        _set_lists(db, contact_id, {name: False for name in marketing_lists}, at=at, source=source, ip=ip)
        db.conn.execute(
            "INSERT INTO consent(contact_id, list, action, at, source, ip) VALUES (?, NULL, 'unsubscribe', ?, ?, ?)",
            (contact_id, at, source, ip),
        )
        db.conn.execute(
            "INSERT INTO suppressions(email_hash, reason, at, detail) SELECT email_hash, 'unsubscribed', ?, ? "
            "FROM contacts WHERE id = ? ON CONFLICT(email_hash) DO NOTHING",
            (at, f"unsubscribed from everything ({source})", contact_id),
        )


# --- double opt-in -------------------------------------------------------------------------------------------


def request_subscription(
    db: Database,
    email: str,
    lists: Sequence[tuple[str, bool]],
    *,
    first_name: str | None,
    at: str,
    ip: str | None,
    text: str,
) -> list[str]:
    """A subscribe form: single opt-in lists subscribe at once, double opt-in ones go `pending` and queue one
    confirmation email each (at most MAX_CONFIRMATIONS per list). Returns the double opt-in lists that got one.
    Suppressed addresses (bounced, complained, unsubscribed from everything, erased) get nothing."""
    hashed = email_hash(email)
    with write(db):
        if db.conn.execute("SELECT 1 FROM suppressions WHERE email_hash = ?", (hashed,)).fetchone():
            return []
        db.conn.execute(
            "INSERT INTO contacts(email, email_hash, first_name, created_at, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(email) DO UPDATE SET first_name = coalesce(contacts.first_name, excluded.first_name)",
            (email, hashed, first_name, at, at),
        )
        contact_id = db.conn.execute("SELECT id FROM contacts WHERE email = ?", (email,)).fetchone()[0]
        queued = []
        for name, double in lists:
            status = db.conn.execute(
                "SELECT status FROM subscriptions WHERE contact_id = ? AND list = ?", (contact_id, name)
            ).fetchone()
            if status and status[0] == "subscribed":
                continue
            if not double:
                _set_lists(db, contact_id, {name: True}, at=at, source="form", ip=ip, text=text)
                continue
            db.conn.execute(
                "INSERT INTO subscriptions(contact_id, list, status, updated_at) VALUES (?, ?, 'pending', ?) "
                "ON CONFLICT(contact_id, list) DO UPDATE SET status = 'pending', updated_at = excluded.updated_at",
                (contact_id, name, at),
            )
            db.conn.execute(
                "INSERT INTO consent(contact_id, list, action, at, source, text, ip) "
                "VALUES (?, ?, 'subscribe', ?, 'form', ?, ?)",
                (contact_id, name, at, text, ip),
            )
            sent = db.conn.execute(
                "SELECT count(*) FROM ledger WHERE source_kind = 'workflow' AND source = ? AND contact_id = ? "
                "AND stage LIKE ?",
                (CONFIRMATION_SOURCE, contact_id, f"{name}:%"),
            ).fetchone()[0]
            if sent < MAX_CONFIRMATIONS:
                db.conn.execute(
                    "INSERT INTO ledger(source_kind, source, stage, contact_id, state, due_at, content_hash, revision, "
                    "created_at, updated_at) VALUES ('workflow', ?, ?, ?, 'queued', ?, '', '', ?, ?)",
                    (CONFIRMATION_SOURCE, f"{name}:{sent + 1}", contact_id, at, at, at),
                )
                queued.append(name)
    return queued


def confirm(db: Database, target: MessageTarget, *, at: str, ip: str | None) -> bool:
    """The confirm button: a pending subscription becomes a subscription (consent action `confirm`)."""
    name = target.lists[0] if target.lists else ""
    with write(db):
        changed = db.conn.execute(
            "UPDATE subscriptions SET status = 'subscribed', updated_at = ? WHERE contact_id = ? AND list = ? "
            "AND status = 'pending'",
            (at, target.contact_id, name),
        ).rowcount
        if changed:
            db.conn.execute(
                "INSERT INTO consent(contact_id, list, action, at, source, ip) VALUES (?, ?, 'confirm', ?, ?, ?)",
                (target.contact_id, name, at, "confirmation link", ip),
            )
    return bool(changed)


def subscription_status(db: Database, contact_id: int, name: str) -> str | None:
    row = db.conn.execute(
        "SELECT status FROM subscriptions WHERE contact_id = ? AND list = ?", (contact_id, name)
    ).fetchone()
    return None if row is None else str(row[0])


# --- engagement, events, bounces ------------------------------------------------------------------------------


def record_engagement(db: Database, rows: Iterable[tuple[int, str, bool, str, str | None]]) -> int:
    """Opens and clicks in one transaction: (ledger row, action, machine, at, detail)."""
    values = list(rows)
    with write(db):
        db.conn.executemany(
            "INSERT INTO engagement(ledger_id, contact_id, source_kind, source, stage, action, machine, at, detail) "
            "SELECT id, contact_id, source_kind, source, stage, ?, ?, ?, ? FROM ledger WHERE id = ?",
            [(action, int(machine), at, detail, row_id) for row_id, action, machine, at, detail in values],
        )
    return len(values)


def contact_id_for(db: Database, email: str, *, at: str, create: bool) -> int | None:
    if create:
        db.conn.execute(
            "INSERT INTO contacts(email, email_hash, created_at, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(email) DO NOTHING",
            (email, email_hash(email), at, at),
        )
    row = db.conn.execute("SELECT id FROM contacts WHERE email = ?", (email,)).fetchone()
    return None if row is None else int(row[0])


def insert_events(
    db: Database, events: Sequence[tuple[str, str, str, dict[str, Any], str | None]], *, at: str
) -> tuple[int, int]:
    """(email, type, occurred_at, properties, id) each; an id seen before is skipped. Returns (added, repeated)."""
    added = 0
    with write(db):
        for email, kind, occurred_at, properties, external_id in events:
            contact_id = contact_id_for(db, email, at=at, create=True)
            added += db.conn.execute(
                "INSERT INTO events(contact_id, type, occurred_at, properties, external_id) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(external_id) DO NOTHING",
                (contact_id, kind, occurred_at, json.dumps(properties), external_id),
            ).rowcount
    return added, len(events) - added


def provider_event(
    db: Database, provider: str, event_id: str, *, email: str, kind: str, hard: bool, at: str, detail: str
) -> bool:
    """A bounce or complaint from a provider's webhook, once per event id. A hard bounce suppresses the address,
    a complaint suppresses all marketing to it, a soft bounce is only counted. Returns False for a redelivery."""
    with write(db):
        fresh = db.conn.execute(
            "INSERT INTO webhook_events(provider, event_id, at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (provider, event_id, at),
        ).rowcount
        if not fresh:
            return False
        reason = {"complaint": "complained", "bounce": "bounced" if hard else None}[kind]
        if reason:
            db.conn.execute(
                "INSERT INTO suppressions(email_hash, reason, at, detail) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(email_hash) DO UPDATE SET reason = excluded.reason, at = excluded.at, "
                "detail = excluded.detail WHERE suppressions.reason = 'unsubscribed'",
                (email_hash(email), reason, at, f"{provider}: {detail}"[:200]),
            )
        contact = db.conn.execute("SELECT id FROM contacts WHERE email = ?", (email,)).fetchone()
        if contact is not None:
            last = db.conn.execute(
                "SELECT id, source_kind, source, stage FROM ledger WHERE contact_id = ? AND state = 'sent' "
                "ORDER BY sent_at DESC LIMIT 1",
                (contact[0],),
            ).fetchone()
            ledger_id, source_kind, source, stage = last or (None, None, None, None)
            db.conn.execute(
                "INSERT INTO engagement(ledger_id, contact_id, source_kind, source, stage, action, at, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ledger_id,
                    contact[0],
                    source_kind,
                    source,
                    stage,
                    "complained" if kind == "complaint" else "bounced",
                    at,
                    f"{'hard' if hard else 'soft'}: {provider}: {detail}"[:200] if kind == "bounce" else provider,
                ),
            )
    return True


def sending_counts(db: Database) -> dict[str, int]:
    """Ledger rows by state (for /metrics)."""
    return dict(db.conn.execute("SELECT state, count(*) FROM ledger GROUP BY state").fetchall())
