"""Who must not be mailed, and why: the one place that writes a suppression.

Suppressions are keyed by the hash of the normalised address, so an erased person leaves no address behind and
still cannot be imported again. A stronger reason replaces a weaker one, never the other way round: an erasure
beats everything, a bounce or a complaint beats an unsubscribe (a bad address stays out of transactional mail
too), and a weaker reason arriving later changes nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

from reconciler.state.postgres import StateDatabase

SuppressionReason = Literal["unsubscribed", "bounced", "complained", "erased"]

_UPSERT = (
    "INSERT INTO suppressions(email_hash, reason, at, detail) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(email_hash) DO UPDATE SET reason = excluded.reason, at = excluded.at, detail = excluded.detail "
    "WHERE excluded.reason = 'erased' OR (excluded.reason IN ('bounced', 'complained') "
    "AND suppressions.reason = 'unsubscribed')"
)


def email_hash(email: str) -> str:
    """The key of a suppression: sha256 of the normalised address."""
    return hashlib.sha256(email.encode()).hexdigest()


def suppress(db: StateDatabase, hashed: str, reason: SuppressionReason, *, at: str, detail: str | None = None) -> None:
    """Inside the caller's write: keep the address with hash `hashed` out of mail for `reason`."""
    db.conn.execute(_UPSERT, (hashed, reason, at, detail[:200] if detail else None))


def suppress_many(db: StateDatabase, entries: Iterable[tuple[str, SuppressionReason, str | None]], *, at: str) -> None:
    """Inside the caller's write: `suppress` for many (hash, reason, detail) at once (an import's status column)."""
    db.conn.executemany(
        _UPSERT, [(hashed, reason, at, detail[:200] if detail else None) for hashed, reason, detail in entries]
    )


def lift_unsubscribe(db: StateDatabase, contact_id: int) -> None:
    """Inside the caller's write: the person chose a list again after unsubscribing from everything."""
    db.conn.execute(
        "DELETE FROM suppressions WHERE reason = 'unsubscribed' AND email_hash = "
        "(SELECT email_hash FROM contacts WHERE id = ?)",
        (contact_id,),
    )


def reason_for(db: StateDatabase, hashed: str) -> str | None:
    row = db.conn.execute("SELECT reason FROM suppressions WHERE email_hash = ?", (hashed,)).fetchone()
    return None if row is None else str(row[0])
