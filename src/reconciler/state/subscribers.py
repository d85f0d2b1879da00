"""What the web service records: unsubscribes, preferences, double opt-in, engagement, events and bounces.

Every change of a subscription writes a consent record (time, source, IP) in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from reconciler import strictjson
from reconciler.spec.contact import TEXT_FIELDS, ContactValues
from reconciler.spec.documents import marketing_lists
from reconciler.state import engagement, records, rollups
from reconciler.state.campaigns import load_audience
from reconciler.state.db import write
from reconciler.state.engagement import Engagement
from reconciler.state.ledger import CONFIRMATION_SOURCE
from reconciler.state.portable import json_values
from reconciler.state.postgres import StateDatabase
from reconciler.state.suppressions import SuppressionReason, email_hash, lift_unsubscribe, reason_for, suppress

MAX_CONFIRMATIONS = 3
Status = Literal["subscribed", "pending", "unsubscribed"]


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


def message_target(db: StateDatabase, row_id: int) -> MessageTarget | None:
    row = db.conn.execute(
        "SELECT l.id, l.contact_id, c.email, l.source_kind, coalesce(l.workflow, l.source), l.stage, m.audience, "
        "r.list FROM ledger l JOIN contacts c ON c.id = l.contact_id LEFT JOIN campaigns m ON "
        "l.source_kind = 'campaign' AND m.name = l.source LEFT JOIN workflow_runs r ON l.workflow IS NOT NULL "
        "AND r.id = CAST(CASE WHEN l.workflow IS NOT NULL THEN l.source END AS INTEGER) WHERE l.id = ?",
        (row_id,),
    ).fetchone()
    if row is None:
        return None
    row_id, contact_id, email, kind, source, stage, audience, run_list = row
    if audience:
        lists = load_audience(audience).lists
    elif run_list:
        lists = (run_list,)
    elif source == CONFIRMATION_SOURCE:
        lists = (stage.split(":", 1)[0],)
    else:
        lists = ()
    return MessageTarget(row_id, contact_id, email, kind, source, stage, lists)


def unsubscribe(
    db: StateDatabase, target: MessageTarget, *, at: str, source: str, ip: str | None, text: str | None = None
) -> list[str]:
    """Unsubscribe the contact from the lists the message was sent for; returns the lists that changed. `text`
    says how the request came, for the consent record (an opt-out by email: through which provider)."""
    with write(db):
        wanted: dict[str, Status] = {name: "unsubscribed" for name in target.lists}
        changed = change_subscriptions(db, target.contact_id, wanted, at=at, source=source, ip=ip, text=text)
        if changed:
            engagement.record(db, [Engagement(target.row_id, "unsubscribed", at, detail=", ".join(changed))])
    return changed


def change_subscriptions(
    db: StateDatabase,
    contact_id: int,
    wanted: Mapping[str, Status],
    *,
    at: str,
    source: str,
    ip: str | None = None,
    text: str | None = None,
    action: str | None = None,
    repeat: bool = False,
) -> list[str]:
    """Inside the caller's write: how a person's own choices change their subscriptions (pages, forms, the
    confirm button), each change with its consent record (time, source, wording, IP). Returns the lists that
    changed; unsubscribing from a list never joined changes nothing. `action` names the consent action when it is
    not plain subscribe/resubscribe/unsubscribe (`confirm`); `repeat` records a request for the status a list
    already has (a second subscribe form while the first waits for confirmation).

    Two writers stand apart on purpose: an import subscribes a batch of up to 10,000 rows in two statements
    (`contacts.import_batch`), and "unsubscribe from everything" adds a consent record for no list in particular."""
    current = dict(
        db.conn.execute("SELECT list, status FROM subscriptions WHERE contact_id = ?", (contact_id,)).fetchall()
    )
    changed = []
    for name, status in wanted.items():
        before = current.get(name)
        if (before == status and not repeat) or (status == "unsubscribed" and before is None):
            continue
        db.conn.execute(
            "INSERT INTO subscriptions(contact_id, list, status, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(contact_id, list) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at",
            (contact_id, name, status, at),
        )
        if status == "unsubscribed":
            done = "unsubscribe"
        else:
            done = action or ("resubscribe" if before == "unsubscribed" and status == "subscribed" else "subscribe")
        db.conn.execute(
            "INSERT INTO consent(contact_id, list, action, at, source, text, ip) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (contact_id, name, done, at, source, text, ip),
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


def preferences(db: StateDatabase, contact_id: int) -> Preferences | None:
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
    db: StateDatabase, contact_id: int, *, lists: dict[str, bool], frequency: str | None, at: str, ip: str | None
) -> list[str]:
    """The preference form: each public list on or off, and the frequency. Choosing a list again after
    "unsubscribe from everything" lifts that (it is the person's own new consent)."""
    with write(db):
        if any(lists.values()):
            lift_unsubscribe(db, contact_id)
        wanted: dict[str, Status] = {name: "subscribed" if on else "unsubscribed" for name, on in lists.items()}
        changed = change_subscriptions(
            db, contact_id, wanted, at=at, source="preferences", ip=ip, text="preference center"
        )
        db.conn.execute("UPDATE contacts SET frequency = ?, updated_at = ? WHERE id = ?", (frequency, at, contact_id))
    return changed


def unsubscribe_all(
    db: StateDatabase, contact_id: int, *, marketing_lists: Sequence[str], at: str, source: str, ip: str | None
) -> None:
    """Leave every marketing list and keep the address out of marketing mail (receipts still go)."""
    with write(db):
        change_subscriptions(
            db, contact_id, {name: "unsubscribed" for name in marketing_lists}, at=at, source=source, ip=ip
        )
        db.conn.execute(
            "INSERT INTO consent(contact_id, list, action, at, source, ip) VALUES (?, NULL, 'unsubscribe', ?, ?, ?)",
            (contact_id, at, source, ip),
        )
        hashed = db.conn.execute("SELECT email_hash FROM contacts WHERE id = ?", (contact_id,)).fetchone()
        if hashed is not None:
            suppress(db, hashed[0], "unsubscribed", at=at, detail=f"unsubscribed from everything ({source})")


def unsubscribe_lists(db: StateDatabase, contact_id: int, lists: Sequence[str], *, at: str, source: str) -> list[str]:
    """Someone's unsubscribe that reached us another way (`reconciler contacts unsubscribe --list`, an opt-out by
    email): leave these lists, each with its consent record. Returns the lists that changed."""
    with write(db):
        return change_subscriptions(db, contact_id, {name: "unsubscribed" for name in lists}, at=at, source=source)


@dataclass(frozen=True)
class Suppressed:
    """One address of `suppress_addresses`: its reason before (None: not suppressed) and after."""

    email: str
    before: str | None
    after: str


def suppress_addresses(
    db: StateDatabase, emails: Sequence[str], reason: SuppressionReason, *, at: str, source: str
) -> list[Suppressed]:
    """Keep addresses out of mail that another tool, or a person, says must not get any (`reconciler contacts
    suppress`), whether or not they are contacts: a suppression is kept by the address's hash, with `source` as its
    detail, and a contact who unsubscribed gets a consent record too. A stronger reason already held stays."""
    done = []
    with write(db):
        for email in emails:
            hashed = email_hash(email)
            before = reason_for(db, hashed)
            contact = db.conn.execute("SELECT id FROM contacts WHERE email = ?", (email,)).fetchone()
            if reason == "unsubscribed" and before is None and contact is not None:
                db.conn.execute(
                    "INSERT INTO consent(contact_id, list, action, at, source) VALUES (?, NULL, 'unsubscribe', ?, ?)",
                    (contact[0], at, source),
                )
            suppress(db, hashed, reason, at=at, detail=source)
            done.append(Suppressed(email, before, reason_for(db, hashed) or reason))
    return done


# --- double opt-in -------------------------------------------------------------------------------------------


def request_subscription(
    db: StateDatabase,
    email: str,
    lists: Sequence[tuple[str, bool]],
    *,
    first_name: str | None = None,
    at: str,
    ip: str | None,
    text: str | None,
    source: str = "form",
    locale: str | None = None,
) -> list[str]:
    """A subscribe form (or the API): single opt-in lists subscribe at once, double opt-in ones go `pending` and
    queue one confirmation email each (at most MAX_CONFIRMATIONS per list). Returns the double opt-in lists that got
    one. Suppressed addresses (bounced, complained, unsubscribed from everything, erased) get nothing. `locale`:
    the language the form's page spoke, kept for a contact without one (their confirmation email speaks it too)."""
    hashed = email_hash(email)
    with write(db):
        if reason_for(db, hashed) is not None:
            return []
        contact_id = contact_for(db, email, at=at, first_name=first_name)
        if locale:
            db.conn.execute("UPDATE contacts SET locale = ? WHERE id = ? AND locale IS NULL", (locale, contact_id))
        queued = []
        for name, double in lists:
            if subscription_status(db, contact_id, name) == "subscribed":
                continue
            wanted: Status = "pending" if double else "subscribed"
            # every request is evidence of consent, a repeated one too (its wording and IP may differ)
            change_subscriptions(db, contact_id, {name: wanted}, at=at, source=source, ip=ip, text=text, repeat=True)
            if not double:
                continue
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


def confirm(db: StateDatabase, target: MessageTarget, *, at: str, ip: str | None) -> bool:
    """The confirm button: a pending subscription becomes a subscription (consent action `confirm`)."""
    name = target.lists[0] if target.lists else ""
    with write(db):
        if subscription_status(db, target.contact_id, name) != "pending":
            return False
        change_subscriptions(
            db, target.contact_id, {name: "subscribed"}, at=at, source="confirmation link", ip=ip, action="confirm"
        )
    return True


def subscription_status(db: StateDatabase, contact_id: int, name: str) -> str | None:
    row = db.conn.execute(
        "SELECT status FROM subscriptions WHERE contact_id = ? AND list = ?", (contact_id, name)
    ).fetchone()
    return None if row is None else str(row[0])


def left_by_choice(db: StateDatabase, contact_id: int, name: str) -> bool:
    """Did the person unsubscribe from this list, or from everything? Only they may undo that (a form, the
    preference page): an automation that adds people to lists never does."""
    row = db.conn.execute(
        "SELECT s.status, p.reason FROM contacts c LEFT JOIN subscriptions s ON s.contact_id = c.id AND s.list = ? "
        "LEFT JOIN suppressions p ON p.email_hash = c.email_hash WHERE c.id = ?",
        (name, contact_id),
    ).fetchone()
    return row is not None and (row[0] == "unsubscribed" or row[1] == "unsubscribed")


# --- engagement, events, bounces ------------------------------------------------------------------------------


def record_engagement(db: StateDatabase, facts: Sequence[Engagement]) -> int:
    """Opens and clicks in one transaction."""
    with write(db):
        engagement.record(db, facts)
    return len(facts)


def contact_for(db: StateDatabase, email: str, *, at: str, first_name: str | None = None) -> int:
    """Inside the caller's write: the id of the contact with this address, created (with `first_name`) if new."""
    db.conn.execute(
        "INSERT INTO contacts(email, email_hash, first_name, created_at, updated_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(email) DO UPDATE SET first_name = coalesce(contacts.first_name, excluded.first_name)",
        (email, email_hash(email), first_name, at, at),
    )
    return int(db.conn.execute("SELECT id FROM contacts WHERE email = ?", (email,)).fetchone()[0])


def known_contacts(db: StateDatabase, emails: Sequence[str]) -> dict[str, int]:
    """The ids of those of the addresses that are contacts, in one query (`contact_for` adds the others)."""
    query = f"SELECT email, id FROM contacts WHERE email IN ({json_values(db, '?')})"  # noqa: S608
    return {str(email): int(contact_id) for email, contact_id in db.conn.execute(query, (json.dumps(emails),))}


_MADE_UP = (
    f"UPDATE contacts SET {', '.join(f'{name} = ?' for name in TEXT_FIELDS)}, fields = ?, tags = ? "  # noqa: S608
    "WHERE id = ?"
)


def made_up_contact(db: StateDatabase, values: ContactValues, *, at: str) -> int:
    """Inside the caller's write: the contact a workflow test makes up, with every value it gives; its id."""
    contact_id = contact_for(db, values.email, at=at, first_name=values.first_name)
    given = [getattr(values, name) for name in TEXT_FIELDS]
    db.conn.execute(_MADE_UP, (*given, json.dumps(values.fields), json.dumps(sorted(set(values.tags))), contact_id))
    return contact_id


def insert_events(
    db: StateDatabase, events: Sequence[tuple[str, str, str, dict[str, Any], str | None]], *, at: str
) -> tuple[int, int]:
    """(email, type, occurred_at, properties, id) each; an id seen before is skipped. Returns (added, repeated)."""
    added = 0
    with write(db):
        before = int(db.conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])
        ids = known_contacts(db, [event[0] for event in events])
        for email, kind, occurred_at, properties, external_id in events:
            contact_id = ids.get(email)
            if contact_id is None:
                contact_id = ids[email] = contact_for(db, email, at=at)
            added += db.conn.execute(
                "INSERT INTO events(contact_id, type, occurred_at, properties, external_id) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(external_id) DO NOTHING",
                (contact_id, kind, occurred_at, strictjson.dumps(properties), external_id),
            ).rowcount
        rollups.count_conversions(db, before)
    return added, len(events) - added


def provider_event(
    db: StateDatabase, provider: str, event_id: str, *, email: str, kind: str, hard: bool, at: str, detail: str
) -> bool:
    """A bounce, complaint or unsubscribe from a provider's webhook, once per event id. A hard bounce suppresses
    the address, a complaint suppresses all marketing to it, an unsubscribe leaves every marketing list (as the
    preference page's "unsubscribe from everything" does, its consent record naming the webhook), a soft bounce is
    only counted. Returns False for a redelivery."""
    with write(db):
        fresh = db.conn.execute(
            "INSERT INTO webhook_events(provider, event_id, at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (provider, event_id, at),
        ).rowcount
        if not fresh:
            return False
        contact = db.conn.execute("SELECT id FROM contacts WHERE email = ?", (email,)).fetchone()
        source = f"webhook:{provider}"
        if kind == "unsubscribe" and contact is not None:
            marketing = marketing_lists(records.lists(db))
            unsubscribe_all(db, contact[0], marketing_lists=marketing, at=at, source=source, ip=None)
        elif kind == "unsubscribe":
            suppress(db, email_hash(email), "unsubscribed", at=at, detail=f"{source}: {detail}" if detail else source)
        elif kind == "complaint":
            suppress(db, email_hash(email), "complained", at=at, detail=f"{provider}: {detail}")
        elif hard:
            suppress(db, email_hash(email), "bounced", at=at, detail=f"{provider}: {detail}")
        if contact is not None:
            last = db.conn.execute(
                "SELECT id FROM ledger WHERE contact_id = ? AND state = 'sent' ORDER BY sent_at DESC LIMIT 1",
                (contact[0],),
            ).fetchone()
            action: engagement.Action = {"complaint": "complained", "unsubscribe": "unsubscribed"}.get(kind, "bounced")  # type: ignore[assignment]
            note = f"{'hard' if hard else 'soft'}: {provider}: {detail}"[:200] if kind == "bounce" else provider
            engagement.record(
                db, [Engagement(last[0] if last else None, action, at, detail=note, contact_id=contact[0])]
            )
    return True


def sending_counts(db: StateDatabase) -> dict[str, int]:
    """Ledger rows by state (for /metrics)."""
    return dict(db.conn.execute("SELECT state, count(*) FROM ledger GROUP BY state").fetchall())
