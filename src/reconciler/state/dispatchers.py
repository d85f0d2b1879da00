"""Who is sending: one registration per running dispatcher, and recovery of the rows a stopped one left behind.

A dispatcher registers (host, pid) when a pass begins and beats every few seconds. A `sending` row whose
dispatcher is gone (its process on this host is dead, or its heartbeat went stale) was cut off on the wire: it
becomes `uncertain`, or is queued again with the same Message-ID where its transport says `on_uncertain: resend`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlite_utils import Database

from reconciler.state.content import load_content
from reconciler.state.db import write


@dataclass(frozen=True)
class Interrupted:
    """A row left `sending` by a dispatcher that is gone."""

    row_id: int
    transport: str | None
    """Its campaign's transport; None for messages sent with the default one (double opt-in confirmations)."""


def register(db: Database, ident: str, *, host: str, pid: int, at: str) -> None:
    with write(db):
        db.conn.execute(
            "INSERT INTO dispatchers(id, host, pid, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            (ident, host, pid, at, at),
        )


def heartbeat(db: Database, ident: str, *, at: str) -> None:
    with write(db):
        db.conn.execute("UPDATE dispatchers SET heartbeat_at = ? WHERE id = ?", (at, ident))


def unregister(db: Database, ident: str) -> None:
    with write(db):
        db.conn.execute("DELETE FROM dispatchers WHERE id = ?", (ident,))


def interrupted(db: Database, *, host: str, alive: Callable[[int], bool], stale_before: str) -> list[Interrupted]:
    """`sending` rows whose dispatcher is gone: its process on this host is dead, or its heartbeat went stale."""
    live = {
        ident
        for ident, dispatcher_host, pid, heartbeat_at in db.conn.execute(
            "SELECT id, host, pid, heartbeat_at FROM dispatchers"
        )
        if heartbeat_at >= stale_before and (dispatcher_host != host or alive(pid))
    }
    rows = db.conn.execute(
        "SELECT l.id, l.claimed_by, c.content FROM ledger l "
        "LEFT JOIN campaigns c ON l.source_kind = 'campaign' AND c.name = l.source WHERE l.state = 'sending'"
    )
    return [
        Interrupted(row_id, load_content(content).transport if content else None)
        for row_id, claimed_by, content in rows
        if claimed_by not in live
    ]


def settle_interrupted(db: Database, *, uncertain: Sequence[int], resend: Sequence[int], at: str) -> None:
    """After a crash: rows cut off mid-transaction are `uncertain`, or queued again (same Message-ID) where the
    transport says `on_uncertain: resend`; dispatchers that left no row behind are forgotten."""
    with write(db):
        db.conn.executemany(
            "UPDATE ledger SET state = 'uncertain', claimed_by = NULL, updated_at = ?, last_reply = "
            "'interrupted during the SMTP transaction (the process stopped); not sent again' "
            "WHERE id = ? AND state = 'sending'",
            [(at, row_id) for row_id in uncertain],
        )
        db.conn.executemany(
            "UPDATE ledger SET state = 'queued', claimed_by = NULL, updated_at = ?, last_reply = "
            "'interrupted during the SMTP transaction; sent again with the same Message-ID (on_uncertain: resend)' "
            "WHERE id = ? AND state = 'sending'",
            [(at, row_id) for row_id in resend],
        )
        db.conn.execute(
            "DELETE FROM dispatchers WHERE id NOT IN (SELECT DISTINCT claimed_by FROM ledger "
            "WHERE state = 'sending' AND claimed_by IS NOT NULL) AND heartbeat_at < ?",
            (at,),
        )
