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
from reconciler.state.portable import is_postgres
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
