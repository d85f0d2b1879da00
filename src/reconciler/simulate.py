"""A workflow on simulated time: the timeline one contact's run follows, for `reconciler test` and `simulate`.

The simulation is the product itself, not a model of it: the workspace is applied to an empty state database in
memory, the run is started for a made-up contact, and the clock jumps from one moment that matters to the next
(a wait ending, a held message's time, something the contact does), with a reconcile pass (the runner) and a
dispatch pass (quiet hours, caps, subscriptions checked at claim time) at each. Messages go to a transport in
memory; nothing is sent and no file or state database is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlite_utils import Database

from reconciler.apply import plan_and_apply
from reconciler.clock import FixedClock, iso
from reconciler.dispatch import Dispatcher
from reconciler.spec import DesiredState
from reconciler.spec.journey import Happening, TestContact, WorkflowTest, format_offset
from reconciler.spec.workflow import EventTrigger, first_step
from reconciler.state import engagement, ledger
from reconciler.state import workflows as runs
from reconciler.state.db import empty_db, set_meta, write
from reconciler.state.subscribers import change_subscriptions, insert_events, made_up_contact
from reconciler.state.workflow_reads import last_sent, run_story
from reconciler.tokens import new_key
from reconciler.transports import MemoryTransport
from reconciler.workflow_runs import run_workflows

QUIET = ("waited", "condition met", "timed out")
"""History results a timeline leaves out: the times of the lines around them say them."""


@dataclass(frozen=True)
class Outcome:
    """A test's verdict: the timeline the run followed, and the one it was expected to follow."""

    name: str
    timeline: tuple[str, ...]
    expected: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.timeline == self.expected


def run_test(desired: DesiredState, test: WorkflowTest) -> Outcome:
    lines = simulate(
        desired,
        test.workflow,
        test.contact,
        test.happens,
        start=test.start,
        days=test.days,
        trigger=test.trigger,
    )
    return Outcome(test.name, tuple(lines), tuple(" ".join(line.split()) for line in test.expect))


def simulate(
    desired: DesiredState,
    workflow: str,
    contact: TestContact,
    happens: Sequence[Happening] = (),
    *,
    start: datetime,
    days: int = 90,
    trigger: dict[str, object] | None = None,
) -> list[str]:
    """The timeline of one run of `workflow` for `contact`, from `start` for `days` days."""
    quiet = logging.getLogger("reconciler")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # a simulation is not the daemon: its passes log nothing
    try:
        db = _state(desired, start)
        run_id, contact_id = _start(db, desired, workflow, contact, start, trigger or {})
        pending = sorted(happens, key=lambda h: h.at)
        _walk(db, desired, (contact_id, contact.email), pending, start, start + timedelta(days=days))
        return _timeline(db, run_id, start)
    finally:
        quiet.setLevel(level)


def _state(desired: DesiredState, start: datetime) -> Database:
    db = empty_db()
    with write(db):
        set_meta(db, "signing_key", new_key())  # links are signed, with a key that dies with the simulation
    plan_and_apply(db, desired, now=start - timedelta(minutes=1), git_commit=None)
    return db


def _start(
    db: Database, desired: DesiredState, name: str, contact: TestContact, start: datetime, trigger: dict[str, object]
) -> tuple[int, int]:
    """The contact, subscribed to their lists (and the trigger's), with a run started at `start`: the run's id and
    the contact's."""
    stored = runs.load_workflows(db)[name]
    workflow = stored.workflow
    at = iso(start)
    lists = list(contact.lists) if contact.lists is not None else []
    if contact.lists is None and stored.list_name:  # the trigger's list, or the workflow's `list:`
        lists.append(stored.list_name)
    with write(db):
        contact_id = made_up_contact(db, contact, at=at)
        change_subscriptions(db, contact_id, {name: "subscribed" for name in lists}, at=at, source="simulation")
        key = ""
        if isinstance(workflow.trigger, EventTrigger) and workflow.trigger.key:
            key = str(trigger.get(workflow.trigger.key, ""))
        run_id = runs.start_run(
            db,
            name,
            contact_id,
            key=key,
            list_name=stored.list_name,
            step=first_step(workflow),
            at=at,
            revision=desired.revision,
            trigger="simulation",
        )
    assert run_id is not None
    return run_id, contact_id


def _walk(
    db: Database,
    desired: DesiredState,
    contact: tuple[int, str],
    happens: list[Happening],
    start: datetime,
    end: datetime,
) -> None:
    """Pass after pass, each at the next moment that matters, until nothing is left to happen or `end`."""
    settings = desired.settings
    assert settings is not None
    names = {*settings.transports, settings.defaults.transport}
    memory = MemoryTransport(max_connections=1)
    transports = {name: memory for name in names}
    now, pending = start, list(happens)
    while now <= end:
        while pending and start + pending[0].at <= now:
            _happen(db, contact, pending.pop(0), at=now)
        run_workflows(db, now=now)
        asyncio.run(_dispatch(db, Path(desired.root), now, transports))
        moments = [start + h.at for h in pending]
        moments += [m for m in (runs.next_due(db), _next_message(db)) if m is not None]
        later = [m for m in moments if m > now]
        if not later:
            return
        now = min(later)


async def _dispatch(db: Database, root: Path, now: datetime, transports: dict[str, MemoryTransport]) -> None:
    dispatcher = Dispatcher(db, root=root, clock=FixedClock(now), transports=transports)
    try:
        await dispatcher.run_pass()
    finally:
        await dispatcher.close()


def _next_message(db: Database) -> datetime | None:
    due = ledger.next_due(db)
    return datetime.fromisoformat(due) if due else None


def _happen(db: Database, contact: tuple[int, str], happening: Happening, *, at: datetime) -> None:
    """What the contact (id, address) does: an open or a click of the run's message, an event, leaving a list."""
    when = iso(at)
    contact_id, email = contact
    if happening.event:
        insert_events(db, [(email, happening.event, when, happening.properties, None)], at=when)
    step = happening.opened or happening.clicked
    if step:
        row_id = last_sent(db, step)
        if row_id is not None:  # a message that was never sent cannot be opened
            action: engagement.Action = "opened" if happening.opened else "clicked"
            with write(db):
                engagement.record(db, [engagement.Engagement(row_id, action, when)])
    if happening.unsubscribed:
        with write(db):
            change_subscriptions(db, contact_id, {happening.unsubscribed: "unsubscribed"}, at=when, source="test")


def _timeline(db: Database, run_id: int, start: datetime) -> list[str]:
    """The run's history as lines `OFFSET WHAT`, in time order: sends when they went out (or why not), branches,
    actions, and how the run ended."""
    entries: list[tuple[datetime, int, str]] = []
    story = run_story(db, run_id)
    for order, (step, at, result) in enumerate(story.history):
        when = datetime.fromisoformat(at)
        if result in QUIET:
            continue
        if result == "queued":
            state, sent_at, reply = story.sends.get(step, ("queued", None, ""))
            if state == "sent":
                entries.append((datetime.fromisoformat(str(sent_at)), order, f"sent {step}"))
            else:
                why = (reply or "waiting").removeprefix("not sent: ")
                entries.append((when, order, f"not sent {step} ({state}: {why})"))
        elif result in ("then", "else"):
            entries.append((when, order, f"{result} {step}"))
        else:
            entries.append((when, order, result))
    if story.ended_at:
        entries.append((datetime.fromisoformat(story.ended_at), len(story.history) + 1, str(story.outcome)))
    return [f"{format_offset(when - start)} {text}" for when, _, text in sorted(entries)]
