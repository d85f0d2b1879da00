"""Who is sending: one registration per running dispatcher, and recovery of the rows a stopped one left behind.

A dispatcher registers (host, pid) when a pass begins and beats every few seconds. A row is claimed (`sending`)
at the point of no return, right before the message's body and final dot go to the server, so a `sending` row
whose dispatcher is gone (its process on this host is dead, or its heartbeat went stale), or that a live dispatcher
left behind in an earlier pass that failed, may have been delivered: it becomes `uncertain`, or is queued again with
the same Message-ID where its transport says `on_uncertain: resend`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from reconciler.state import sharing
from reconciler.state.content import load_content
from reconciler.state.db import write
from reconciler.state.postgres import StateDatabase


@dataclass(frozen=True)
class Interrupted:
    """A row left `sending` by a dispatcher that is gone."""

    row_id: int
    transport: str | None
    """Its campaign's transport; None for messages sent with the default one (double opt-in confirmations)."""


@dataclass(frozen=True)
class Recovery:
    """What a recovery found: rows cut off on the wire, and the registrations of dispatchers that are gone."""

    rows: list[Interrupted]
    gone: set[str]


def register(db: StateDatabase, ident: str, *, host: str, pid: int, at: str) -> None:
    with write(db):
        db.conn.execute(
            "INSERT INTO dispatchers(id, host, pid, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            (ident, host, pid, at, at),
        )


def heartbeat(db: StateDatabase, ident: str, *, host: str, pid: int, at: str) -> None:
    """Still alive (registering again if the registration went missing)."""
    register(db, ident, host=host, pid=pid, at=at)


def unregister(db: StateDatabase, ident: str) -> None:
    with write(db):
        db.conn.execute("DELETE FROM dispatchers WHERE id = ?", (ident,))


def interrupted(db: StateDatabase, *, host: str, alive: Callable[[int], bool], stale_before: str, own: str) -> Recovery:
    """`sending` rows whose dispatcher is gone (its process on this host is dead, or its heartbeat went stale) or is
    `own`: the caller, which has nothing on the wire when its pass begins, so its `sending` rows are leftovers of an
    earlier pass that failed.

    The rows are read before the registrations: a dispatcher registers before it claims, so one that claimed a row
    read here is registered when the registrations are read, unless it has stopped (several daemons recover side
    by side, each while the others send)."""
    rows = db.conn.execute(
        "SELECT l.id, l.claimed_by, c.content FROM ledger l "
        "LEFT JOIN campaigns c ON l.source_kind = 'campaign' AND c.name = l.source WHERE l.state = 'sending'"
    ).fetchall()
    registered = db.conn.execute("SELECT id, host, pid, heartbeat_at FROM dispatchers").fetchall()
    gone = {
        ident
        for ident, dispatcher_host, pid, heartbeat_at in registered
        if heartbeat_at < stale_before or (dispatcher_host == host and not alive(pid))
    }
    live = {ident for ident, *_ in registered} - gone - {own}
    found = [
        Interrupted(row_id, load_content(content).transport if content else None)
        for row_id, claimed_by, content in rows
        if claimed_by not in live
    ]
    return Recovery(found, gone - {own})


def settle_interrupted(
    db: StateDatabase, *, uncertain: Sequence[int], resend: Sequence[int], forget: Iterable[str], at: str
) -> None:
    """Rows cut off on the wire are `uncertain`, or queued again (same Message-ID) where the transport says
    `on_uncertain: resend`; the registrations of dispatchers that are gone are forgotten (never one that is alive:
    its rows would look abandoned), and the rows they reserved are anyone's again."""
    settle = [
        (uncertain, "uncertain", "interrupted during the SMTP transaction (the process stopped); not sent again"),
        (
            resend,
            "queued",
            "interrupted during the SMTP transaction; sent again with the same Message-ID (on_uncertain: resend)",
        ),
    ]
    with write(db):
        for rows, state, reply in settle:
            db.conn.executemany(
                "UPDATE ledger SET state = ?, claimed_by = NULL, updated_at = ?, last_reply = ? "
                "WHERE id = ? AND state = 'sending'",
                [(state, at, reply, row_id) for row_id in rows],
            )
        forgotten = list(forget)
        sharing.release(db, forgotten)
        db.conn.executemany("DELETE FROM dispatchers WHERE id = ?", [(ident,) for ident in forgotten])
