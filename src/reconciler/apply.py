"""Carrying out a plan, and starting the campaigns that are due.

`apply_plan` writes a revision's actions in one transaction with their audit entries. `start_due` works from the
state alone (the content stored when the campaign was scheduled), so a campaign keeps its date even while the
files hold a revision with errors: the last good revision stays in force.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlite_utils import Database

from reconciler.clock import iso
from reconciler.plan import Action, Plan, make_plan
from reconciler.plan.content import ago, describe_when, local_due
from reconciler.segments import Compiler, audience_queries, audience_sql, blocking_for, segment_queries
from reconciler.spec import DesiredState
from reconciler.spec.documents import LocalSendTime, Segment
from reconciler.state import ObservedState, campaigns, observe, records
from reconciler.state.db import StaleState, audit, bump_serial, claim_serial, get_meta, set_meta, write
from reconciler.state.observe import with_counts

log = logging.getLogger(__name__)
COUNT_BUDGET = 10.0
"""Seconds a daemon pass may spend counting segment audiences for its log and status messages."""

_REASONS = {
    "draft": "Draft",
    "scheduled": "Scheduled",
    "paused": "Paused",
    "cancelled": "Cancelled",
    "sending": "Sending",
    "sent": "Sent",
}


@dataclass
class Applied:
    actions: int = 0


def settings_essentials(desired: DesiredState) -> dict[str, str]:
    """What `start_due` and dispatch need from Settings, kept so they work while the files hold a bad revision."""
    settings = desired.settings
    assert settings is not None
    dump = settings.model_dump(mode="json", by_alias=True)
    return {
        "settings.timezone": settings.timezone,
        "settings.schedule_grace": str(int(settings.schedule_grace.total_seconds())),
        "settings.public_url": settings.public_url.rstrip("/"),
        "settings.signing_key_env": settings.signing_key_env,
        "settings.transports": json.dumps(dump["transports"], sort_keys=True),
        "settings.quiet_hours": json.dumps(dump["quiet_hours"]),
        "settings.frequency_cap": json.dumps(dump["frequency_cap"]),
        "settings.organization": json.dumps(dump["organization"], sort_keys=True),
        "settings.default_sender": json.dumps(dump["senders"][settings.defaults.sender], sort_keys=True),
        "settings.default_transport": settings.defaults.transport,
        "settings.api_token_env": settings.api.token_env,
    }


def apply_plan(db: Database, plan: Plan, desired: DesiredState, *, now: datetime) -> Applied:
    """Write every action of `plan`; campaigns with errors keep what they had and say why in their status."""
    at = iso(now)
    result = Applied()
    with write(db):
        if plan.actions:
            claim_serial(db, plan.serial)
        for key, value in settings_essentials(desired).items():
            if get_meta(db, key) != value:
                set_meta(db, key, value)
        for action in plan.actions:
            _apply_action(db, action, plan=plan, at=at)
            audit(
                db,
                at=at,
                revision=plan.revision,
                actor="apply",
                subject=action.subject,
                action=action.op,
                detail=action.summary,
            )
            result.actions += 1
        failed = {p.name for p in plan.errors if p.kind == "Campaign"}
        for problem in plan.errors:
            if problem.kind == "Campaign":
                campaigns.set_condition(
                    db,
                    problem.name,
                    ready=False,
                    reason="Stalled",
                    message=f"{problem.field}: {problem.message}",
                    at=at,
                )
        campaigns.mark_attempted(db, sorted(failed), revision=plan.revision)
        campaigns.clear_stalled(db, keep=failed, at=at)
        if result.actions:
            records.record_revision(db, plan.revision, git_commit=plan.git_commit, at=at, actions=result.actions)
        counts = {f"Segment {name}": n for name, n in plan.segment_counts.items()}
        counts |= {f"Campaign {name}": a.recipients for name, a in plan.audiences.items() if not a.unevaluated}
        records.record_counts(db, counts, at=at)
        if get_meta(db, "last_error"):
            set_meta(db, "last_error", "")
    return result


def observe_for(
    db: Database,
    desired: DesiredState,
    *,
    now: datetime,
    observed: ObservedState | None = None,
    campaigns: Collection[str] | None = None,
    segments: bool = True,
    budget: float | None = None,
) -> ObservedState:
    """The observed state (read now unless given) with the counts a plan shows: the segment audiences of `campaigns`
    (all when None) first, then every segment's size; counting stops after `budget` seconds (a scan each)."""
    deadline = None if budget is None else time.monotonic() + budget
    return with_counts(
        db,
        observed or observe(db),
        audiences=audience_queries(desired, now=now, campaigns=campaigns),
        segments=segment_queries(desired, now=now) if segments else {},
        deadline=deadline,
    )


def plan_and_apply(
    db: Database, desired: DesiredState, *, now: datetime, git_commit: str | None, confirm: Collection[str] = ()
) -> tuple[Plan, Applied]:
    """Observe, plan and apply; when another process applied in between, plan again from what it left."""
    for attempt in range(5):
        # a pass without changes counts nothing; one with changes counts the segment audiences it touches
        observed = observe(db)
        plan = make_plan(desired, observed, now=now, git_commit=git_commit, confirm=confirm)
        touched = [a.name for a in plan.actions if a.kind == "Campaign" and a.audience and a.audience.unevaluated]
        if touched:
            observed = observe_for(
                db, desired, now=now, observed=observed, campaigns=touched, segments=False, budget=COUNT_BUDGET
            )
            plan = make_plan(desired, observed, now=now, git_commit=git_commit, confirm=confirm)
        try:
            return plan, apply_plan(db, plan, desired, now=now)
        except StaleState:
            log.debug("state changed while planning (attempt %d); planning again", attempt + 1)
    raise StaleState("the state kept changing while planning; is another process applying in a loop?")


def _apply_action(db: Database, action: Action, *, plan: Plan, at: str) -> None:
    record: dict[str, Any] = dict(action.record)
    if action.kind == "List":
        if action.op == "remove":
            records.remove_list(db, action.name, at=at)
        else:
            records.upsert_list(db, action.name, record["spec"])
    elif action.kind == "Field":
        if action.op == "remove":
            records.remove_field(db, action.name, at=at)
        else:
            records.upsert_field(db, action.name, record["type"])
    elif action.kind == "Workflow":
        if action.op == "remove":
            records.remove_workflow(db, action.name, at=at)
        else:
            records.upsert_workflow(db, action.name, record["spec"], record["content_hash"])
    elif action.kind == "Campaign":
        _apply_campaign(db, action, record, plan=plan, at=at)


def _apply_campaign(db: Database, action: Action, record: dict[str, Any], *, plan: Plan, at: str) -> None:
    name, status = action.name, action.status or "draft"
    if action.op == "confirm":
        campaigns.confirm_late(db, name)
    elif action.op == "remove":
        campaigns.mark_removed(
            db, name, status=status, reason="Removed", message=action.summary, at=at, revision=plan.revision
        )
        campaigns.skip_unsent(db, name, why="campaign file removed", at=at)
    elif record:  # not started: the whole definition is (re)written
        message = {
            "scheduled": f"scheduled for {action.when}",
            "draft": "draft: not scheduled",
            "paused": "paused before it started",
            "cancelled": "cancelled: never sent",
        }[status]
        if action.audience is not None and status == "scheduled":
            message += f" {action.audience.describe()}"
        campaigns.upsert_campaign(
            db,
            name,
            status=status,
            reason=_REASONS[status],
            message=message,
            path=record["path"],
            spec=record["spec"],
            content=record["content"],
            content_hash=record["content_hash"],
            start_at=iso(action.start_at) if action.start_at and status == "scheduled" else None,
            at=at,
            revision=plan.revision,
            audience=record.get("audience", {}),
        )
    else:  # started: only the status moves
        campaigns.set_status(
            db, name, status=status, reason=_REASONS[status], message=action.summary, at=at, revision=plan.revision
        )
        if action.op == "cancel":
            campaigns.skip_unsent(db, name, why="campaign cancelled", at=at)


def start_due(db: Database, *, now: datetime) -> list[str]:
    """Snapshot the audience of every scheduled campaign whose time has come; returns the names started."""
    at = iso(now)
    started = []
    with write(db):
        grace = timedelta(seconds=int(get_meta(db, "settings.schedule_grace") or 6 * 3600))
        default_zone = get_meta(db, "settings.timezone") or "UTC"
        categories = records.list_categories(db)
        for row in campaigns.due_to_start(db, now=at):
            name, spec = row["name"], json.loads(row["spec"])
            audience = spec["audience"]
            exclude = audience.get("exclude") or {}
            late = now - datetime.fromisoformat(row["start_at"])
            if late > grace and not row["confirmed_late"]:
                campaigns.set_condition(
                    db,
                    name,
                    ready=False,
                    reason="LateSchedule",
                    at=at,
                    message=f"waits: its start time is {ago(late)} past, more than the grace of "
                    f"{ago(grace)}; confirm with `reconciler apply --confirm {name}` "
                    "or set a new send_at",
                )
                continue
            stored = json.loads(row["audience"] or "{}")
            compiler = Compiler(
                {n: Segment.model_validate(s) for n, s in stored.get("segments", {}).items()},
                stored.get("fields", {}),
                now=now,
                timezone=stored.get("timezone", default_zone),
            )  # the segments as they were when the campaign was scheduled, evaluated now
            query = audience_sql(
                compiler,
                lists=audience["lists"],
                exclude_lists=exclude.get("lists", []),
                segments=audience.get("segments", []),
                exclude_segments=exclude.get("segments", []),
                blocking=blocking_for(categories, audience["lists"]),
            )
            send_at = spec["send_at"]
            due = _due_function(send_at, default_zone=default_zone, at=at)
            count = campaigns.snapshot_audience(
                db,
                name,
                recipients=query.recipients,
                due_at=due,
                content_hash=row["content_hash"],
                revision=row["last_applied_revision"] or "",
                at=at,
            )
            audit(
                db,
                at=at,
                revision=row["last_applied_revision"],
                actor="tick",
                subject=f"Campaign {name}",
                action="start",
                detail=f"{count} recipients snapshotted",
            )
            log.info(
                "Campaign %s: started, %d recipients queued (%s)",
                name,
                count,
                describe_when(_send_at_value(send_at), now=now),
            )
            started.append(name)
        if started:
            bump_serial(db)
    return started


def _send_at_value(send_at: Any) -> Any:
    if isinstance(send_at, dict):
        return LocalSendTime.model_validate(send_at)
    return send_at if send_at == "now" else datetime.fromisoformat(send_at)


def _due_function(send_at: Any, *, default_zone: str, at: str) -> Any:
    if isinstance(send_at, dict):
        local = LocalSendTime.model_validate(send_at)
        return lambda zone: iso(local_due(local, zone or default_zone))
    return lambda zone: at
