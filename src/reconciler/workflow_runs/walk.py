"""A run's walk through its steps: execute each step that is due, until the run must wait or is over.

A step and the run's move past it are written in the same transaction (with a batch of other runs), so after a
crash every step has been done exactly once or not at all. A send step only creates the message's ledger row, keyed
by run and step; the dispatcher sends it like any other message, with the same guarantees.
"""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import NamedTuple

from reconciler.spec.conditions import StepClicked, StepOpened
from reconciler.spec.workflow import (
    AddToListStep,
    ExitStep,
    IfStep,
    MoveToListStep,
    RemoveFromListStep,
    SendStep,
    SetFieldStep,
    StepNode,
    TagStep,
    UntagStep,
    WaitStep,
    WaitUntilStep,
)
from reconciler.state import audiences, contacts, subscribers
from reconciler.state import workflows as runs
from reconciler.state.db import bulk_writes, write
from reconciler.state.subscribers import Status
from reconciler.state.workflows import Run
from reconciler.workflow_runs.context import Pass

POLL = timedelta(minutes=10)
"""How often a run waiting for a condition (`wait_until`) looks again; its timeout is kept to the second."""
BATCH = 1_000
"""Runs advanced per transaction."""


class _Move(NamedTuple):
    """Where a step sends the run: on to `next` at `at`, or (when `until` is set) nowhere before `until`."""

    next: str = ""
    at: datetime | None = None
    result: str = ""
    until: datetime | None = None


def advance_due(run_pass: Pass) -> None:
    """Walk every due run of an active workflow, a batch per transaction."""
    names, db = sorted(run_pass.active), run_pass.db
    if not names:
        return
    ids = runs.due_run_ids(db, names, now=run_pass.at)
    with bulk_writes(db) if len(ids) > BATCH else nullcontext():
        for first in range(0, len(ids), BATCH):
            with write(db):
                due = runs.runs_by_id(db, ids[first : first + BATCH], now=run_pass.at)
                run_pass.writes = runs.StepWrites(db)  # a fresh one: a batch rolled back leaves nothing behind
                for run in due:
                    walk(run_pass, run)
                run_pass.writes.flush()
            run_pass.report.advanced += len(due)


def walk(run_pass: Pass, run: Run) -> None:
    """Execute the run's steps from where it is until it must wait, or is over (inside the caller's write; its
    moves, steps, tags and queued messages go into `run_pass.writes`, flushed before anything else touches their
    tables)."""
    db, stored, graph = run_pass.db, run_pass.workflow(run.workflow), run_pass.graphs[run.workflow]
    writes = run_pass.writes
    key, at = run.step, datetime.fromisoformat(run.entered_at)
    exit_when = stored.workflow.exit_when
    for _ in range(len(graph) + 1):
        # had_event reads only events, which no kept write touches
        if exit_when is not None and runs.had_event(db, run.contact_id, exit_when.event, since=run.started_at):
            writes.flush()  # a message this batch queued to the contact is skipped too
            runs.skip_waiting(db, run.workflow, run.contact_id, event=exit_when.event, at=run_pass.at)
            _finish(run_pass, run, key, "exited", f"exited: {exit_when.event}")
            return
        if not key:
            _finish(run_pass, run, key, "completed", "completed")
            return
        node = graph.get(key)
        if node is None:
            _finish(run_pass, run, key, "ended", f"ended: step {key} was removed from the workflow")
            return
        if isinstance(node.step, ExitStep):  # the run stops on it, as on a step whose exit event came
            reason = f": {node.step.reason}" if node.step.reason else ""
            _finish(run_pass, run, key, "exited", f"exited at {key}{reason}")
            return
        move = _step(run_pass, run, key, node, at)
        if move.until is not None:
            writes.move(run.id, step=key, entered_at=run_pass.iso(at), due_at=run_pass.iso(move.until))
            return
        writes.log_step(run.id, key, at=run_pass.iso(move.at or at), result=move.result)
        key, at = move.next, move.at or at
    raise AssertionError(f"run {run.id} of {run.workflow} walked more steps than the workflow has")


def _finish(run_pass: Pass, run: Run, key: str, state: str, outcome: str) -> None:
    run_pass.writes.finish(run.id, step=key, state=state, outcome=outcome, at=run_pass.iso(run_pass.now))
    run_pass.report.finished[state] += 1


def _step(run_pass: Pass, run: Run, key: str, node: StepNode, at: datetime) -> _Move:
    step, now = node.step, run_pass.now
    if isinstance(step, SendStep):
        digest, revision = run_pass.digest(run.workflow, key), run_pass.revision
        run_pass.writes.queue_send(run, key, content_hash=digest, revision=revision, at=run_pass.iso(at))
        run_pass.report.queued += 1
        return _Move(node.next, at, "queued")
    # a run goes on from a wait at the moment it is seen to be over, not at the moment it ended: after a pause or a
    # stopped daemon, the next wait counts from now, so overdue messages never go out in a burst
    if isinstance(step, WaitStep):
        until = at + step.wait
        return _Move(node.next, now, "waited") if until <= now else _Move(until=until)
    if isinstance(step, WaitUntilStep):
        if holds(run_pass, run, step.wait_until):
            return _Move(node.next, now, "condition met")
        timeout = at + step.timeout
        if timeout <= now:
            return _Move(node.next, now, "timed out")
        return _Move(until=min(timeout, now + POLL))
    if isinstance(step, IfStep):
        chosen = holds(run_pass, run, step.if_)
        return _Move(node.then, at, "then") if chosen else _Move(node.else_, at, "else")
    return _Move(node.next, at, _act(run_pass, run, step, at))


def _act(run_pass: Pass, run: Run, step: object, at: datetime) -> str:
    """The contact actions: lists (each change with its consent record), tags and fields."""
    db, contact, when, source = run_pass.db, run.contact_id, run_pass.iso(at), f"workflow {run.workflow}"
    if isinstance(step, TagStep):
        run_pass.writes.tag(contact, step.tag, present=True, at=when)
        return f"tagged {step.tag}"
    if isinstance(step, UntagStep):
        run_pass.writes.tag(contact, step.untag, present=False, at=when)
        return f"untagged {step.untag}"
    run_pass.writes.flush()  # the other actions read and write contacts and subscriptions themselves

    def subscriptions(wanted: dict[str, Status]) -> None:
        subscribers.change_subscriptions(db, contact, wanted, at=when, source=source)

    if isinstance(step, AddToListStep):
        if subscribers.left_by_choice(db, contact, step.add_to_list):
            return f"not added to {step.add_to_list}: they unsubscribed"
        subscriptions({step.add_to_list: "subscribed"})
        return f"added to {step.add_to_list}"
    if isinstance(step, RemoveFromListStep):
        subscriptions({step.remove_from_list: "unsubscribed"})
        return f"removed from {step.remove_from_list}"
    if isinstance(step, MoveToListStep):
        lists = step.move_to_list
        if subscribers.left_by_choice(db, contact, lists.to):
            subscriptions({lists.from_: "unsubscribed"})
            return f"removed from {lists.from_}, not added to {lists.to}: they unsubscribed"
        subscriptions({lists.from_: "unsubscribed", lists.to: "subscribed"})
        return f"moved from {lists.from_} to {lists.to}"
    assert isinstance(step, SetFieldStep), f"a step the runner does not know: {type(step).__name__}"
    contacts.set_custom_field(db, contact, step.set_field.field, step.set_field.value, at=when)
    return f"set {step.set_field.field}"


def holds(run_pass: Pass, run: Run, condition: object) -> bool:
    """A workflow condition for the run's contact: engagement by a person (not a proxy or scanner) with an earlier
    send of this run, or any segment condition."""
    run_pass.writes.flush()  # it reads what the batch wrote (tags, messages)
    if isinstance(condition, StepOpened):
        return runs.engaged(run_pass.db, run.id, condition.opened, "opened")
    if isinstance(condition, StepClicked):
        return runs.engaged(run_pass.db, run.id, condition.clicked, "clicked")
    compiled = run_pass.compiler(run.workflow).condition(condition)
    return audiences.holds(run_pass.db, compiled, run.contact_id)
