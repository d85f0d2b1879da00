"""What `status` reads about workflows: their records, their ended runs, and their messages by outcome, by step, and
those not sent; and what a simulated run (`reconciler test`) reads of its one run: its history, its messages, its end.

A workflow's message is a ledger row whose `workflow` names it (its source is the run id, its stage the step). A row
held back by quiet hours or a cap is still queued: it counts as `postponed` while its last reply says so.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

from pydantic import ValidationError

from reconciler.spec.workflow import Workflow, step_graph
from reconciler.state.ledger import Failure
from reconciler.state.postgres import StateDatabase

OUTCOMES = ("sent", "waiting", "postponed", "failed", "uncertain", "skipped")
"""A workflow message's outcome as status shows it: waiting is queued, deferred for a retry or on the wire."""


@dataclass(frozen=True)
class WorkflowInfo:
    """A workflow as last applied: its status, whether its file was removed, its step keys in the order runs meet
    them (empty when the stored document cannot be read)."""

    name: str
    status: str
    removed: bool
    steps: tuple[str, ...]


def workflow_names(db: StateDatabase) -> list[str]:
    """Every workflow ever applied, removed ones too (their messages stay)."""
    return [str(row[0]) for row in db.conn.execute("SELECT name FROM workflows ORDER BY name")]


def workflow_info(db: StateDatabase, name: str) -> WorkflowInfo | None:
    row = db.conn.execute("SELECT spec, removed_at FROM workflows WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    spec, removed_at = row
    try:
        workflow = Workflow.model_validate_json(spec)
    except ValidationError:  # a document stored by an older version: its status still reads
        status = json.loads(spec).get("status", "active") if spec else "active"
        return WorkflowInfo(name, str(status), removed_at is not None, ())
    return WorkflowInfo(name, workflow.status, removed_at is not None, tuple(step_graph(workflow.steps)))


def _zeros() -> dict[str, int]:
    return dict.fromkeys(OUTCOMES, 0)


def messages_by_workflow(db: StateDatabase) -> dict[str, dict[str, int]]:
    """Each workflow's messages by outcome (every outcome, 0 included); workflows without messages are absent."""
    found: dict[str, dict[str, int]] = defaultdict(_zeros)
    for workflow, outcome, count in db.conn.execute(
        "SELECT workflow, CASE WHEN state IN ('queued', 'deferred') AND last_reply LIKE 'postponed:%' THEN "
        "'postponed' WHEN state IN ('queued', 'deferred', 'sending') THEN 'waiting' ELSE state END AS outcome, "
        "count(*) FROM ledger WHERE workflow IS NOT NULL GROUP BY workflow, outcome"
    ):
        found[str(workflow)][str(outcome)] = int(count)
    return dict(found)


def ended_runs(db: StateDatabase, workflow: str) -> dict[str, int]:
    """One workflow's ended runs by outcome ("completed", "exited at stop: already a customer", "exited: purchase"),
    the most frequent first."""
    rows = db.conn.execute(
        "SELECT outcome, count(*) FROM workflow_runs WHERE workflow = ? AND state != 'active' GROUP BY outcome "
        "ORDER BY count(*) DESC, outcome",
        (workflow,),
    )
    return {str(outcome or ""): int(count) for outcome, count in rows}


def messages_by_step(db: StateDatabase, workflow: str) -> dict[str, dict[str, int]]:
    """One workflow's messages by step and outcome."""
    found: dict[str, dict[str, int]] = defaultdict(_zeros)
    for step, outcome, count in db.conn.execute(
        "SELECT stage, CASE WHEN state IN ('queued', 'deferred') AND last_reply LIKE 'postponed:%' THEN "
        "'postponed' WHEN state IN ('queued', 'deferred', 'sending') THEN 'waiting' ELSE state END AS outcome, "
        "count(*) FROM ledger WHERE workflow = ? GROUP BY stage, outcome",
        (workflow,),
    ):
        found[str(step)][str(outcome)] = int(count)
    return dict(found)


def workflow_failures(db: StateDatabase, workflow: str, *, limit: int) -> list[Failure]:
    """A workflow's messages that were not sent, latest first: failed, uncertain, skipped, postponed (with the time
    they wait for) and waiting for a retry. `Failure.stage` is the step."""
    rows = db.conn.execute(
        "SELECT coalesce(c.email, '(erased)'), l.stage, CASE WHEN l.postponed THEN 'postponed' ELSE l.state END, "
        "l.attempts, coalesce(l.last_reply, '') || CASE WHEN l.postponed AND l.next_attempt_at IS NOT NULL "
        "THEN ' (until ' || l.next_attempt_at || ')' ELSE '' END, l.updated_at "
        "FROM (SELECT *, state IN ('queued', 'deferred') AND last_reply LIKE 'postponed:%' AS postponed "
        "FROM ledger WHERE workflow = ?) l LEFT JOIN contacts c ON c.id = l.contact_id "
        "WHERE l.state IN ('failed', 'uncertain', 'skipped', 'deferred') OR l.postponed "
        "ORDER BY l.updated_at DESC, l.id DESC LIMIT ?",
        (workflow, limit),
    )
    return [Failure(*row) for row in rows]


@dataclass(frozen=True)
class RunStory:
    """One run as a timeline tells it."""

    history: list[tuple[str, str, str]]
    """(step, at, result) of each step it went through, in the order they were written."""
    sends: dict[str, tuple[str, str | None, str | None]]
    """Its messages by step: (state, sent_at, last_reply)."""
    ended_at: str | None
    outcome: str | None


def run_story(db: StateDatabase, run_id: int) -> RunStory:
    sends = {
        str(step): (str(state), sent_at, reply)
        for step, state, sent_at, reply in db.conn.execute(
            "SELECT stage, state, sent_at, last_reply FROM ledger WHERE source = ? AND workflow IS NOT NULL",
            (str(run_id),),
        )
    }
    history = db.conn.execute(
        "SELECT step, at, result FROM workflow_steps WHERE run_id = ? ORDER BY rowid", (run_id,)
    ).fetchall()
    ended_at, outcome = db.conn.execute(
        "SELECT ended_at, outcome FROM workflow_runs WHERE id = ?", (run_id,)
    ).fetchone()
    return RunStory([(str(s), str(at), str(r)) for s, at, r in history], sends, ended_at, outcome)


def last_sent(db: StateDatabase, step: str) -> int | None:
    """The ledger id of the last workflow message of `step` that was sent (the one a test's contact opens)."""
    row = db.conn.execute(
        "SELECT id FROM ledger WHERE workflow IS NOT NULL AND stage = ? AND state = 'sent' ORDER BY id DESC", (step,)
    ).fetchone()
    return None if row is None else int(row[0])
