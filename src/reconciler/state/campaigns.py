"""Campaign records, their stored audience, and the audience snapshot: the writes `apply` and `start` make for
campaigns, and the one reader of a campaign row.

Every write runs inside the caller's `write()` transaction, so a revision's actions land together or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter

from reconciler.segments import Sql
from reconciler.spec.documents import Segment, SendAt
from reconciler.state import rollups
from reconciler.state.conditions import Reason
from reconciler.state.content import MessageContent, load_content
from reconciler.state.db import audit, write
from reconciler.state.portable import differs, json_values, same
from reconciler.state.postgres import StateDatabase

_SEND_AT: TypeAdapter[Any] = TypeAdapter(SendAt)


class SegmentDefinitions(BaseModel):
    """What a campaign's segments meant when it was scheduled: it starts from these, whatever the files say later."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    segments: dict[str, Segment]
    """The segments it names and every segment they refer to."""
    fields: dict[str, str]
    """Custom field types, as the segments were checked against."""
    timezone: str
    """The workspace's time zone (dates in conditions are local to it)."""


class StoredAudience(BaseModel):
    """Who a campaign goes to, as stored with it (`audience` in the Campaign document, and its segments)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    lists: tuple[str, ...]
    exclude_lists: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()
    exclude_segments: tuple[str, ...] = ()
    definitions: SegmentDefinitions | None = None
    """None when the audience uses no segment."""

    def as_json(self) -> str:
        return self.model_dump_json(by_alias=True)


def load_audience(text: str) -> StoredAudience:
    """The one reader of a stored audience."""
    return StoredAudience.model_validate_json(text)


@dataclass(frozen=True)
class CampaignDefinition:
    """What apply writes for a campaign that has not started: its document, its content and its audience."""

    path: str
    """The file it was written in."""
    spec: Mapping[str, Any]
    """The Campaign document as applied (JSON), which the next plan compares with the files."""
    content: MessageContent
    audience: StoredAudience


@dataclass(frozen=True)
class CampaignRecord:
    """A campaign as last applied, with its progress."""

    name: str
    status: str
    ready: bool
    reason: Reason
    message: str
    path: str
    spec: Mapping[str, Any]
    content_hash: str
    start_at: str | None
    started_at: str | None
    finished_at: str | None
    removed_at: str | None
    confirmed_late: bool
    recipients: int | None
    last_attempted_revision: str | None
    last_applied_revision: str | None
    audience: StoredAudience
    held: bool = False
    """Paused by dispatch (too many policy rejections): it resumes only with `apply --confirm`."""
    progress: Mapping[str, int] = field(default_factory=dict)
    """Ledger rows by state (queued, sent, ...)."""
    not_applied: str | None = None
    """For a campaign that is history: what its file says that was not applied, and where (None: they agree)."""

    @property
    def started(self) -> bool:
        return self.started_at is not None

    @property
    def send_at(self) -> Any:
        """`send_at` as the spec types it: "now", an aware datetime, or a LocalSendTime."""
        return _SEND_AT.validate_python(self.spec["send_at"])


def campaign_record(row: Mapping[str, Any], *, progress: Mapping[str, int] | None = None) -> CampaignRecord:
    """The one reader of a `campaigns` row (`SELECT *`)."""
    return CampaignRecord(
        name=row["name"],
        status=row["status"],
        ready=bool(row["ready"]),
        reason=Reason(row["reason"]),
        message=row["message"],
        path=row["path"],
        spec=json.loads(row["spec"]),
        content_hash=row["content_hash"],
        start_at=row["start_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        removed_at=row["removed_at"],
        confirmed_late=bool(row["confirmed_late"]),
        recipients=row["recipients"],
        last_attempted_revision=row["last_attempted_revision"],
        last_applied_revision=row["last_applied_revision"],
        audience=load_audience(row["audience"]),
        held=bool(row["held"]),
        progress=progress or {},
        not_applied=row["not_applied"],
    )


def campaign_records(db: StateDatabase) -> list[CampaignRecord]:
    """Every campaign ever applied, with its progress."""
    progress: dict[str, dict[str, int]] = {}
    for source, state, count in db.conn.execute(
        "SELECT source, state, count(*) FROM ledger WHERE source_kind = 'campaign' GROUP BY source, state"
    ):
        progress.setdefault(source, {})[state] = count
    rows = db.query("SELECT * FROM campaigns ORDER BY name")
    return [campaign_record(row, progress=progress.get(row["name"], {})) for row in rows]


def upsert_campaign(
    db: StateDatabase,
    name: str,
    definition: CampaignDefinition,
    *,
    status: str,
    message: str,
    start_at: str | None,
    at: str,
    revision: str,
) -> None:
    """Create or rewrite a campaign that has not started; a new start time needs a new confirmation."""
    db.conn.execute(
        f"""
        INSERT INTO campaigns (name, status, ready, reason, message, path, spec, content, content_hash, start_at,
                               last_attempted_revision, last_applied_revision, updated_at, audience)
        VALUES (:name, :status, 1, :reason, :message, :path, :spec, :content, :hash, :start_at, :rev, :rev, :at,
                :audience)
        ON CONFLICT (name) DO UPDATE SET
            status = excluded.status, ready = 1, reason = excluded.reason, message = excluded.message,
            path = excluded.path, spec = excluded.spec, content = excluded.content,
            content_hash = excluded.content_hash, audience = excluded.audience,
            confirmed_late = CASE WHEN campaigns.start_at {same(db)} excluded.start_at
                THEN campaigns.confirmed_late ELSE 0 END,
            start_at = excluded.start_at, removed_at = NULL,
            last_attempted_revision = excluded.last_attempted_revision,
            last_applied_revision = excluded.last_applied_revision, updated_at = excluded.updated_at
        """,
        {
            "name": name,
            "status": status,
            "reason": Reason.for_status(status),
            "message": message,
            "path": definition.path,
            "spec": json.dumps(definition.spec),
            "content": definition.content.as_json(),
            "hash": definition.content.digest,
            "start_at": start_at,
            "rev": revision,
            "at": at,
            "audience": definition.audience.as_json(),
        },
    )


def set_status(
    db: StateDatabase,
    name: str,
    *,
    status: str,
    reason: Reason,
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


def set_condition(db: StateDatabase, name: str, *, ready: bool, reason: Reason, message: str, at: str) -> None:
    """Report on a campaign without changing its status (waiting, stalled ...)."""
    db.conn.execute(
        "UPDATE campaigns SET ready = ?, reason = ?, message = ?, updated_at = ? WHERE name = ? "
        f"AND (ready, reason, message) {differs(db)} (?, ?, ?)",
        (int(ready), reason, message, at, name, int(ready), reason, message),
    )


def clear_stalled(db: StateDatabase, *, keep: Iterable[str], at: str) -> None:
    """Campaigns whose files agree with what was applied again are ready again."""
    kept = set(keep)
    stalled = db.conn.execute("SELECT name, status FROM campaigns WHERE reason = ?", (Reason.STALLED,)).fetchall()
    db.conn.executemany(
        "UPDATE campaigns SET ready = 1, reason = ?, message = 'the files agree with what was applied again', "
        "updated_at = ? WHERE name = ?",
        [(Reason.for_status(status), at, name) for name, status in stalled if name not in kept],
    )


def set_not_applied(db: StateDatabase, notes: Mapping[str, str]) -> None:
    """Remember, for the campaigns that are history, what their files say that was not applied (`notes`, by name);
    every other campaign's note is cleared. Rows whose note is unchanged are not written."""
    db.conn.execute(
        "UPDATE campaigns SET not_applied = NULL WHERE not_applied IS NOT NULL AND name NOT IN "
        f"({json_values(db, '?')})",
        (json.dumps(sorted(notes)),),
    )
    db.conn.executemany(
        f"UPDATE campaigns SET not_applied = ? WHERE name = ? AND not_applied {differs(db)} ?",
        [(note, name, note) for name, note in sorted(notes.items())],
    )


def mark_attempted(db: StateDatabase, names: Iterable[str], *, revision: str) -> None:
    db.conn.executemany(
        "UPDATE campaigns SET last_attempted_revision = ? WHERE name = ?", [(revision, name) for name in names]
    )


def mark_removed(db: StateDatabase, name: str, *, status: str, message: str, at: str, revision: str) -> None:
    set_status(db, name, status=status, reason=Reason.REMOVED, message=message, at=at, revision=revision)
    db.conn.execute("UPDATE campaigns SET removed_at = ? WHERE name = ?", (at, name))


def confirm_late(db: StateDatabase, name: str) -> None:
    db.conn.execute("UPDATE campaigns SET confirmed_late = 1 WHERE name = ?", (name,))


def skip_unsent(db: StateDatabase, name: str, *, why: str, at: str) -> int:
    """Cancel: every message not yet handed to a transport is skipped (and stays in the ledger as history)."""
    return db.conn.execute(
        "UPDATE ledger SET state = 'skipped', last_reply = ?, updated_at = ? "
        "WHERE source_kind = 'campaign' AND source = ? AND state IN ('queued', 'deferred')",
        (why, at, name),
    ).rowcount


def due_to_start(db: StateDatabase, *, now: str) -> list[CampaignRecord]:
    """Scheduled campaigns whose start time has come and that have not started, earliest first."""
    rows = db.query(
        "SELECT * FROM campaigns WHERE status = 'scheduled' AND started_at IS NULL AND removed_at IS NULL "
        "AND start_at <= ? ORDER BY start_at, name",
        [now],
    )
    return [campaign_record(row) for row in rows]


def snapshot_audience(
    db: StateDatabase,
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
        "UPDATE campaigns SET status = 'sending', started_at = ?, recipients = ?, ready = 1, reason = ?, "
        "message = ?, updated_at = ? WHERE name = ?",
        (at, inserted, Reason.SENDING, f"sending to {inserted:,} recipients", at, name),
    )
    rollups.count_recipients(db, name)
    return inserted


# --- stages and completion ------------------------------------------------------------------------------------


def started_stages(db: StateDatabase, name: str) -> dict[str, str]:
    return dict(db.conn.execute("SELECT stage, started_at FROM campaign_stages WHERE campaign = ?", (name,)))


@dataclass(frozen=True)
class SendingCampaign:
    """A campaign that is sending: what starting its next stages and finishing it need."""

    name: str
    content: MessageContent
    content_hash: str
    lists: tuple[str, ...]
    started_at: str
    revision: str
    """The revision it was last applied from."""


def sending_campaigns(db: StateDatabase) -> list[SendingCampaign]:
    rows = db.conn.execute(
        "SELECT name, content, content_hash, audience, started_at, last_applied_revision FROM campaigns "
        "WHERE status = 'sending' ORDER BY started_at, name"
    )
    return [
        SendingCampaign(
            name,
            load_content(content),
            content_hash,
            load_audience(audience).lists,
            started,
            revision or "",
        )
        for name, content, content_hash, audience, started, revision in rows
    ]


def start_stage(
    db: StateDatabase,
    name: str,
    stage: str,
    *,
    only: str | None,
    blocking: Sequence[str],
    content_hash: str,
    revision: str,
    at: str,
) -> int | None:
    """Queue a follow-up stage for everyone the first message reached (every stage goes to the same audience),
    filtered by their human opens or clicks of any message of the campaign so far (`only`). None when it was
    started already (by the dispatcher of another daemon, between its look and this write)."""
    engaged = {
        "opened": "EXISTS (SELECT 1 FROM engagement e WHERE e.contact_id = p.contact_id AND e.source_kind = "
        "'campaign' AND e.source = p.source AND e.action IN ('opened', 'clicked') AND e.machine = 0)",
        "clicked": "EXISTS (SELECT 1 FROM engagement e WHERE e.contact_id = p.contact_id AND e.source_kind = "
        "'campaign' AND e.source = p.source AND e.action = 'clicked' AND e.machine = 0)",
    }
    condition = "TRUE"
    if only:
        condition = engaged[only.removeprefix("not_")]
        if only.startswith("not_"):
            condition = f"NOT {condition}"
    with write(db):
        if db.conn.execute("SELECT 1 FROM campaign_stages WHERE campaign = ? AND stage = ?", (name, stage)).fetchone():
            return None
        inserted = db.conn.execute(
            "INSERT OR IGNORE INTO ledger (source_kind, source, stage, contact_id, state, due_at, content_hash, "
            "revision, created_at, updated_at) SELECT 'campaign', p.source, ?, p.contact_id, 'queued', ?, ?, ?, ?, ? "
            "FROM ledger p JOIN contacts c ON c.id = p.contact_id "
            "LEFT JOIN suppressions s ON s.email_hash = c.email_hash "
            "WHERE p.source_kind = 'campaign' AND p.source = ? AND p.stage = '' AND p.state = 'sent' "
            f"AND (s.reason IS NULL OR s.reason NOT IN ({json_values(db, '?')})) AND {condition}",
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


def block(db: StateDatabase, name: str, *, why: str, at: str) -> None:
    """A sending campaign whose messages cannot be prepared waits, and says why (not Ready)."""
    with write(db):
        db.conn.execute(
            "UPDATE campaigns SET ready = 0, reason = ?, message = ?, updated_at = ? WHERE name = ? "
            f"AND status = 'sending' AND (reason, message) {differs(db)} (?, ?)",
            (Reason.SENDING_BLOCKED, f"waits: {why}", at, name, Reason.SENDING_BLOCKED, f"waits: {why}"),
        )


def unblock(db: StateDatabase, name: str, *, at: str) -> None:
    """Its messages can be prepared again: it is sending (and Ready) again."""
    with write(db):
        db.conn.execute(
            "UPDATE campaigns SET ready = 1, reason = ?, message = 'sending again', updated_at = ? WHERE name = ? "
            "AND status = 'sending' AND reason = ?",
            (Reason.SENDING, at, name, Reason.SENDING_BLOCKED),
        )


FAILING_FROM = 20
"""Outcomes a sending campaign needs before "most failed" says anything about it."""


def finish(db: StateDatabase, name: str, *, at: str) -> dict[str, int] | None:
    """Mark a campaign sent when no row of it can still go out; returns its final counts then. A campaign whose
    messages mostly failed is not Ready: its message says how many and where to look."""
    with write(db):
        counts = _counts(db, name)
        if any(counts.get(state) for state in ("queued", "deferred", "sending")):
            _judge_progress(db, name, counts, at=at)
            return None
        summary = ", ".join(
            f"{state} {counts[state]:,}" for state in ("sent", "failed", "uncertain", "skipped") if counts.get(state)
        )
        failing = _failing(name, counts)
        reason, message = Reason.SENT, f"finished: {summary or 'nobody to send to'}"
        if failing:
            reason, message = Reason.DELIVERY_FAILED, f"finished, but {failing}"
        changed = db.conn.execute(
            "UPDATE campaigns SET status = 'sent', reason = ?, ready = ?, finished_at = ?, updated_at = ?, "
            "message = ? WHERE name = ? AND status = 'sending'",
            (reason, int(not failing), at, at, message, name),
        ).rowcount
        if not changed:
            return None
        audit(db, at=at, actor="dispatch", subject=f"Campaign {name}", action="finish", detail=summary)
    return counts


def _counts(db: StateDatabase, name: str) -> dict[str, int]:
    rows = db.conn.execute(
        "SELECT state, count(*) FROM ledger WHERE source_kind = 'campaign' AND source = ? GROUP BY state", (name,)
    )
    return dict(rows.fetchall())


def _failing(name: str, counts: Mapping[str, int]) -> str | None:
    """ "4 of 5 messages failed; see ..." when most messages that were tried did not arrive, else None."""
    bad = counts.get("failed", 0) + counts.get("uncertain", 0)
    tried = bad + counts.get("sent", 0)
    if not tried or bad * 2 <= tried:
        return None
    return f"{bad:,} of {tried:,} messages failed; see `reconciler status {name} --failures`"


def _judge_progress(db: StateDatabase, name: str, counts: Mapping[str, int], *, at: str) -> None:
    """A campaign still sending whose messages mostly fail says so (and is not Ready); it recovers when they stop."""
    tried = counts.get("failed", 0) + counts.get("uncertain", 0) + counts.get("sent", 0)
    failing = _failing(name, counts) if tried >= FAILING_FROM else None
    if failing:
        db.conn.execute(
            "UPDATE campaigns SET ready = 0, reason = ?, message = ?, updated_at = ? WHERE name = ? "
            "AND status = 'sending' AND reason IN (?, ?)",
            (Reason.DELIVERY_FAILING, f"sending, but {failing}", at, name, Reason.SENDING, Reason.DELIVERY_FAILING),
        )
    else:
        db.conn.execute(
            "UPDATE campaigns SET ready = 1, reason = ?, message = ?, updated_at = ? WHERE name = ? "
            "AND status = 'sending' AND reason = ?",
            (Reason.SENDING, f"sending to {sum(counts.values()):,} recipients", at, name, Reason.DELIVERY_FAILING),
        )


def next_start(db: StateDatabase) -> datetime | None:
    """When the next scheduled campaign starts (the daemon wakes up then); one that waits for `apply --confirm`
    because it is late does not start by itself, so it wakes nobody."""
    row = db.conn.execute(
        "SELECT min(start_at) FROM campaigns WHERE status = 'scheduled' AND started_at IS NULL AND removed_at IS NULL "
        "AND NOT (reason = ? AND confirmed_late = 0)",
        (Reason.LATE_SCHEDULE,),
    ).fetchone()
    return datetime.fromisoformat(row[0]) if row and row[0] else None
