"""A workflow on simulated time: the timeline one contact's run follows, for `reconciler test` and `simulate`.

The simulation is the product itself, not a model of it: the workspace is applied to an empty state database in
memory, the run is started for a made-up contact, and the clock jumps from one moment that matters to the next
(a wait ending, a held message's time, something the contact does), with a reconcile pass (the runner) and a
dispatch pass (quiet hours, caps, subscriptions checked at claim time) at each. Messages go to a transport in
memory; nothing is sent and no file or state database is written.
"""

from __future__ import annotations

import asyncio
import json
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
from reconciler.state.subscribers import change_subscriptions, contact_for, insert_events
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
        run_id = _start(db, desired, workflow, contact, start, trigger or {})
        _walk(db, desired, sorted(happens, key=lambda h: h.at), start, start + timedelta(days=days))
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
) -> int:
    """The contact, subscribed to their lists (and the trigger's), with a run started at `start`."""
    stored = runs.load_workflows(db)[name]
    workflow = stored.workflow
    at = iso(start)
    lists = list(contact.lists) if contact.lists is not None else []
    if contact.lists is None and stored.list_name:  # the trigger's list, or the workflow's `list:`
        lists.append(stored.list_name)
    with write(db):
        contact_id = contact_for(db, contact.email, at=at, first_name=contact.first_name)
        db.conn.execute(
            "UPDATE contacts SET last_name = ?, timezone = ?, locale = ?, country = ?, fields = ?, tags = ? "
            "WHERE id = ?",
            (
                contact.last_name,
                contact.timezone,
                contact.locale,
                contact.country,
                json.dumps(contact.fields),
                json.dumps(sorted(set(contact.tags))),
                contact_id,
            ),
        )
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
    return run_id


def _walk(db: Database, desired: DesiredState, happens: list[Happening], start: datetime, end: datetime) -> None:
    """Pass after pass, each at the next moment that matters, until nothing is left to happen or `end`."""
    settings = desired.settings
    assert settings is not None
    names = {*settings.transports, settings.defaults.transport}
    memory = MemoryTransport(max_connections=1)
    transports = {name: memory for name in names}
    now, pending = start, list(happens)
    while now <= end:
        while pending and start + pending[0].at <= now:
            _happen(db, pending.pop(0), at=now)
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


def _happen(db: Database, happening: Happening, *, at: datetime) -> None:
    """What the contact does: an open or a click of the run's message, an event, leaving a list."""
    when = iso(at)
    contact = db.conn.execute("SELECT id, email FROM contacts").fetchone()
    if happening.event:
        insert_events(db, [(contact[1], happening.event, when, happening.properties, None)], at=when)
    step = happening.opened or happening.clicked
    if step:
        row = db.conn.execute(
            "SELECT id FROM ledger WHERE workflow IS NOT NULL AND stage = ? AND state = 'sent' ORDER BY id DESC",
            (step,),
        ).fetchone()
        if row is not None:  # a message that was never sent cannot be opened
            action: engagement.Action = "opened" if happening.opened else "clicked"
            with write(db):
                engagement.record(db, [engagement.Engagement(row[0], action, when)])
    if happening.unsubscribed:
        with write(db):
            change_subscriptions(db, contact[0], {happening.unsubscribed: "unsubscribed"}, at=when, source="test")


def _timeline(db: Database, run_id: int, start: datetime) -> list[str]:
    """The run's history as lines `OFFSET WHAT`, in time order: sends when they went out (or why not), branches,
    actions, and how the run ended."""
    entries: list[tuple[datetime, int, str]] = []
    sends = {
        str(step): (state, sent_at, reply)
        for step, state, sent_at, reply in db.conn.execute(
            "SELECT stage, state, sent_at, last_reply FROM ledger WHERE source = ? AND workflow IS NOT NULL",
            (str(run_id),),
        )
    }
    history = db.conn.execute(
        "SELECT rowid, step, at, result FROM workflow_steps WHERE run_id = ? ORDER BY rowid", (run_id,)
    ).fetchall()
    for order, (_, step, at, result) in enumerate(history):
        when = datetime.fromisoformat(at)
        if result in QUIET:
            continue
        if result == "queued":
            state, sent_at, reply = sends.get(step, ("queued", None, ""))
            if state == "sent":
                entries.append((datetime.fromisoformat(sent_at), order, f"sent {step}"))
            else:
                why = (reply or "waiting").removeprefix("not sent: ")
                entries.append((when, order, f"not sent {step} ({state}: {why})"))
        elif result in ("then", "else"):
            entries.append((when, order, f"{result} {step}"))
        else:
            entries.append((when, order, result))
    end = db.conn.execute("SELECT ended_at, outcome FROM workflow_runs WHERE id = ?", (run_id,)).fetchone()
    if end[0]:
        entries.append((datetime.fromisoformat(end[0]), len(history) + 1, str(end[1])))
    return [f"{format_offset(when - start)} {text}" for when, _, text in sorted(entries)]
