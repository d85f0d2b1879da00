"""Starting campaigns and their stages when they are due.

Both work from the state alone (the content, audience and Settings stored with the last good revision), so a
campaign keeps its date even while the files hold a revision with errors. Starting snapshots the audience into the
send ledger, one queued row per recipient; a stage queues everyone the first message reached (filtered by their
opens or clicks), some time after the stage before it started.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from reconciler.audience import audience_sql, blocking_for
from reconciler.clock import iso
from reconciler.plan.when import ago, describe_when, local_due
from reconciler.segments import Compiler
from reconciler.spec.documents import LocalSendTime
from reconciler.state import campaigns, records, settings
from reconciler.state.campaigns import CampaignRecord, SendingCampaign
from reconciler.state.conditions import Reason
from reconciler.state.content import StageContent
from reconciler.state.db import audit, bump_serial, write
from reconciler.state.portable import dialect
from reconciler.state.postgres import StateDatabase

log = logging.getLogger(__name__)


def start_due(db: StateDatabase, *, now: datetime) -> list[str]:
    """Snapshot the audience of every scheduled campaign whose time has come; returns the names started."""
    at = iso(now)
    started = []
    with write(db):
        runtime = settings.load(db).settings
        for record in campaigns.due_to_start(db, now=at):
            assert record.start_at is not None
            late = now - datetime.fromisoformat(record.start_at)
            if late > runtime.schedule_grace and not record.confirmed_late:
                message = (
                    f"waits: its start time is {ago(late)} past, more than the grace of {ago(runtime.schedule_grace)}; "
                    f"confirm with `reconciler apply --confirm {record.name}` or set a new send_at"
                )
                campaigns.set_condition(
                    db, record.name, ready=False, reason=Reason.LATE_SCHEDULE, at=at, message=message
                )
                continue
            count = _snapshot(db, record, now=now, timezone=runtime.timezone)
            audit(
                db,
                at=at,
                revision=record.last_applied_revision,
                actor="tick",
                subject=f"Campaign {record.name}",
                action="start",
                detail=f"{count} recipients snapshotted",
            )
            when = describe_when(record.send_at, now=now)
            log.info("Campaign %s: started, %d recipients queued (%s)", record.name, count, when)
            started.append(record.name)
        if started:
            bump_serial(db)
    return started


def _snapshot(db: StateDatabase, record: CampaignRecord, *, now: datetime, timezone: str) -> int:
    """The campaign's segments as they were when it was scheduled, evaluated now, into the ledger."""
    audience = record.audience
    definitions = audience.definitions
    compiler = Compiler(
        definitions.segments if definitions else {},
        definitions.fields if definitions else {},
        now=now,
        timezone=definitions.timezone if definitions else timezone,
        dialect=dialect(db),
    )
    query = audience_sql(
        compiler,
        lists=audience.lists,
        exclude_lists=audience.exclude_lists,
        segments=audience.segments,
        exclude_segments=audience.exclude_segments,
        blocking=blocking_for(records.lists(db), audience.lists),
    )
    return campaigns.snapshot_audience(
        db,
        record.name,
        recipients=query.recipients,
        due_at=_due_function(record.send_at, default_zone=timezone, at=iso(now)),
        content_hash=record.content_hash,
        revision=record.last_applied_revision or "",
        at=iso(now),
    )


def _due_function(send_at: object, *, default_zone: str, at: str) -> Callable[[str | None], str]:
    """When each recipient's row is due, by their time zone: at the start, or at a local time in their zone."""
    if isinstance(send_at, LocalSendTime):
        return lambda zone: iso(local_due(send_at, zone or default_zone))
    return lambda zone: at


def start_stages(db: StateDatabase, *, now: datetime) -> list[str]:
    """Queue every follow-up stage whose time has come (`after` from the previous stage's start); returns
    "campaign/stage" for each started."""
    started = []
    lists = records.lists(db)
    for campaign in campaigns.sending_campaigns(db):
        stage = _next_stage(db, campaign, now=now)
        if stage is None:
            continue
        count = campaigns.start_stage(
            db,
            campaign.name,
            stage.name,
            only=stage.only,
            blocking=blocking_for(lists, campaign.lists),
            content_hash=campaign.content_hash,
            revision=campaign.revision,
            at=iso(now),
        )
        if count is None:  # another daemon's dispatcher started it just now
            continue
        log.info("Campaign %s: stage %s started, %d recipients", campaign.name, stage.name, count)
        started.append(f"{campaign.name}/{stage.name}")
    return started


def _next_stage(db: StateDatabase, campaign: SendingCampaign, *, now: datetime) -> StageContent | None:
    """The first stage not started yet, if its time has come."""
    done = campaigns.started_stages(db, campaign.name)
    previous_at = campaign.started_at
    for stage in campaign.content.stages:
        if stage.name not in done:
            due = datetime.fromisoformat(previous_at) + timedelta(seconds=stage.after) <= now
            return stage if due else None
        previous_at = done[stage.name]
    return None
