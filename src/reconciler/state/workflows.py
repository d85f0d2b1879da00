"""Workflows as applied, and their runs: who is on which step, since when, and what each step did.

A workflow's stored record (`StoredWorkflow`) is what its runs work from: the steps, each send step's content and
the segments its conditions name, as the last good revision said them. `apply` writes it; the runner reads it.
A run is one contact on one workflow (with a key, such as an order id, when the trigger names one); it walks the
steps and every move it makes is written together with the step's actions in the runner's transaction.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict

from reconciler.segments import Sql, json_path
from reconciler.spec.documents import Segment
from reconciler.spec.workflow import Workflow
from reconciler.state.contacts import tag_statement
from reconciler.state.content import MessageContent
from reconciler.state.db import get_meta, set_meta, write
from reconciler.state.postgres import StateDatabase


class StoredWorkflow(BaseModel):
    """Everything a workflow's runs need, as applied: its document, the content of each send step (by step key)
    and the segments its trigger and conditions refer to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    workflow: Workflow
    contents: dict[str, MessageContent]
    segments: dict[str, Segment] = {}
    list_name: str | None = None
    """The list its messages are sent for (None: none, for a transactional workflow)."""

    @property
    def transactional(self) -> bool:
        return self.workflow.category == "transactional"


def save_workflow(db: StateDatabase, stored: StoredWorkflow, content_hash: str, *, at: str) -> None:
    """The one writer of a workflow's record (apply). Its active runs are looked at again on the next pass: a wait
    that was shortened may be over already (waits count from when the run reached the step)."""
    workflow = stored.workflow
    db.conn.execute(
        "INSERT INTO workflows(name, spec, content_hash, runtime) VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE "
        "SET spec = excluded.spec, content_hash = excluded.content_hash, runtime = excluded.runtime, removed_at = NULL",
        (workflow.name, workflow.model_dump_json(by_alias=True), content_hash, stored.model_dump_json(by_alias=True)),
    )
    db.conn.execute(
        "UPDATE workflow_runs SET due_at = ? WHERE workflow = ? AND state = 'active' AND due_at > ?",
        (at, workflow.name, at),
    )
    cursor(db, "consent", "consent")  # the first workflow applied: runs start with what happens from now on
    cursor(db, "events", "events")


def remove_workflow(db: StateDatabase, name: str, *, at: str) -> None:
    db.conn.execute("UPDATE workflows SET removed_at = ? WHERE name = ?", (at, name))


def load_workflows(db: StateDatabase) -> dict[str, StoredWorkflow]:
    """The one reader: every workflow as applied and not removed (a record from before workflows ran, without
    stored content, is left out until the next apply writes it)."""
    return {
        name: StoredWorkflow.model_validate_json(runtime)
        for name, runtime in db.conn.execute(
            "SELECT name, runtime FROM workflows WHERE removed_at IS NULL AND runtime IS NOT NULL ORDER BY name"
        )
    }


def stored_list(db: StateDatabase, workflow: str) -> str | None:
    """The list a workflow's messages are sent for, from its record (removed or not)."""
    row = db.conn.execute("SELECT runtime FROM workflows WHERE name = ?", (workflow,)).fetchone()
    if row is None or row[0] is None:
        return None
    return StoredWorkflow.model_validate_json(row[0]).list_name


# --- runs ----------------------------------------------------------------------------------------------------


class Run(NamedTuple):
    """An active run as the runner reads it (a tuple: the runner makes a thousand of them per batch)."""

    id: int
    workflow: str
    contact_id: int
    key: str
    list_name: str | None
    step: str
    entered_at: str
    started_at: str


_RUN_COLUMNS = "id, workflow, contact_id, key, list, step, entered_at, started_at"


def due_run_ids(db: StateDatabase, workflows: list[str], *, now: str) -> list[int]:
    """The ids of the active runs of `workflows` due at `now`, in order (read once per pass: paging through the
    due-time index by id would read it again for every page)."""
    rows = db.conn.execute(
        "SELECT id FROM workflow_runs WHERE state = 'active' AND due_at <= ? "
        "AND workflow IN (SELECT value FROM json_each(?)) AND contact_id IS NOT NULL ORDER BY id",
        (now, json.dumps(workflows)),
    )
    return [int(row[0]) for row in rows]


def runs_by_id(db: StateDatabase, ids: list[int], *, now: str) -> list[Run]:
    """Those of the runs `ids` that are still active and due (another process may have moved them meanwhile)."""
    rows = db.conn.execute(
        f"SELECT {_RUN_COLUMNS} FROM workflow_runs WHERE id IN (SELECT value FROM json_each(?)) "
        "AND state = 'active' AND due_at <= ? ORDER BY id",
        (json.dumps(ids), now),
    )
    return [Run(*row) for row in rows]


def start_run(
    db: StateDatabase,
    workflow: str,
    contact_id: int,
    *,
    key: str,
    list_name: str | None,
    step: str,
    at: str,
    revision: str,
    trigger: str,
) -> int | None:
    """A new active run on its first step, due at once; None when one is already active for the same key."""
    cursor = db.conn.execute(
        "INSERT INTO workflow_runs(workflow, contact_id, key, list, state, step, entered_at, due_at, started_at, "
        "revision, trigger) VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (workflow, contact_id, key, list_name, step, at, at, at, revision, trigger),
    )
    return cursor.lastrowid if cursor.rowcount else None  # type: ignore[union-attr]  # SQLite's until ported


def last_run(db: StateDatabase, workflow: str, contact_id: int, key: str) -> tuple[str, str] | None:
    """(state, started_at) of the contact's latest run of `workflow` with `key`: what re-entry rules look at."""
    row = db.conn.execute(
        "SELECT state, started_at FROM workflow_runs WHERE contact_id = ? AND workflow = ? AND key = ? "
        "ORDER BY started_at DESC, id DESC LIMIT 1",
        (contact_id, workflow, key),
    ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def has_removed_runs(db: StateDatabase) -> bool:
    """Whether a removed workflow still has active runs."""
    removed = [r[0] for r in db.conn.execute("SELECT name FROM workflows WHERE removed_at IS NOT NULL")]
    # one workflow at a time, each on the index of active runs (the IN list went through the due-time index and
    # looked at every active run, a million of them, on every pass, removed workflow or not)
    query = "SELECT EXISTS (SELECT 1 FROM workflow_runs WHERE workflow = ? AND state = 'active')"
    return any(db.conn.execute(query, (name,)).fetchone()[0] for name in removed)


def end_removed(db: StateDatabase, *, at: str) -> int:
    """End the active runs of workflows removed from the spec, and skip their waiting messages (history stays)."""
    removed = "(SELECT name FROM workflows WHERE removed_at IS NOT NULL)"
    db.conn.execute(
        "UPDATE ledger SET state = 'skipped', last_reply = 'not sent: the workflow was removed', updated_at = ? "
        f"WHERE workflow IN {removed} AND state IN ('queued', 'deferred')",
        (at,),
    )
    return db.conn.execute(
        "UPDATE workflow_runs SET state = 'ended', outcome = 'ended: the workflow was removed', ended_at = ?, "
        f"due_at = NULL WHERE state = 'active' AND workflow IN {removed}",
        (at,),
    ).rowcount


def exit_runs(db: StateDatabase, workflow: str, contact_id: int, *, event: str, at: str) -> int:
    """End a contact's active runs of `workflow` early (their exit event arrived), and skip the workflow's
    messages to them that still wait (held for the morning or by the cap, or retrying): a purchase stops the
    cart reminder that was due at 08:00 too. Returns the runs ended."""
    skip_waiting(db, workflow, contact_id, event=event, at=at)
    return db.conn.execute(
        "UPDATE workflow_runs SET state = 'exited', outcome = ?, ended_at = ?, due_at = NULL "
        "WHERE workflow = ? AND contact_id = ? AND state = 'active'",
        (f"exited: {event}", at, workflow, contact_id),
    ).rowcount


def skip_waiting(db: StateDatabase, workflow: str, contact_id: int, *, event: str, at: str) -> None:
    """The workflow's messages to the contact that have not gone yet are skipped: their exit event came."""
    db.conn.execute(
        "UPDATE ledger SET state = 'skipped', last_reply = ?, updated_at = ? "
        "WHERE workflow = ? AND contact_id = ? AND state IN ('queued', 'deferred')",
        (f"not sent: the run exited ({event}) before the message went out", at, workflow, contact_id),
    )


_MOVE = "UPDATE workflow_runs SET step = ?, entered_at = ?, due_at = ? WHERE id = ? AND state = 'active'"
_FINISH = (
    "UPDATE workflow_runs SET step = ?, state = ?, outcome = ?, ended_at = ?, due_at = NULL WHERE id = ? "
    "AND state = 'active'"
)
_LOG_STEP = "INSERT INTO workflow_steps(run_id, step, at, result) VALUES (?, ?, ?, ?)"
_QUEUE_SEND = (
    "INSERT INTO ledger(source_kind, source, stage, workflow, contact_id, state, due_at, content_hash, revision, "
    "created_at, updated_at) VALUES ('workflow', ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)


class StepWrites:
    """The writes of a batch of runs' steps, inside the runner's transaction: each kept until `flush`, which runs
    them as one `executemany` per statement (a statement per run and step cost more than the work it did). The
    writes to one table run in the order they were made (a second statement for a table flushes the first), and
    the runner flushes before anything it does reads or writes the tables these write (contacts, workflow_runs,
    workflow_steps, ledger) in any other way, and before its transaction ends: what commits, and what every read
    sees, is what one statement per write would have made."""

    def __init__(self, db: StateDatabase) -> None:
        self.db = db
        self._rows: dict[str, list[tuple[object, ...]]] = {}
        self._tables: dict[str, str] = {}
        self._tag_statements: dict[bool, str] = {}

    def move(self, run_id: int, *, step: str, entered_at: str, due_at: str) -> None:
        """The run waits on `step` (entered at `entered_at`) until `due_at`."""
        self._add("workflow_runs", _MOVE, (step, entered_at, due_at, run_id))

    def finish(self, run_id: int, *, step: str, state: str, outcome: str, at: str) -> None:
        """A run is over: completed, exited (at an `exit` step, or its exit event came) or ended (its step or
        workflow was removed)."""
        self._add("workflow_runs", _FINISH, (step, state, outcome, at, run_id))

    def log_step(self, run_id: int, step: str, *, at: str, result: str) -> None:
        self._add("workflow_steps", _LOG_STEP, (run_id, step, at, result))

    def queue_send(self, run: Run, step: str, *, content_hash: str, revision: str, at: str) -> None:
        """The ledger row of a run's send step (its source is the run, its stage the step): created once, whatever
        happens after (a row that exists already stays as it is); the dispatcher sends it like every message."""
        values = (str(run.id), step, run.workflow, run.contact_id, at, content_hash, revision, at, at)
        self._add("ledger", _QUEUE_SEND, values)

    def tag(self, contact_id: int, tag: str, *, present: bool, at: str) -> None:
        """`contacts.change_tag`, in the batch."""
        statement = self._tag_statements.get(present)
        if statement is None:
            statement = self._tag_statements[present] = tag_statement(self.db, present=present)
        self._add("contacts", statement, (tag, at, contact_id))

    def flush(self) -> None:
        """Run every write kept so far."""
        for statement, rows in self._rows.items():
            self.db.conn.executemany(statement, rows)
        self._rows.clear()
        self._tables.clear()

    def _add(self, table: str, statement: str, values: tuple[object, ...]) -> None:
        rows = self._rows.get(statement)
        if rows is None:
            if self._tables.get(table, statement) != statement:
                self.flush()  # another statement on the same table: it runs first
            self._tables[table] = statement
            rows = self._rows[statement] = []
        rows.append(values)


def engaged(db: StateDatabase, run_id: int, step: str, action: str) -> bool:
    """Did a person (not a proxy or scanner) open (or click: a click is an open with images off) or click the
    message of this run's send step?"""
    actions = ("opened", "clicked") if action == "opened" else ("clicked",)
    row = db.conn.execute(
        "SELECT EXISTS (SELECT 1 FROM ledger l JOIN engagement e ON e.ledger_id = l.id WHERE l.source_kind = "
        "'workflow' AND l.source = ? AND l.stage = ? AND e.machine = 0 AND e.action IN (SELECT value FROM "
        "json_each(?)))",
        (str(run_id), step, json.dumps(actions)),
    ).fetchone()
    return bool(row[0])


def event_matches(db: StateDatabase, event_id: int, test: Sql) -> bool:
    """Whether the stored event meets a compiled test of its properties (`e` is the event)."""
    row = db.conn.execute(f"SELECT {test.text} FROM events e WHERE e.id = ?", (*test.params, event_id)).fetchone()
    return bool(row and row[0])


def had_event(db: StateDatabase, contact_id: int, event: str, *, since: str) -> bool:
    """An event of this type for the contact that occurred at or after `since`."""
    row = db.conn.execute(
        "SELECT EXISTS (SELECT 1 FROM events WHERE contact_id = ? AND type = ? AND occurred_at >= ?)",
        (contact_id, event, since),
    ).fetchone()
    return bool(row[0])


# --- what starts runs ----------------------------------------------------------------------------------------


def cursor(db: StateDatabase, name: str, table: str) -> int:
    """How far the runner has read `table` (consent or events); the first time, its end: workflows start with
    what happens from now on, not with the history before them."""
    value = get_meta(db, f"workflows.cursor.{name}")
    if value is not None:
        return int(value)
    row = db.conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()
    set_meta(db, f"workflows.cursor.{name}", str(row[0]))
    return int(row[0])


def forget_cursors(db: StateDatabase) -> None:
    """No workflow is applied: the next one starts from its own beginning, not from where an old one read."""
    if db.conn.execute("SELECT EXISTS (SELECT 1 FROM meta WHERE key LIKE 'workflows.cursor.%')").fetchone()[0]:
        with write(db):
            db.conn.execute("DELETE FROM meta WHERE key LIKE 'workflows.cursor.%'")


def has_after(db: StateDatabase, table: str, after: int) -> bool:
    """Whether `table` (consent or events) has rows past `after`."""
    query = f"SELECT EXISTS (SELECT 1 FROM {table} WHERE id > ?)"
    return bool(db.conn.execute(query, (after,)).fetchone()[0])


def set_cursor(db: StateDatabase, name: str, value: int) -> None:
    set_meta(db, f"workflows.cursor.{name}", str(value))


@dataclass(frozen=True)
class Subscribed:
    """A subscription that became active: who, which list, and the consent record that says so."""

    consent_id: int
    contact_id: int
    list_name: str


def new_subscriptions(db: StateDatabase, *, after: int, limit: int) -> tuple[list[Subscribed], int, bool]:
    """Consent records after `after` that subscribe, resubscribe or confirm, whose subscription is active now
    (a double opt-in subscription counts from its confirmation); with how far that read, and whether it read to
    the end (then up to the newest record of any kind, read in the caller's transaction)."""
    rows = db.conn.execute(
        "SELECT k.id, k.contact_id, k.list, s.status FROM consent k LEFT JOIN subscriptions s ON "
        "s.contact_id = k.contact_id AND s.list = k.list WHERE k.id > ? AND k.list IS NOT NULL "
        "AND k.action IN ('subscribe', 'resubscribe', 'confirm', 'preconfirmed') ORDER BY k.id LIMIT ?",
        (after, limit),
    ).fetchall()
    done = len(rows) < limit
    last = last_id(db, "consent") if done else rows[-1][0]
    return [Subscribed(r[0], r[1], r[2]) for r in rows if r[3] == "subscribed"], last, done


@dataclass(frozen=True)
class NewEvent:
    id: int
    contact_id: int
    type: str
    occurred_at: str
    properties: dict[str, Any]


def new_events(db: StateDatabase, *, after: int, limit: int) -> list[NewEvent]:
    rows = db.conn.execute(
        "SELECT id, contact_id, type, occurred_at, properties FROM events WHERE id > ? ORDER BY id LIMIT ?",
        (after, limit),
    ).fetchall()
    return [NewEvent(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]


# --- what status and plan show -------------------------------------------------------------------------------


def active_by_step(db: StateDatabase) -> dict[str, dict[str, int]]:
    """Active runs per workflow and step."""
    found: dict[str, dict[str, int]] = defaultdict(dict)
    for workflow, step, count in db.conn.execute(
        "SELECT workflow, step, count(*) FROM workflow_runs WHERE state = 'active' GROUP BY workflow, step"
    ):
        found[workflow][step] = count
    return dict(found)


def last_id(db: StateDatabase, table: str) -> int:
    """The newest row of `table` (consent or events)."""
    return int(db.conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0])


def next_due(db: StateDatabase) -> datetime | None:
    """When the next active run of an active workflow is due (the daemon wakes up then; a paused workflow's runs
    wake nobody)."""
    row = db.conn.execute(
        "SELECT min(r.due_at) FROM workflow_runs r JOIN workflows w ON w.name = r.workflow WHERE r.state = 'active' "
        "AND w.removed_at IS NULL AND json_extract(w.spec, '$.status') = 'active'"
    ).fetchone()
    return datetime.fromisoformat(row[0]) if row and row[0] else None


def date_candidates(db: StateDatabase, field: str, month_days: list[str]) -> list[tuple[int, str, str | None]]:
    """Contacts whose date field falls on one of `month_days` ("MM-DD"): (id, the stored date, time zone)."""
    path = json_path(field)
    rows = db.conn.execute(
        "SELECT id, json_extract(fields, ?), timezone FROM contacts WHERE json_type(fields, ?) = 'text' "
        "AND substr(json_extract(fields, ?), 6, 5) IN (SELECT value FROM json_each(?))",
        (path, path, path, json.dumps(month_days)),
    )
    return [(int(r[0]), str(r[1]), r[2]) for r in rows]


def segment_members(db: StateDatabase, workflow: str, definition: str) -> tuple[set[int], bool]:
    """Who was in a segment_entered workflow's segment at its last evaluation, and whether there was one of this
    `definition` (a digest of the segment as the trigger reads it): a trigger pointed at another segment, or a
    segment whose conditions changed, starts over like a new workflow, so it does not flood everyone it now
    takes in."""
    seen = get_meta(db, f"workflows.segment.{workflow}") == definition
    rows = db.conn.execute("SELECT contact_id FROM workflow_segment_members WHERE workflow = ?", (workflow,))
    return {int(r[0]) for r in rows}, seen


def note_segment_members(
    db: StateDatabase, workflow: str, definition: str, *, entered: set[int], left: set[int]
) -> None:
    """Inside the caller's write: the members after an evaluation."""
    db.conn.executemany(
        "DELETE FROM workflow_segment_members WHERE workflow = ? AND contact_id = ?", [(workflow, c) for c in left]
    )
    db.conn.executemany(
        "INSERT OR IGNORE INTO workflow_segment_members(workflow, contact_id) VALUES (?, ?)",
        [(workflow, c) for c in entered],
    )
    set_meta(db, f"workflows.segment.{workflow}", definition)
