"""Opens, clicks, bounces, complaints and unsubscribes, per message: the one place that writes engagement.

A fact names the ledger row of the message it belongs to when it has one (its campaign or workflow and stage are
copied from that row: for a workflow's message the workflow's name, not the run), or only the contact (a
provider's bounce for a message we cannot find).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from reconciler.state import rollups
from reconciler.state.postgres import StateDatabase

Action = Literal["opened", "clicked", "bounced", "complained", "unsubscribed"]


@dataclass(frozen=True)
class Engagement:
    ledger_id: int | None
    action: Action
    at: str
    machine: bool = False
    """A proxy, prefetcher or scanner, not a person: stored apart, it satisfies no `opened`/`clicked` condition."""
    detail: str | None = None
    contact_id: int | None = None
    """Only for facts without a ledger row."""
    country: str | None = None
    """Where an open or click came from (ISO 3166 code from the GeoIP database); the address is never kept."""


def record(db: StateDatabase, facts: Iterable[Engagement]) -> None:
    """Inside the caller's write (or on its own). Facts about a message whose contact was erased are dropped: after
    an erasure nothing more is recorded about the person. The report counters (state/rollups.py) take the new
    rows in the same transaction."""
    before = int(db.conn.execute("SELECT coalesce(max(id), 0) FROM engagement").fetchone()[0])
    db.conn.executemany(
        "INSERT INTO engagement(ledger_id, contact_id, source_kind, source, stage, action, machine, at, detail, "
        "country) SELECT l.id, coalesce(l.contact_id, x.contact_id), l.source_kind, coalesce(l.workflow, l.source), "
        "l.stage, x.action, x.machine, x.at, x.detail, x.country FROM (SELECT CAST(? AS BIGINT) AS ledger_id, "
        "CAST(? AS BIGINT) AS contact_id, CAST(? AS TEXT) AS action, CAST(? AS BIGINT) AS machine, "
        "CAST(? AS TEXT) AS at, CAST(? AS TEXT) AS detail, CAST(? AS TEXT) AS country) x "
        "LEFT JOIN ledger l ON l.id = x.ledger_id "
        "WHERE coalesce(l.contact_id, x.contact_id) IS NOT NULL",
        [(f.ledger_id, f.contact_id, f.action, int(f.machine), f.at, f.detail, f.country) for f in facts],
    )
    rollups.count_new(db, before)
