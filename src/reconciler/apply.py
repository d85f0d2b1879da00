"""Carrying out a plan: `apply_plan` writes a revision's actions in one transaction with their audit entries,
together with the revision's Settings (which starting and sending read, so they work from the state alone)."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import datetime

from reconciler.audience import counting
from reconciler.clock import iso
from reconciler.field_reads import campaign_reads
from reconciler.pages import stored_pages
from reconciler.plan import Action, Plan, make_plan
from reconciler.spec import DesiredState
from reconciler.spec.documents import CustomField, MailingList
from reconciler.state import ObservedState, campaigns, observe, pages, records, settings, workflows
from reconciler.state.conditions import Reason
from reconciler.state.counting import with_counts
from reconciler.state.db import StaleState, audit, claim_serial, write
from reconciler.state.portable import dialect
from reconciler.state.postgres import StateDatabase

log = logging.getLogger(__name__)
COUNT_BUDGET = 10.0
"""Seconds a daemon pass may spend counting segment audiences for its log and status messages."""


@dataclass
class Applied:
    actions: int = 0


def apply_plan(db: StateDatabase, plan: Plan, desired: DesiredState, *, now: datetime) -> Applied:
    """Write every action of `plan`; campaigns with errors keep what they had and say why in their status."""
    at = iso(now)
    result = Applied()
    with write(db):
        if plan.actions:
            claim_serial(db, plan.serial)
        assert desired.settings is not None, "only checked workspaces are applied"
        settings.save(db, desired.settings)
        pages.save(db, stored_pages(desired))
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
                    reason=Reason.STALLED,
                    message=f"{problem.field}: {problem.message}",
                    at=at,
                )
        campaigns.mark_attempted(db, sorted(failed), revision=plan.revision)
        campaigns.clear_stalled(db, keep=failed, at=at)
        campaigns.set_not_applied(db, plan.not_applied)
        if result.actions:
            records.record_revision(db, plan.revision, git_commit=plan.git_commit, at=at, actions=result.actions)
        counts = {f"Segment {name}": n for name, n in plan.segment_counts.items()}
        counts |= {f"Campaign {name}": a.counted for name, a in plan.audiences.items() if a.counted is not None}
        records.record_counts(db, counts, at=at)
        records.clear_refused(db)
    return result


def observe_for(
    db: StateDatabase,
    desired: DesiredState,
    *,
    now: datetime,
    observed: ObservedState | None = None,
    campaigns: Collection[str] | None = None,
    segments: bool = True,
    budget: float | None = None,
) -> ObservedState:
    """The observed state (read now unless given) with the counts a plan shows: the segment audiences of `campaigns`
    (all when None), every segment's size (`segments`), who lacks a field a message reads without a default; each
    segment evaluated once, the segments audiences use first; counting stops after `budget` seconds."""
    deadline = None if budget is None else time.monotonic() + budget
    reads = {name: fields for name, fields in campaign_reads(desired).items() if campaigns is None or name in campaigns}
    wanted = counting(desired, now=now, campaigns=campaigns, sizes=segments, reads=reads, dialect=dialect(db))
    return with_counts(db, observed or observe(db), wanted, deadline=deadline)


def plan_for(
    db: StateDatabase,
    desired: DesiredState,
    *,
    now: datetime,
    budget: float | None,
    git_commit: str | None,
    confirm: Collection[str] = (),
) -> Plan:
    """The plan `reconciler plan` shows, with every count it can make within `budget` seconds; only reads (the
    command line and the plan endpoint, which runs it inside `state.db.snapshot`, show the same plan)."""
    observed = observe_for(db, desired, now=now, budget=budget)
    return make_plan(desired, observed, now=now, git_commit=git_commit, confirm=confirm)


def plan_and_apply(
    db: StateDatabase,
    desired: DesiredState,
    *,
    now: datetime,
    git_commit: str | None,
    confirm: Collection[str] = (),
    whole: bool = True,
) -> tuple[Plan, Applied]:
    """Observe, plan and apply; when another process applied in between, plan again from what it left.
    `whole=False` (the daemon's passes, which show only the actions) reads only what the actions need, as each of
    these is a scan that grows with the contacts, on every pass: the active runs by step only when the plan edits or
    removes a workflow, for its words (the plan leaves out the unchanged workflows' runs), and the list-membership
    histogram (every audience's count starts from it) only when a campaign has an action (the others' audiences
    are left not counted)."""
    for attempt in range(5):
        # a pass without changes counts nothing; one with changes counts the segment audiences it touches
        observed = observe(db, audience=whole, runs=whole)
        plan = make_plan(desired, observed, now=now, git_commit=git_commit, confirm=confirm)
        if not whole and any(a.kind == "Workflow" and a.op != "create" for a in plan.actions):
            observed = replace(observed, runs=workflows.active_by_step(db))
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


def _apply_action(db: StateDatabase, action: Action, *, plan: Plan, at: str) -> None:
    document = action.document
    if action.kind == "Campaign":
        _apply_campaign(db, action, plan=plan, at=at)
    elif action.op == "remove":
        remove = {"List": records.remove_list, "Field": records.remove_field, "Workflow": workflows.remove_workflow}
        remove[action.kind](db, action.name, at=at)
    elif isinstance(document, MailingList):
        records.upsert_list(db, document)
    elif isinstance(document, CustomField):
        records.upsert_field(db, document)
    elif action.workflow is not None:
        workflows.save_workflow(db, action.workflow, action.content_hash, at=at)


def _apply_campaign(db: StateDatabase, action: Action, *, plan: Plan, at: str) -> None:
    name, status = action.name, action.status or "draft"
    if action.op == "confirm":
        campaigns.confirm_late(db, name)
    elif action.op == "remove":
        campaigns.mark_removed(db, name, status=status, message=action.summary, at=at, revision=plan.revision)
        campaigns.skip_unsent(db, name, why="campaign file removed", at=at)
    elif action.definition is not None:  # not started: the whole definition is (re)written
        message = {
            "scheduled": f"scheduled for {action.when}",
            "draft": "draft: not scheduled",
            "paused": "paused before it started",
            "cancelled": "cancelled: never sent",
        }[status]
        if action.audience is not None and status == "scheduled":
            message += f" {action.audience.describe()}"
        start_at = iso(action.start_at) if action.start_at and status == "scheduled" else None
        campaigns.upsert_campaign(
            db,
            name,
            action.definition,
            status=status,
            message=message,
            start_at=start_at,
            at=at,
            revision=plan.revision,
        )
    else:  # started: only the status moves
        campaigns.set_status(
            db,
            name,
            status=status,
            reason=Reason.for_status(status),
            message=action.summary,
            at=at,
            revision=plan.revision,
        )
        if action.op == "cancel":
            campaigns.skip_unsent(db, name, why="campaign cancelled", at=at)
