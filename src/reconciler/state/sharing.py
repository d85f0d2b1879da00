"""What the dispatchers of several daemons sending from one database need to share it: pages of due rows reserved
by the dispatcher reading them, and the contact's limits counted again at the claim.

On PostgreSQL every daemon dispatches. Each reads its next page of due rows as a reservation (`reserved`): one
statement picks rows nobody holds with ``FOR UPDATE SKIP LOCKED`` and marks them as its own, so two dispatchers
reading at once get different pages and neither waits for the other; the claim at the point of no return
(`ledger.claim`) still decides who sends a row, so a reservation that ran out only shares a page, never sends a
row twice. The frequency cap and a contact's frequency choice (`holds`) are checked before rendering by each
process, and once more inside the claim (`held`), against every process's messages sent or on the wire, so two
daemons sending to one contact at once keep the cap together. On SQLite (one writer) pages are read as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from reconciler.clock import iso
from reconciler.state.contacts import CONTACT_COLUMNS
from reconciler.state.db import is_fenced
from reconciler.state.portable import is_postgres, json_values
from reconciler.state.postgres import StateDatabase

RESERVED_FOR = timedelta(minutes=2)
"""How long a page of rows stays reserved for the dispatcher that read it, unless it releases them first (at the
end of the definition) or is found gone (recovery releases them): long enough to send a page at a low rate limit;
a page that takes longer is only shared, never sent twice (the claim decides)."""
CAPS_LOCK = 0x63617073
"""The first key of the advisory lock a claim holds on its contact while it counts their messages ("caps")."""


@dataclass(frozen=True)
class Reservation:
    """Who reads a page of due rows, and when: the rows are theirs until `at` + RESERVED_FOR."""

    dispatcher: str
    at: str


def reserved(
    db: StateDatabase, due: str, params: Sequence[Any], reserve: Reservation, limit: int
) -> list[tuple[Any, ...]]:
    """The page reserved in one statement (PostgreSQL): rows of ledger `l` matching `due` (with `params`) that
    nobody else reserved, or whose reservation ran out, locked ``FOR UPDATE SKIP LOCKED`` and marked as this
    dispatcher's; each as (id, attempts, message_id, first_attempt_at, *CONTACT_COLUMNS), by id. Not a claim: a
    row stays queued until its claim, so a dispatcher killed with a page reserved leaves nothing uncertain (the
    page waits for the reservation's end, or for the recovery that finds the dispatcher gone)."""
    until = iso(datetime.fromisoformat(reserve.at) + RESERVED_FOR)
    return list(
        db.conn.execute(
            f"WITH picked AS (SELECT l.id FROM ledger l WHERE {due} "  # noqa: S608 (`due`: the caller's SQL)
            "AND (l.reserved_by IS NULL OR l.reserved_by = ? OR l.reserved_until < ?) "
            "ORDER BY l.id LIMIT ? FOR UPDATE OF l SKIP LOCKED), "
            "mine AS (UPDATE ledger SET reserved_by = ?, reserved_until = ? FROM picked WHERE ledger.id = picked.id "
            "RETURNING ledger.id, ledger.attempts, ledger.message_id, ledger.first_attempt_at, ledger.contact_id) "
            f"SELECT l.id, l.attempts, l.message_id, l.first_attempt_at, {CONTACT_COLUMNS} "
            "FROM mine l JOIN contacts c ON c.id = l.contact_id ORDER BY l.id",
            (*params, reserve.dispatcher, reserve.at, limit, reserve.dispatcher, until),
        )
    )


def release(db: StateDatabase, dispatchers: Sequence[str]) -> None:
    """The rows `dispatchers` reserved and did not claim (they stopped, held rows back, or are gone) are anyone's
    again. Nothing on SQLite, where pages are not reserved (and an idle daemon writes nothing)."""
    if not is_postgres(db):
        return
    db.conn.executemany(
        "UPDATE ledger SET reserved_by = NULL, reserved_until = NULL WHERE reserved_by = ?",
        [(ident,) for ident in dispatchers],
    )


RECORD_OUTCOME = (
    "UPDATE ledger SET state = ?, last_reply = ?, updated_at = ?, next_attempt_at = ?, claimed_by = NULL, "
    "sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END WHERE id = ?"
)
"""A claimed row's outcome written to it (`ledger.record`); parameters from `outcome_params`."""


def outcome_params(state: str, reply: str, at: str, next_attempt_at: str | None, row_id: int) -> tuple[Any, ...]:
    return (state, reply[:500], at, next_attempt_at, state, at, row_id)


@dataclass(frozen=True)
class Claim:
    """A claim as `claim_at_once` makes it: the row, the message going out, and what it must still be sent to."""

    row_id: int
    dispatcher: str
    message_id: str
    at: str
    marketing: bool
    kind: str
    name: str
    requires: str
    lists: str
    """The source's lists as a JSON array."""
    blocking: str
    """The suppression reasons that stop the message, as a JSON array."""


def at_once(db: StateDatabase) -> bool:
    """Whether a claim may be made in one statement (`claim_at_once`): on PostgreSQL, where each statement is a
    round trip, on a connection no fence checks (a dispatcher's)."""
    return is_postgres(db) and not is_fenced(db)


def claim_at_once(db: StateDatabase, claim: Claim, previous: tuple[Any, ...] | None) -> bool:
    """The usual claim in one statement, its own transaction (PostgreSQL): write `previous` (`outcome_params` of a
    plain outcome: its row alone), and claim the row if nothing stands in its way, the same checks as
    `ledger.claim` makes (queued or deferred, not locked by another, its contact neither erased, nor suppressed for
    a reason in `blocking`, nor off the lists it requires, its campaign still sending). A claim is one round trip
    instead of six (BEGIN, the outcome, the campaign, the row, the claim, COMMIT), during which the dispatcher's
    event loop, and so its other connections, wait: the daemon's send rate on PostgreSQL is bound by them.
    False, with only `previous` written, when the row cannot be claimed so: `ledger.claim` then finds out why
    (taken, skipped, paused) in a transaction of its own. Not for claims that count a contact's messages (caps)
    nor on a fenced connection (`at_once`)."""
    written = previous if previous is not None else (None,) * 7
    return (
        db.conn.execute(
            f"WITH previous AS ({RECORD_OUTCOME}), "  # noqa: S608 (constants of ours: no value in the text)
            "target AS (SELECT l.id FROM ledger l JOIN contacts c ON c.id = l.contact_id "
            "LEFT JOIN suppressions p ON p.email_hash = c.email_hash "
            "WHERE l.id = ? AND l.state IN ('queued', 'deferred') "
            f"AND (p.reason IS NULL OR p.reason NOT IN ({json_values(db, '?')})) "
            "AND (? = 'none' OR EXISTS (SELECT 1 FROM subscriptions s WHERE s.contact_id = l.contact_id "
            f"AND s.status = ? AND s.list IN ({json_values(db, '?')}))) "
            "AND (? <> 'campaign' OR EXISTS (SELECT 1 FROM campaigns m WHERE m.name = ? AND m.status = 'sending')) "
            "FOR UPDATE OF l SKIP LOCKED) "
            "UPDATE ledger SET state = 'sending', claimed_by = ?, attempts = attempts + 1, message_id = ?, "
            "first_attempt_at = coalesce(first_attempt_at, ?), updated_at = ?, marketing = ?, reserved_by = NULL, "
            "reserved_until = NULL FROM target WHERE ledger.id = target.id RETURNING ledger.id",
            (
                *written,
                claim.row_id,
                claim.blocking,
                claim.requires,
                claim.requires,
                claim.lists,
                claim.kind,
                claim.name,
                claim.dispatcher,
                claim.message_id,
                claim.at,
                claim.at,
                int(claim.marketing),
            ),
        ).fetchone()
        is not None
    )


@dataclass(frozen=True)
class Cap:
    """A limit on a contact's marketing messages, checked again at the claim: at most `most` of them after
    `since`, else the row waits until `per` seconds after the one that is `most` back."""

    since: str
    most: int
    per: float
    why: str


def held(db: StateDatabase, row_id: int, contact_id: int, caps: Sequence[Cap], *, at: str) -> bool:
    """Inside a claim: whether the contact's marketing messages sent after the earliest `since`, or on the wire now
    (`sending`, claimed by any process, counted as sent `at`), reach one of `caps`; if so the row is postponed as
    `holds` would have postponed it. On PostgreSQL two claims for one contact count one after the other (a
    transaction lock on the contact, taken by claims only): claims that do not otherwise wait for each other would
    each count without the other's row."""
    if is_postgres(db):
        db.conn.execute(
            "SELECT pg_advisory_xact_lock(CAST(? AS integer), CAST(? AS integer))", (CAPS_LOCK, contact_id % 2**31)
        )
    since = min(cap.since for cap in caps)
    times = sorted(
        str(moment)
        for (moment,) in db.conn.execute(
            "SELECT CASE WHEN state = 'sending' THEN ? ELSE sent_at END FROM ledger WHERE contact_id = ? AND id <> ? "
            "AND coalesce(marketing, 1) = 1 AND (state = 'sending' OR state = 'sent' AND sent_at > ?)",
            (at, contact_id, row_id, since),
        )
    )
    for cap in caps:
        recent = [moment for moment in times if moment > cap.since]
        if len(recent) >= cap.most:
            until = iso(datetime.fromisoformat(recent[len(recent) - cap.most]) + timedelta(seconds=cap.per))
            db.conn.execute(
                "UPDATE ledger SET next_attempt_at = ?, last_reply = ?, updated_at = ? WHERE id = ?",
                (until, f"postponed: {cap.why}", at, row_id),
            )
            return True
    return False
