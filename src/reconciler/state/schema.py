"""The state database's schema, as a named set of migrations (sqlite-utils `Migrations`), one history for SQLite
and PostgreSQL.

Migrations only ever append: a released migration is never edited, so every database, however old, reaches the
same schema by applying the ones it lacks. Each runs in a transaction together with its record.

Each is written once for both engines: DDL in SQLite's words (`dialect.to_postgres` gives it PostgreSQL's types),
data work in SQL both accept; where they differ, a branch on `isinstance(db, PostgresDatabase)`, PostgreSQL's side
in state/postgres_schema.py. tests/test_postgres_state.py compares the schemas both engines reach. The history goes
on in state/schema_continued.py; `state/migrating` registers them.
"""

from __future__ import annotations

import datetime
import json

from reconciler.state import postgres_schema, rollups, schema_initial, upgrades
from reconciler.state.migrating import STEPS, migration, migrations
from reconciler.state.migrating import run_script as _run_script
from reconciler.state.postgres import PostgresDatabase, StateDatabase

__all__ = ["STEPS", "migrations"]


@migration("0001_initial")
def _initial(db: StateDatabase) -> None:
    _run_script(db, schema_initial.INITIAL)


@migration("0002_campaign_audience")
def _campaign_audience(db: StateDatabase) -> None:
    """What a campaign's segments meant when it was scheduled: it starts from this, not from the files."""
    _run_script(
        db,
        """
        ALTER TABLE campaigns ADD COLUMN audience TEXT NOT NULL DEFAULT '{}';
        CREATE TABLE plan_counts (
            subject TEXT PRIMARY KEY,                 -- "Segment top-customers", "Campaign black-friday-2026"
            count INTEGER NOT NULL,
            at TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
    )


@migration("0003_segment_indexes")
def _segment_indexes(db: StateDatabase) -> None:
    """Indexes the segment compiler's subqueries read (events by type and time, engagement by action and time), and
    the foreign keys' child columns."""
    _run_script(
        db,
        """
        CREATE INDEX events_by_type_time ON events(type, occurred_at, contact_id);
        DROP INDEX events_by_type;
        CREATE INDEX engagement_by_action ON engagement(action, at, machine, contact_id);
        -- foreign keys point here: without these, deleting one row scans the whole child table
        CREATE INDEX engagement_by_ledger ON engagement(ledger_id);
        CREATE INDEX ledger_by_contact ON ledger(contact_id, state);
        """,
    )


@migration("0004_dispatch")
def _dispatch(db: StateDatabase) -> None:
    """Sending: who holds a ledger row while it is on the wire, when it went, the stages started, and the policy
    rejections a campaign collected."""
    _run_script(
        db,
        """
        ALTER TABLE ledger ADD COLUMN claimed_by TEXT;   -- the dispatcher holding a 'sending' row
        ALTER TABLE ledger ADD COLUMN sent_at TEXT;
        ALTER TABLE ledger ADD COLUMN first_attempt_at TEXT;
        CREATE INDEX ledger_by_source ON ledger(source_kind, source, stage, state);
        CREATE INDEX ledger_sending ON ledger(state, claimed_by) WHERE state = 'sending';
        CREATE TABLE dispatchers (
            id TEXT PRIMARY KEY,                      -- host:pid:random, one per running process
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            heartbeat_at TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE campaign_stages (
            campaign TEXT NOT NULL,
            stage TEXT NOT NULL,
            started_at TEXT NOT NULL,
            recipients INTEGER NOT NULL,
            PRIMARY KEY (campaign, stage)
        ) WITHOUT ROWID;
        ALTER TABLE campaigns ADD COLUMN policy_failures INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE campaigns ADD COLUMN held INTEGER NOT NULL DEFAULT 0;   -- paused by dispatch, needs --confirm
        """,
    )


@migration("0005_subscriber_service")
def _subscriber_service(db: StateDatabase) -> None:
    """The web service: a contact's frequency choice, and provider webhook events seen (redeliveries change nothing)."""
    _run_script(
        db,
        """
        ALTER TABLE contacts ADD COLUMN frequency TEXT;          -- NULL: every message; weekly | monthly
        CREATE TABLE webhook_events (
            provider TEXT NOT NULL,
            event_id TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (provider, event_id)
        ) WITHOUT ROWID;
        CREATE INDEX engagement_by_source ON engagement(source_kind, source, action);
        """,
    )


@migration("0006_typed_records")
def _typed_records(db: StateDatabase) -> None:
    """Stored JSON in the shapes the typed readers expect: list records carry their kind; a campaign's stored
    audience holds its lists and segments beside the segment definitions; the Settings of the last good revision,
    and the last refused revision, are one document each instead of one key per value."""
    if isinstance(db, PostgresDatabase):  # no json_set: the same change, made in Python
        for name, spec in db.conn.execute("SELECT name, spec FROM lists").fetchall():
            spec_text = json.dumps({**json.loads(spec), "kind": "List"})
            db.conn.execute("UPDATE lists SET spec = ? WHERE name = ?", (spec_text, name))
    else:
        db.conn.execute("UPDATE lists SET spec = json_set(spec, '$.kind', 'List')")
    for name, spec_text, audience_text in db.conn.execute("SELECT name, spec, audience FROM campaigns").fetchall():
        audience = json.loads(spec_text).get("audience") or {}
        exclude = audience.get("exclude") or {}
        stored = {
            "lists": audience.get("lists") or [],
            "exclude_lists": exclude.get("lists") or [],
            "segments": audience.get("segments") or [],
            "exclude_segments": exclude.get("segments") or [],
            "definitions": json.loads(audience_text or "{}") or None,
        }
        db.conn.execute("UPDATE campaigns SET audience = ? WHERE name = ?", (json.dumps(stored), name))
    legacy = dict(db.conn.execute("SELECT key, value FROM meta WHERE key LIKE 'settings.%'").fetchall())
    if "settings.public_url" in legacy:
        db.conn.execute(_SET_META, ("settings", upgrades.settings_from_keys(legacy)))
    db.conn.execute("DELETE FROM meta WHERE key LIKE 'settings.%'")
    error = dict(db.conn.execute("SELECT key, value FROM meta WHERE key LIKE 'last_error%'").fetchall())
    if error.get("last_error"):
        old = json.loads(error["last_error"])
        refused = {
            "revision": error.get("last_error_revision") or "",
            "since": error.get("last_error_at") or "",
            "count": old["count"],
            "problems": old["problems"],
        }
        db.conn.execute(_SET_META, ("refused_revision", json.dumps(refused)))
    db.conn.execute("DELETE FROM meta WHERE key LIKE 'last_error%'")


_SET_META = "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
"""SQLite's INSERT OR REPLACE said the way both engines accept (meta has one key and one value)."""


@migration("0007_erased_waiting_rows")
def _erased_waiting_rows(db: StateDatabase) -> None:
    """Waiting messages of contacts erased before this version are skipped, as erasure now does (they could never
    be sent, and a campaign waiting for them never finished)."""
    _run_script(
        db,
        """
        UPDATE ledger SET state = 'skipped', last_reply = 'not sent: the contact was erased'
            WHERE contact_id IS NULL AND state IN ('queued', 'deferred');
        """,
    )


@migration("0008_stored_json")
def _stored_json(db: StateDatabase) -> None:
    """Stored JSON that SQLite cannot read (NaN and Infinity, or Python's repr of a value, which 0.3 let in through
    the API and imports) made every query reading the row fail, so planning and sending stopped. A non-finite number
    becomes null, text that is not JSON at all an empty object (or list); each repaired row is named in the audit
    log. Triggers keep invalid JSON out of these columns from now on, whoever writes it."""
    if isinstance(db, PostgresDatabase):
        db.conn.run_script(postgres_schema.JSON_VALID)  # SQLite's json_valid(), for the queries below
    repaired = upgrades.repair_stored_json(db)
    if repaired:
        db.conn.execute(
            "INSERT INTO audit(at, actor, subject, action, detail) "
            "VALUES (?, 'migration', 'stored JSON', 'repaired', ?)",
            (
                datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                f"{len(repaired)} values SQLite could not read: {', '.join(repaired[:100])}",
            ),
        )
    if isinstance(db, PostgresDatabase):
        db.conn.run_script(postgres_schema.JSON_TRIGGERS)
        return
    _run_script(
        db,
        """
        CREATE TRIGGER contacts_json_insert BEFORE INSERT ON contacts
            WHEN json_valid(NEW.fields) = 0 OR json_valid(NEW.tags) = 0
            BEGIN SELECT RAISE(ABORT, 'contacts.fields or contacts.tags is not valid JSON'); END;
        CREATE TRIGGER contacts_json_update BEFORE UPDATE OF fields, tags ON contacts
            WHEN json_valid(NEW.fields) = 0 OR json_valid(NEW.tags) = 0
            BEGIN SELECT RAISE(ABORT, 'contacts.fields or contacts.tags is not valid JSON'); END;
        CREATE TRIGGER events_json_insert BEFORE INSERT ON events WHEN json_valid(NEW.properties) = 0
            BEGIN SELECT RAISE(ABORT, 'events.properties is not valid JSON'); END;
        CREATE TRIGGER events_json_update BEFORE UPDATE OF properties ON events WHEN json_valid(NEW.properties) = 0
            BEGIN SELECT RAISE(ABORT, 'events.properties is not valid JSON'); END;
        """,
    )


@migration("0009_workflow_runs")
def _workflow_runs(db: StateDatabase) -> None:
    """Workflows that run: one row per run (a contact on a workflow, with an optional key such as an order id), its
    history step by step, the workflow's stored content (so runs work from the last good revision, not the files),
    and the workflow a send belongs to on its ledger row (the row's source is the run id, its stage the step)."""
    _run_script(
        db,
        """
        CREATE TABLE workflow_runs (
            id INTEGER PRIMARY KEY,
            workflow TEXT NOT NULL,
            contact_id INTEGER REFERENCES contacts(id) ON DELETE CASCADE,
            key TEXT NOT NULL DEFAULT '',             -- the trigger's key property (one run per order id), or ''
            list TEXT,                                -- the list its messages are sent for
            state TEXT NOT NULL CHECK (state IN ('active', 'completed', 'exited', 'ended')),
            step TEXT NOT NULL DEFAULT '',            -- the step it is on (its id, or #position)
            entered_at TEXT NOT NULL,                 -- when it entered that step: waits count from here
            due_at TEXT,                              -- when it is looked at next (NULL once it is over)
            started_at TEXT NOT NULL,
            revision TEXT NOT NULL,                   -- the revision it started on
            trigger TEXT NOT NULL,                    -- what started it: "consent 17", "event 42", ...
            ended_at TEXT,
            outcome TEXT                              -- why it is over, in words
        );
        CREATE INDEX workflow_runs_due ON workflow_runs(state, due_at);
        CREATE INDEX workflow_runs_by_contact ON workflow_runs(contact_id, workflow, key, started_at);
        CREATE UNIQUE INDEX workflow_runs_one_active ON workflow_runs(workflow, contact_id, key)
            WHERE state = 'active';
        CREATE TABLE workflow_steps (
            run_id INTEGER NOT NULL REFERENCES workflow_runs(id) ON DELETE CASCADE,
            step TEXT NOT NULL,
            at TEXT NOT NULL,
            result TEXT NOT NULL                      -- sent, waited, then, else, timed out, tagged ...
        );
        CREATE INDEX workflow_steps_by_run ON workflow_steps(run_id, at);
        -- Who was in a segment_entered workflow's segment at its last evaluation: the next one starts runs for
        -- those who are new.
        CREATE TABLE workflow_segment_members (
            workflow TEXT NOT NULL,
            contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
            PRIMARY KEY (workflow, contact_id)
        ) WITHOUT ROWID;
        ALTER TABLE workflows ADD COLUMN runtime TEXT;   -- JSON: StoredWorkflow
        ALTER TABLE ledger ADD COLUMN workflow TEXT;     -- the workflow of a run's send (source is the run id)
        CREATE INDEX ledger_by_workflow ON ledger(workflow, stage, id) WHERE workflow IS NOT NULL;
        """,
    )


@migration("0010_report_counts")
def _report_counts(db: StateDatabase) -> None:
    """Counters for reports, kept as facts are recorded (state/rollups.py), counted once from the facts here."""
    _run_script(
        db,
        """
        CREATE TABLE report_counts (
            kind TEXT NOT NULL, name TEXT NOT NULL, stage TEXT NOT NULL, metric TEXT NOT NULL,
            value REAL NOT NULL DEFAULT 0,
            PRIMARY KEY (kind, name, stage, metric)
        ) WITHOUT ROWID;
        CREATE TABLE report_people (
            kind TEXT NOT NULL, name TEXT NOT NULL, stage TEXT NOT NULL, metric TEXT NOT NULL,
            contact_id INTEGER NOT NULL,
            PRIMARY KEY (kind, name, stage, metric, contact_id)
        ) WITHOUT ROWID;
        CREATE TABLE report_hours (
            kind TEXT NOT NULL, name TEXT NOT NULL, hour TEXT NOT NULL, opens INTEGER NOT NULL DEFAULT 0,
            clicks INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (kind, name, hour)
        ) WITHOUT ROWID;
        CREATE TABLE report_links (
            kind TEXT NOT NULL, name TEXT NOT NULL, url TEXT NOT NULL, clicks INTEGER NOT NULL DEFAULT 0,
            people INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (kind, name, url)
        ) WITHOUT ROWID;
        """,
    )  # counted from the facts by the next migration, which adds the column the counting reads


@migration("0011_engagement_country")
def _engagement_country(db: StateDatabase) -> None:
    """The country an open or click came from, when a GeoIP database is configured (never the address); the report
    counters are counted again from the facts (once, on the first start after an upgrade)."""
    _run_script(db, "ALTER TABLE engagement ADD COLUMN country TEXT;")
    rollups.count_all(db)


@migration("0012_campaign_not_applied")
def _campaign_not_applied(db: StateDatabase) -> None:
    """What the files say about a campaign that is history (sent, or cancelled while sending) and was not applied."""
    db.conn.execute("ALTER TABLE campaigns ADD COLUMN not_applied TEXT")


@migration("0013_ledger_marketing")
def _ledger_marketing(db: StateDatabase) -> None:
    """Whether a message was marketing (1) or a receipt or opt-in confirmation (0), written at its claim: only marketing
    counts toward the frequency cap and choice. Older rows keep NULL, as marketing (opt-in confirmations: 0)."""
    db.conn.execute("ALTER TABLE ledger ADD COLUMN marketing INTEGER")
    db.conn.execute("UPDATE ledger SET marketing = 0 WHERE source_kind = 'workflow' AND source = 'double-opt-in'")


@migration("0014_workflow_step_ids")
def _workflow_step_ids(db: StateDatabase) -> None:
    """A run's steps get an id, in the order they were written, so its history reads in that order on PostgreSQL
    too (SQLite's rowid, which gave the order, becomes the column; PostgreSQL numbers the rows it has)."""
    if isinstance(db, PostgresDatabase):
        db.conn.execute("ALTER TABLE workflow_steps ADD COLUMN id INTEGER PRIMARY KEY")
        return
    _run_script(  # SQLite adds no primary key to a table: a copy takes the old rowids as ids
        db,
        """
        CREATE TABLE workflow_steps_new (
            run_id INTEGER NOT NULL REFERENCES workflow_runs(id) ON DELETE CASCADE,
            step TEXT NOT NULL, at TEXT NOT NULL, result TEXT NOT NULL, id INTEGER PRIMARY KEY
        );
        INSERT INTO workflow_steps_new(run_id, step, at, result, id) SELECT run_id, step, at, result, rowid
            FROM workflow_steps ORDER BY rowid;
        DROP TABLE workflow_steps;
        ALTER TABLE workflow_steps_new RENAME TO workflow_steps;
        CREATE INDEX workflow_steps_by_run ON workflow_steps(run_id, at);
        """,
    )


# The history goes on in state/schema_continued.py (a module stays under 500 lines), imported last so that its
# migrations come after these ones.
from reconciler.state import schema_continued  # noqa: E402, F401
