"""The send ledger while it is being worked: claims, outcomes, recovery after a crash, stages and completion.

A row is claimed (`queued`/`deferred` → `sending`) in its own short write transaction just before its SMTP
transaction, together with the outcome of the message its connection sent before. So after a kill -9 at most one
row per connection is `sending` without an outcome, and `recover` marks exactly those `uncertain`; a row that was
never claimed is still `queued` and goes out after the restart. Nothing is claimed in batches ahead of time (the
way listmonk skips up to a batch after a crash, its issue #3022).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlite_utils import Database

from reconciler.state.db import audit, write

POLICY_PAUSE_MIN = 20
"""Policy rejections (5.7.x) a campaign may collect before the ratio below can pause it."""
POLICY_PAUSE_RATIO = 0.05
"""Pause a campaign when this share of its attempted messages was refused for policy or reputation reasons."""
_BACKOFF_FIRST = timedelta(minutes=5)
_BACKOFF_CAP = timedelta(hours=2)


@dataclass(frozen=True)
class Source:
    """A message definition with rows to send: a campaign's first message (stage '') or one of its stages."""

    kind: str
    name: str
    stage: str
    content: dict[str, Any]
    lists: tuple[str, ...]
    due: int
    requires: str = "subscribed"
    """The subscription a recipient must still have at claim time (`pending` for a double opt-in confirmation)."""


@dataclass(frozen=True)
class Outcome:
    """What happened to a claimed row, to be written with the connection's next claim."""

    row_id: int
    state: str
    """sent, deferred, failed, uncertain, queued (uncertain and resent)."""
    reply: str
    at: str
    next_attempt_at: str | None = None
    suppress: str | None = None
    """bounced: the address is bad (5.1.x); also recorded as engagement."""
    policy: bool = False
    """A policy or reputation refusal (5.7.x), counted against the campaign."""
    soft: bool = False
    """A soft bounce (mailbox full), recorded as engagement without suppressing."""


def backoff(attempts: int, *, jitter: float) -> timedelta:
    """5 min × 2^(n-1), capped at 2 h, times a random factor in [0.8, 1.2) so retries do not arrive in a herd."""
    base: timedelta = min(_BACKOFF_CAP, _BACKOFF_FIRST * (2 ** max(0, attempts - 1)))
    return base * (0.8 + 0.4 * jitter)


# --- dispatchers and recovery ----------------------------------------------------------------------------------


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


def interrupted(db: Database, *, host: str, alive: Callable[[int], bool], stale_before: str) -> list[dict[str, Any]]:
    """`sending` rows whose dispatcher is gone: its process on this host is dead, or its heartbeat went stale."""
    live = {
        ident
        for ident, dispatcher_host, pid, heartbeat_at in db.conn.execute(
            "SELECT id, host, pid, heartbeat_at FROM dispatchers"
        )
        if heartbeat_at >= stale_before and (dispatcher_host != host or alive(pid))
    }
    rows = db.query(
        "SELECT l.id, l.source_kind, l.source, l.stage, l.claimed_by, c.content FROM ledger l "
        "LEFT JOIN campaigns c ON l.source_kind = 'campaign' AND c.name = l.source WHERE l.state = 'sending'"
    )
    return [row for row in rows if row["claimed_by"] not in live]


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


# --- what is due ---------------------------------------------------------------------------------------------


def due_sources(db: Database, *, now: str) -> list[Source]:
    """Every started, unpaused campaign stage with rows due at `now`."""
    sources = []
    for name, stage, content, spec, due in db.conn.execute(
        "SELECT c.name, l.stage, c.content, c.spec, count(*) FROM campaigns c "
        "JOIN ledger l ON l.source_kind = 'campaign' AND l.source = c.name "
        "WHERE c.status = 'sending' AND l.state IN ('queued', 'deferred') "
        "AND coalesce(l.next_attempt_at, l.due_at) <= ? GROUP BY c.name, l.stage ORDER BY c.started_at, c.name",
        (now,),
    ):
        lists = tuple(json.loads(spec)["audience"]["lists"])
        sources.append(Source("campaign", name, stage, json.loads(content), lists, due))
    return sources


def due_confirmations(db: Database, *, now: str) -> list[tuple[str, int]]:
    """Double opt-in confirmation emails waiting, by stage ('<list>:<n>')."""
    return [
        (str(stage), int(count))
        for stage, count in db.conn.execute(
            "SELECT stage, count(*) FROM ledger WHERE source_kind = 'workflow' AND source = 'double-opt-in' "
            "AND state IN ('queued', 'deferred') AND coalesce(next_attempt_at, due_at) <= ? GROUP BY stage",
            (now,),
        )
    ]


_CONTACT_COLUMNS = (
    "c.email, c.email_hash, c.first_name, c.last_name, c.timezone, c.locale, c.country, c.tags, c.fields, "
    "c.created_at, c.frequency"
)


def due_rows(db: Database, source: Source, *, now: str, after_id: int, limit: int) -> list[dict[str, Any]]:
    """The next page of due rows of `source` (by id), with what rendering needs of each contact."""
    return list(
        db.query(
            f"SELECT l.id, l.contact_id, l.attempts, l.message_id, l.first_attempt_at, {_CONTACT_COLUMNS} "
            "FROM ledger l JOIN contacts c ON c.id = l.contact_id "
            "WHERE l.source_kind = ? AND l.source = ? AND l.stage = ? AND l.state IN ('queued', 'deferred') "
            "AND coalesce(l.next_attempt_at, l.due_at) <= ? AND l.id > ? ORDER BY l.id LIMIT ?",
            (source.kind, source.name, source.stage, now, after_id, limit),
        )
    )


def contact_row(db: Database, email: str) -> dict[str, Any] | None:
    """A contact in the shape `due_rows` gives (for `reconciler render --contact`)."""
    rows = list(
        db.query(f"SELECT 0 AS id, c.id AS contact_id, {_CONTACT_COLUMNS} FROM contacts c WHERE c.email = ?", (email,))
    )
    return rows[0] if rows else None


def row_for_view(db: Database, row_id: int) -> tuple[dict[str, Any], dict[str, Any], tuple[str, ...]] | None:
    """A campaign's ledger row with its contact, the campaign's stored content and lists (to render it again)."""
    rows = list(
        db.query(
            f"SELECT l.id, l.contact_id, l.attempts, l.message_id, l.first_attempt_at, l.source, l.stage, "
            f"{_CONTACT_COLUMNS}, m.content, m.spec FROM ledger l JOIN contacts c ON c.id = l.contact_id "
            "JOIN campaigns m ON l.source_kind = 'campaign' AND m.name = l.source WHERE l.id = ?",
            (row_id,),
        )
    )
    if not rows:
        return None
    row = rows[0]
    return row, json.loads(row.pop("content")), tuple(json.loads(row.pop("spec"))["audience"]["lists"])


def recent_sends(db: Database, contact_id: int, *, since: str) -> list[str]:
    """When marketing messages went to a contact since `since` (for the frequency cap), oldest first."""
    return [
        row[0]
        for row in db.conn.execute(
            "SELECT sent_at FROM ledger WHERE contact_id = ? AND state = 'sent' AND sent_at >= ? ORDER BY sent_at",
            (contact_id, since),
        )
    ]


def postpone(db: Database, rows: Iterable[tuple[int, str, str]], *, at: str) -> None:
    """Hold rows back without an attempt (quiet hours, frequency cap): (row id, until, why)."""
    with write(db):
        db.conn.executemany(
            "UPDATE ledger SET next_attempt_at = ?, last_reply = ?, updated_at = ? "
            "WHERE id = ? AND state IN ('queued', 'deferred')",
            [(until, why, at, row_id) for row_id, until, why in rows],
        )


# --- claim and outcome ---------------------------------------------------------------------------------------


def claim(
    db: Database,
    row_id: int,
    *,
    source: Source,
    dispatcher: str,
    message_id: str,
    blocking: Sequence[str],
    at: str,
    previous: Outcome | None = None,
) -> str:
    """In one transaction: write `previous`, then claim `row_id` for sending. Returns "claimed", "skipped" (the
    contact unsubscribed, bounced or complained meanwhile), "paused" (its campaign stopped) or "taken" (another
    process has it, or it is no longer due)."""
    with write(db):
        if previous is not None:
            _record(db, previous, source=source)
        if source.kind == "campaign":
            status = db.conn.execute("SELECT status FROM campaigns WHERE name = ?", (source.name,)).fetchone()
            if status is None or status[0] != "sending":
                return "paused"
        row = db.conn.execute(
            "SELECT l.state, l.contact_id, p.reason, EXISTS (SELECT 1 FROM subscriptions s WHERE "
            "s.contact_id = l.contact_id AND s.status = ? AND s.list IN (SELECT value FROM json_each(?))) "
            "FROM ledger l LEFT JOIN contacts c ON c.id = l.contact_id "
            "LEFT JOIN suppressions p ON p.email_hash = c.email_hash WHERE l.id = ?",
            (source.requires, json.dumps(source.lists), row_id),
        ).fetchone()
        if row is None or row[0] not in ("queued", "deferred"):
            return "taken"
        _, contact_id, suppressed, subscribed = row
        why = None
        if contact_id is None:
            why = "the contact was erased before sending"
        elif suppressed in blocking:
            why = f"not sent: the address is suppressed ({suppressed}) since the campaign started"
        elif not subscribed and source.requires == "pending":
            why = "not sent: the subscription is no longer waiting for confirmation"
        elif not subscribed:
            why = "not sent: the contact unsubscribed from the campaign's lists before their message went out"
        if why:
            db.conn.execute(
                "UPDATE ledger SET state = 'skipped', last_reply = ?, updated_at = ? WHERE id = ?", (why, at, row_id)
            )
            return "skipped"
        db.conn.execute(
            "UPDATE ledger SET state = 'sending', claimed_by = ?, attempts = attempts + 1, message_id = ?, "
            "first_attempt_at = coalesce(first_attempt_at, ?), updated_at = ? WHERE id = ?",
            (dispatcher, message_id, at, at, row_id),
        )
        return "claimed"


def record(db: Database, outcome: Outcome, *, source: Source) -> None:
    """Write one outcome on its own (the last message of a connection, or a message that failed to render)."""
    with write(db):
        _record(db, outcome, source=source)


def _record(db: Database, outcome: Outcome, *, source: Source) -> None:
    db.conn.execute(
        "UPDATE ledger SET state = ?, last_reply = ?, updated_at = ?, next_attempt_at = ?, claimed_by = NULL, "
        "sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END WHERE id = ?",
        (
            outcome.state,
            outcome.reply[:500],
            outcome.at,
            outcome.next_attempt_at,
            outcome.state,
            outcome.at,
            outcome.row_id,
        ),
    )
    if outcome.suppress or outcome.soft:
        contact = db.conn.execute(
            "SELECT c.id, c.email_hash FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE l.id = ?",
            (outcome.row_id,),
        ).fetchone()
        if contact is not None:
            if outcome.suppress:
                db.conn.execute(
                    "INSERT INTO suppressions(email_hash, reason, at, detail) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(email_hash) DO NOTHING",
                    (contact[1], outcome.suppress, outcome.at, outcome.reply[:200]),
                )
            db.conn.execute(
                "INSERT INTO engagement(ledger_id, contact_id, source_kind, source, stage, action, at, detail) "
                "VALUES (?, ?, ?, ?, ?, 'bounced', ?, ?)",
                (
                    outcome.row_id,
                    contact[0],
                    source.kind,
                    source.name,
                    source.stage,
                    outcome.at,
                    ("soft: " if outcome.soft else "hard: ") + outcome.reply[:200],
                ),
            )
    if outcome.policy and source.kind == "campaign":
        _count_policy_failure(db, source.name, reply=outcome.reply, at=outcome.at)


def _count_policy_failure(db: Database, name: str, *, reply: str, at: str) -> None:
    db.conn.execute("UPDATE campaigns SET policy_failures = policy_failures + 1 WHERE name = ?", (name,))
    failures, attempted = db.conn.execute(
        "SELECT c.policy_failures, (SELECT count(*) FROM ledger WHERE source_kind = 'campaign' AND source = c.name "
        "AND attempts > 0) FROM campaigns c WHERE c.name = ?",
        (name,),
    ).fetchone()
    if failures >= POLICY_PAUSE_MIN and failures >= POLICY_PAUSE_RATIO * attempted:
        message = (
            f"paused: {failures} of {attempted} messages were refused for policy or reputation reasons "
            f"(last: {reply[:120]})"
        )
        changed = db.conn.execute(
            "UPDATE campaigns SET status = 'paused', held = 1, ready = 0, reason = 'PolicyRejections', message = ?, "
            "updated_at = ? WHERE name = ? AND status = 'sending'",
            (message, at, name),
        ).rowcount
        if changed:
            audit(db, at=at, actor="dispatch", subject=f"Campaign {name}", action="pause", detail=message)


# --- stages and completion ------------------------------------------------------------------------------------


def started_stages(db: Database, name: str) -> dict[str, str]:
    return dict(db.conn.execute("SELECT stage, started_at FROM campaign_stages WHERE campaign = ?", (name,)))


def sending_campaigns(db: Database) -> list[dict[str, Any]]:
    return list(
        db.query(
            "SELECT name, content, content_hash, spec, started_at, last_applied_revision FROM campaigns "
            "WHERE status = 'sending' ORDER BY started_at, name"
        )
    )


def start_stage(
    db: Database,
    name: str,
    stage: str,
    *,
    only: str | None,
    blocking: Sequence[str],
    content_hash: str,
    revision: str,
    at: str,
) -> int:
    """Queue a follow-up stage for everyone the first message reached (every stage goes to the same audience),
    filtered by their human opens or clicks of any message of the campaign so far (`only`)."""
    engaged = {
        "opened": "EXISTS (SELECT 1 FROM engagement e WHERE e.contact_id = p.contact_id AND e.source_kind = "
        "'campaign' AND e.source = p.source AND e.action IN ('opened', 'clicked') AND e.machine = 0)",
        "clicked": "EXISTS (SELECT 1 FROM engagement e WHERE e.contact_id = p.contact_id AND e.source_kind = "
        "'campaign' AND e.source = p.source AND e.action = 'clicked' AND e.machine = 0)",
    }
    condition = "1"
    if only:
        condition = engaged[only.removeprefix("not_")]
        if only.startswith("not_"):
            condition = f"NOT {condition}"
    with write(db):
        inserted = db.conn.execute(
            "INSERT OR IGNORE INTO ledger (source_kind, source, stage, contact_id, state, due_at, content_hash, "
            "revision, created_at, updated_at) SELECT 'campaign', p.source, ?, p.contact_id, 'queued', ?, ?, ?, ?, ? "
            "FROM ledger p JOIN contacts c ON c.id = p.contact_id "
            "LEFT JOIN suppressions s ON s.email_hash = c.email_hash "
            "WHERE p.source_kind = 'campaign' AND p.source = ? AND p.stage = '' AND p.state = 'sent' "
            f"AND (s.reason IS NULL OR s.reason NOT IN (SELECT value FROM json_each(?))) AND {condition}",
            (stage, at, content_hash, revision, at, at, name, json.dumps(list(blocking))),
        ).rowcount
        db.conn.execute(
            "INSERT INTO campaign_stages(campaign, stage, started_at, recipients) VALUES (?, ?, ?, ?)",
            (name, stage, at, inserted),
        )
        audit(
            db,
            at=at,
            actor="dispatch",
            subject=f"Campaign {name}",
            action="start stage",
            detail=f"{stage}: {inserted} recipients",
        )
    return inserted


def finish(db: Database, name: str, *, at: str) -> dict[str, int] | None:
    """Mark a campaign sent when no row of it can still go out; returns its final counts then."""
    with write(db):
        counts = dict(
            db.conn.execute(
                "SELECT state, count(*) FROM ledger WHERE source_kind = 'campaign' AND source = ? GROUP BY state",
                (name,),
            ).fetchall()
        )
        if any(counts.get(state) for state in ("queued", "deferred", "sending")):
            return None
        summary = ", ".join(
            f"{state} {counts[state]:,}" for state in ("sent", "failed", "uncertain", "skipped") if counts.get(state)
        )
        changed = db.conn.execute(
            "UPDATE campaigns SET status = 'sent', reason = 'Sent', ready = 1, finished_at = ?, updated_at = ?, "
            "message = ? WHERE name = ? AND status = 'sending'",
            (at, at, f"finished: {summary or 'nobody to send to'}", name),
        ).rowcount
        if not changed:
            return None
        audit(db, at=at, actor="dispatch", subject=f"Campaign {name}", action="finish", detail=summary)
    return counts


def next_due(db: Database) -> str | None:
    """When the earliest waiting row of a sending campaign becomes due (retries, quiet hours, local times)."""
    row = db.conn.execute(
        "SELECT min(coalesce(l.next_attempt_at, l.due_at)) FROM ledger l JOIN campaigns c ON l.source_kind = "
        "'campaign' AND c.name = l.source WHERE c.status = 'sending' AND l.state IN ('queued', 'deferred')"
    ).fetchone()
    return row[0] if row else None
