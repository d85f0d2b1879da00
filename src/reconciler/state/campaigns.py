"""Campaign records and the audience snapshot: the writes `apply` makes for campaigns.

Every function runs inside the caller's `write()` transaction, so a revision's actions land together or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from reconciler.segments import Sql


def upsert_campaign(
    db: Database,
    name: str,
    *,
    status: str,
    reason: str,
    message: str,
    path: str,
    spec: Mapping[str, Any],
    content: Mapping[str, Any],
    content_hash: str,
    start_at: str | None,
    at: str,
    revision: str,
    audience: Mapping[str, Any],
) -> None:
    """Create or rewrite a campaign that has not started; a new start time needs a new confirmation."""
    db.conn.execute(
        """
        INSERT INTO campaigns (name, status, ready, reason, message, path, spec, content, content_hash, start_at,
                               last_attempted_revision, last_applied_revision, updated_at, audience)
        VALUES (:name, :status, 1, :reason, :message, :path, :spec, :content, :hash, :start_at, :rev, :rev, :at,
                :audience)
        ON CONFLICT (name) DO UPDATE SET
            status = excluded.status, ready = 1, reason = excluded.reason, message = excluded.message,
            path = excluded.path, spec = excluded.spec, content = excluded.content,
            content_hash = excluded.content_hash, audience = excluded.audience,
            confirmed_late = CASE WHEN start_at IS excluded.start_at THEN confirmed_late ELSE 0 END,
            start_at = excluded.start_at, removed_at = NULL,
            last_attempted_revision = excluded.last_attempted_revision,
            last_applied_revision = excluded.last_applied_revision, updated_at = excluded.updated_at
        """,
        {
            "name": name,
            "status": status,
            "reason": reason,
            "message": message,
            "path": path,
            "spec": json.dumps(spec),
            "content": json.dumps(content),
            "hash": content_hash,
            "start_at": start_at,
            "rev": revision,
            "at": at,
            "audience": json.dumps(audience),
        },
    )


def set_status(
    db: Database,
    name: str,
    *,
    status: str,
    reason: str,
    message: str,
    at: str,
    revision: str | None = None,
    ready: bool = True,
) -> None:
    db.conn.execute(
        "UPDATE campaigns SET status = ?, ready = ?, reason = ?, message = ?, updated_at = ?, "
        "last_attempted_revision = coalesce(?, last_attempted_revision), "
        "last_applied_revision = coalesce(?, last_applied_revision) WHERE name = ?",
        (status, int(ready), reason, message, at, revision, revision, name),
    )


def set_condition(db: Database, name: str, *, ready: bool, reason: str, message: str, at: str) -> None:
    """Report on a campaign without changing its status (waiting, stalled ...)."""
    db.conn.execute(
        "UPDATE campaigns SET ready = ?, reason = ?, message = ?, updated_at = ? WHERE name = ? "
        "AND (ready, reason, message) IS NOT (?, ?, ?)",
        (int(ready), reason, message, at, name, int(ready), reason, message),
    )


def clear_stalled(db: Database, *, keep: Iterable[str], at: str) -> None:
    """Campaigns whose files agree with what was applied again are ready again."""
    db.conn.execute(
        "UPDATE campaigns SET ready = 1, reason = upper(substr(status, 1, 1)) || substr(status, 2), "
        "message = 'the files agree with what was applied again', updated_at = ? "
        "WHERE reason = 'Stalled' AND name NOT IN (SELECT value FROM json_each(?))",
        (at, json.dumps(sorted(keep))),
    )


def mark_attempted(db: Database, names: Iterable[str], *, revision: str) -> None:
    db.conn.executemany(
        "UPDATE campaigns SET last_attempted_revision = ? WHERE name = ?", [(revision, name) for name in names]
    )


def mark_removed(db: Database, name: str, *, status: str, reason: str, message: str, at: str, revision: str) -> None:
    set_status(db, name, status=status, reason=reason, message=message, at=at, revision=revision)
    db.conn.execute("UPDATE campaigns SET removed_at = ? WHERE name = ?", (at, name))


def confirm_late(db: Database, name: str) -> None:
    db.conn.execute("UPDATE campaigns SET confirmed_late = 1 WHERE name = ?", (name,))


def skip_unsent(db: Database, name: str, *, why: str, at: str) -> int:
    """Cancel: every message not yet handed to a transport is skipped (and stays in the ledger as history)."""
    return db.conn.execute(
        "UPDATE ledger SET state = 'skipped', last_reply = ?, updated_at = ? "
        "WHERE source_kind = 'campaign' AND source = ? AND state IN ('queued', 'deferred')",
        (why, at, name),
    ).rowcount


def due_to_start(db: Database, *, now: str) -> list[dict[str, Any]]:
    """Scheduled campaigns whose start time has come and that have not started."""
    return list(
        db.query(
            "SELECT * FROM campaigns WHERE status = 'scheduled' AND started_at IS NULL AND removed_at IS NULL "
            "AND start_at <= ? ORDER BY start_at, name",
            [now],
        )
    )


def snapshot_audience(
    db: Database,
    name: str,
    *,
    recipients: Sql,
    due_at: Callable[[str | None], str],
    content_hash: str,
    revision: str,
    at: str,
) -> int:
    """Put one queued ledger row per recipient, due at `due_at(contact timezone)`, and mark the campaign started.

    `recipients` is `segments.AudienceSql.recipients`: the rules `plan` counted with, evaluated now.
    """
    db.conn.execute("CREATE TEMP TABLE IF NOT EXISTS zone_due (zone TEXT PRIMARY KEY, due TEXT NOT NULL)")
    db.conn.execute("DELETE FROM zone_due")
    zones = [row[0] for row in db.conn.execute("SELECT DISTINCT coalesce(timezone, '') FROM contacts")]
    db.conn.executemany("INSERT INTO zone_due VALUES (?, ?)", [(zone, due_at(zone or None)) for zone in zones])
    inserted = db.conn.execute(  # one statement: a million rows never pass through Python
        "INSERT OR IGNORE INTO ledger (source_kind, source, stage, contact_id, state, due_at, content_hash, revision, "
        "created_at, updated_at) SELECT 'campaign', ?, '', c.id, 'queued', z.due, ?, ?, ?, ? FROM contacts c "
        "LEFT JOIN suppressions p ON p.email_hash = c.email_hash JOIN zone_due z ON z.zone = coalesce(c.timezone, '') "
        f"WHERE {recipients.text}",
        (name, content_hash, revision, at, at, *recipients.params),
    ).rowcount
    db.conn.execute(
        "UPDATE campaigns SET status = 'sending', started_at = ?, recipients = ?, ready = 1, reason = 'Sending', "
        "message = ?, updated_at = ? WHERE name = ?",
        (at, inserted, f"sending to {inserted:,} recipients", at, name),
    )
    return inserted


def next_start(db: Database) -> datetime | None:
    """When the next scheduled campaign starts (the daemon wakes up then)."""
    row = db.conn.execute(
        "SELECT min(start_at) FROM campaigns WHERE status = 'scheduled' AND started_at IS NULL AND removed_at IS NULL"
    ).fetchone()
    return datetime.fromisoformat(row[0]) if row and row[0] else None
