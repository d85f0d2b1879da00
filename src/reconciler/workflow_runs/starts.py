"""What starts runs: subscriptions, events, dates and segments, each under its workflow's re-entry rule.

Subscriptions and events are read from the state in order, from where the last pass stopped (a cursor in `meta`),
so nothing recorded by the web service, the API or an import is missed or read twice, whichever process wrote it.
Dates and segments are looked at on every pass.
"""

from __future__ import annotations

import calendar
import hashlib
import json
from collections import defaultdict
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from reconciler.segments import join_sql
from reconciler.spec.workflow import (
    DateFieldTrigger,
    EventTrigger,
    ReEntryAfter,
    SegmentEnteredTrigger,
    SubscribedTrigger,
    first_step,
)
from reconciler.state import audiences
from reconciler.state import workflows as runs
from reconciler.state.db import get_meta, write
from reconciler.state.workflows import NewEvent, StoredWorkflow
from reconciler.workflow_runs.context import Pass

BATCH = 1_000
"""Facts read per transaction."""
KEY_LIMIT = 200
"""Characters of a run's key kept as they are; a longer one is kept by its digest."""


def start(run_pass: Pass, name: str, contact_id: int, *, key: str, trigger: str, once: bool = False) -> None:
    """A run for the contact, unless the workflow's re-entry rule keeps them out (inside the caller's write).
    `once`: one run per key whatever the rule (a date's occasion is seen on every pass of its day)."""
    stored = run_pass.workflow(name)
    if once and runs.last_run(run_pass.db, name, contact_id, key) is not None:
        return
    if not _may_enter(run_pass, name, contact_id, key):
        return
    started = runs.start_run(
        run_pass.db,
        name,
        contact_id,
        key=key,
        list_name=stored.list_name,
        step=first_step(stored.workflow),
        at=run_pass.at,
        revision=run_pass.revision,
        trigger=trigger,
    )
    if started is not None:
        run_pass.report.started += 1


def _may_enter(run_pass: Pass, name: str, contact_id: int, key: str) -> bool:
    """The re-entry rule, per key: never again, always (one run at a time), or once a while has passed since the
    last run started."""
    last = runs.last_run(run_pass.db, name, contact_id, key)
    if last is None:
        return True
    state, started_at = last
    rule = run_pass.workflow(name).workflow.re_entry
    if state == "active" or rule == "never":
        return False
    if isinstance(rule, ReEntryAfter):
        return datetime.fromisoformat(started_at) + rule.after <= run_pass.now
    return True


def _news(run_pass: Pass, name: str, table: str) -> bool:
    """Whether `table` has rows the runner has not read (the first time: sets where reading begins)."""
    after = get_meta(run_pass.db, f"workflows.cursor.{name}")
    if after is None:
        with write(run_pass.db):
            runs.cursor(run_pass.db, name, table)
        return False
    return runs.has_after(run_pass.db, table, int(after))


def from_subscriptions(run_pass: Pass) -> None:
    """`subscribed: LIST`: a subscription that became active (confirmed, for a double opt-in list), by any way."""
    by_list: dict[str, list[str]] = defaultdict(list)
    for name, stored in run_pass.active.items():
        if isinstance(stored.workflow.trigger, SubscribedTrigger):
            by_list[stored.workflow.trigger.subscribed].append(name)
    db = run_pass.db
    while _news(run_pass, "consent", "consent"):
        with write(db):
            after = runs.cursor(db, "consent", "consent")
            found, last, done = runs.new_subscriptions(db, after=after, limit=BATCH)
            for fact in found:
                for name in by_list.get(fact.list_name, []):
                    start(run_pass, name, fact.contact_id, key="", trigger=f"consent {fact.consent_id}")
            runs.set_cursor(db, "consent", last)
        if done:
            return


def from_events(run_pass: Pass) -> None:
    """`event: TYPE` starts runs; an `exit_when` event ends the contact's runs at once."""
    db = run_pass.db
    while _news(run_pass, "events", "events"):
        with write(db):
            after = runs.cursor(db, "events", "events")
            found = runs.new_events(db, after=after, limit=BATCH)
            for event in found:
                _event(run_pass, event)
            if found:
                runs.set_cursor(db, "events", found[-1].id)
        if len(found) < BATCH:
            return


def _event(run_pass: Pass, event: NewEvent) -> None:
    at = run_pass.at
    for name, stored in run_pass.active.items():
        workflow = stored.workflow
        if workflow.exit_when is not None and workflow.exit_when.event == event.type:
            run_pass.report.finished["exited"] += runs.exit_runs(
                run_pass.db, name, event.contact_id, event=event.type, at=at
            )
        trigger = workflow.trigger
        if isinstance(trigger, EventTrigger) and trigger.event == event.type and _matches(run_pass, name, event):
            key = _key(event, trigger.key)
            if key is None:
                run_pass.report.ignored[f"{name}: events without {trigger.key}"] += 1
            else:
                start(run_pass, name, event.contact_id, key=key, trigger=f"event {event.id}")
    for name, stored in run_pass.stored.items():
        trigger = stored.workflow.trigger
        if name not in run_pass.active and isinstance(trigger, EventTrigger) and trigger.event == event.type:
            run_pass.report.ignored[f"{name}: events while paused"] += 1


def _key(event: NewEvent, name: str | None) -> str | None:
    """The run's key from the event's `name` property: text as it is, a number or a boolean as JSON writes it,
    and a long value by its digest (two carts whose ids share 200 characters are two runs). None when the event
    does not carry it (missing, null, a list or an object): such an event starts no run, and the pass says so."""
    if name is None:
        return ""
    value = event.properties.get(name)
    if isinstance(value, str) and value:
        text = value
    elif isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        return None
    return text if len(text) <= KEY_LIMIT else text[:100] + "…" + hashlib.sha256(text.encode()).hexdigest()[:32]


def _matches(run_pass: Pass, name: str, event: NewEvent) -> bool:
    """The trigger's `property` conditions on the event, compiled like a segment's."""
    trigger = run_pass.workflow(name).workflow.trigger
    assert isinstance(trigger, EventTrigger)
    if not trigger.properties():
        return True
    compiler = run_pass.compiler(name)
    test = join_sql(" AND ", [compiler.property(p) for p in trigger.properties()])
    return runs.event_matches(run_pass.db, event.id, test)


def from_dates(run_pass: Pass) -> None:
    """`date_field: FIELD`: once a year, at `at` on the contact's own clock, on the date (or `before`/`after`
    it). A run's key is the year of the date it celebrates, so `re_entry: never` still means once a year. A
    date of 29 February is celebrated on the 28th in other years."""
    for name, stored in run_pass.active.items():
        trigger = stored.workflow.trigger
        if not isinstance(trigger, DateFieldTrigger):
            continue
        shift = timedelta(days=((trigger.after or timedelta()) - (trigger.before or timedelta())).days)
        today = run_pass.now.date()
        days = {(today + timedelta(days=k) - shift).strftime("%m-%d") for k in (-1, 0, 1)}
        if "02-28" in days:
            days.add("02-29")
        candidates = runs.date_candidates(run_pass.db, trigger.date_field, sorted(days))
        if not candidates:
            continue
        with write(run_pass.db):
            for contact_id, value, zone in candidates:
                local = run_pass.now.astimezone(_zone(zone, run_pass.timezone))
                occasion = local.date() - shift
                if _celebrates(value, occasion) and local.time() >= trigger.at:
                    trigger_text = f"date {trigger.date_field} {occasion.isoformat()}"
                    start(run_pass, name, contact_id, key=str(occasion.year), trigger=trigger_text, once=True)


def _zone(name: str | None, fallback: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or fallback)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(fallback)


def _celebrates(value: str, day: date) -> bool:
    """Whether a stored date (YYYY-MM-DD…) falls on `day`'s month and day, 29 February on the 28th in other years."""
    month_day = value[5:10]
    if month_day == day.strftime("%m-%d"):
        return True
    return month_day == "02-29" and day.month == 2 and day.day == 28 and not calendar.isleap(day.year)


def from_segments(run_pass: Pass) -> None:
    """`segment_entered: SEGMENT`: contacts who are members now and were not at the last evaluation. The first
    evaluation only notes who is in, unless the workflow says `backfill: true`."""
    db = run_pass.db
    for name, stored in run_pass.active.items():
        trigger = stored.workflow.trigger
        if not isinstance(trigger, SegmentEnteredTrigger):
            continue
        members = set(audiences.member_ids(db, run_pass.compiler(name).members(trigger.segment_entered)))
        definition = _definition(stored, trigger.segment_entered)
        known, seen = runs.segment_members(db, name, definition)
        entered, left = members - known, known - members
        if seen and not entered and not left:
            continue
        with write(db):
            if seen or trigger.backfill:
                for contact_id in sorted(entered):
                    start(run_pass, name, contact_id, key="", trigger=f"segment {trigger.segment_entered}")
            runs.note_segment_members(db, name, definition, entered=entered, left=left)


def _definition(stored: StoredWorkflow, segment: str) -> str:
    """A digest of the segment the trigger watches and every segment the workflow stored with it."""
    described = {"trigger": segment, "segments": {n: s.model_dump(mode="json") for n, s in stored.segments.items()}}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
