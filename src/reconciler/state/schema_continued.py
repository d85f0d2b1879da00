"""The state database's schema, continued from `state/schema.py` (same rules: append only, one history for both
engines, DDL in SQLite's words). Imported at the end of that module, so these migrations come after its own."""

from __future__ import annotations

from reconciler.jsonsql import TEXT_ARRAY
from reconciler.state import (
    schema,  # noqa: F401 (its migrations first, whichever module is imported first)
    typed_values,
)
from reconciler.state.migrating import migration, run_script
from reconciler.state.postgres import PostgresDatabase, StateDatabase


@migration("0015_several_daemons")
def _several_daemons(db: StateDatabase) -> None:
    """Several daemons on one database: each process and its heartbeat; the lease (one holder at a time applies,
    starts and runs workflows; `generation` fences a holder that lost it); a page of due rows reserved by the
    dispatcher sending it; the rate limits of each transport, shared by every process sending through it."""
    run_script(
        db,
        """
        CREATE TABLE processes (
            id TEXT PRIMARY KEY,                      -- host:pid:random, one per running daemon
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            role TEXT NOT NULL,
            started_at TEXT NOT NULL,
            heartbeat_at TEXT NOT NULL,
            status TEXT NOT NULL                      -- its health at its last beat: ok | degraded
        ) WITHOUT ROWID;
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,                    -- 'reconcile'
            holder TEXT,                              -- a process id; NULL when free
            host TEXT, pid INTEGER,
            generation INTEGER NOT NULL,              -- one more at every change of holder
            expires_at REAL NOT NULL,                 -- seconds since the epoch, by the holder's clock
            taken_at TEXT NOT NULL,
            renewed_at TEXT NOT NULL
        ) WITHOUT ROWID;
        ALTER TABLE ledger ADD COLUMN reserved_by TEXT;      -- the dispatcher that took this row into its page
        ALTER TABLE ledger ADD COLUMN reserved_until TEXT;
        CREATE INDEX ledger_reserved ON ledger(reserved_by) WHERE reserved_by IS NOT NULL;
        CREATE TABLE send_rates (
            transport TEXT NOT NULL,
            period REAL NOT NULL,                     -- the bucket's period in seconds: 1, 60, 3600, 86400
            tokens REAL NOT NULL,
            at REAL NOT NULL,                         -- when `tokens` was counted, seconds since the epoch
            PRIMARY KEY (transport, period)
        ) WITHOUT ROWID;
        """,
    )


@migration("0016_ledger_waiting")
def _ledger_waiting(db: StateDatabase) -> None:
    """The rows still to send, indexed apart from those sent: the next page of a message definition's due rows is
    found by descending to the last id read, in id order, without passing over (or sorting) every other waiting row
    of the audience and every row already sent. Without it a page read the whole waiting remainder of a campaign
    and sorted it (1.4 s per page at the start of a 1,000,000-recipient send), so sending slowed with the audience;
    a workflow step's page read every message the step ever sent. A claimed row leaves these indexes, so they hold
    only what is waiting, however long the ledger's history."""
    run_script(
        db,
        """
        CREATE INDEX ledger_waiting ON ledger(source_kind, source, stage, id) WHERE state IN ('queued', 'deferred');
        CREATE INDEX ledger_waiting_steps ON ledger(workflow, stage, id)
            WHERE state IN ('queued', 'deferred') AND workflow IS NOT NULL;
        """,
    )


@migration("0017_typed_values")
def _typed_values(db: StateDatabase) -> None:
    """On PostgreSQL, contact fields and event properties typed beside their JSON (`contact_values`,
    `event_values`), written by triggers and filled here from every contact and event: segment conditions read
    indexed columns instead of parsing each contact's jsonb (state/typed_values.py). On SQLite, nothing: its
    conditions read the JSON, faster there, and imports write nothing more."""
    typed_values.create(db)


@migration("0018_web_limits")
def _web_limits(db: StateDatabase) -> None:
    """The web service's rate limits (sign-in attempts, wrong tokens, subscribe-form posts) and the dashboard
    sessions signed out, kept where every daemon serving HTTP from one PostgreSQL database sees them
    (state/web_limits.py). Made on SQLite too, one schema for both engines (`state migrate` copies table for table),
    where they stay empty: one daemon serves from a file, and keeps them in memory."""
    run_script(
        db,
        """
        CREATE TABLE web_limits (
            name TEXT NOT NULL,                       -- the limit: sign_ins, wrong_tokens, per_ip, ...
            key TEXT NOT NULL,                        -- what it counts for: a client address, an email address
            events TEXT NOT NULL,                     -- JSON array: the times of the events in the window
            expires_at REAL NOT NULL,                 -- when the last of them leaves it (seconds since the epoch)
            PRIMARY KEY (name, key)
        ) WITHOUT ROWID;
        CREATE INDEX web_limits_expiry ON web_limits(expires_at);
        CREATE TABLE signed_out (
            session TEXT PRIMARY KEY,                 -- SHA-256 of the session cookie, never the cookie itself
            expires_at REAL NOT NULL                  -- when the session would have expired anyway
        ) WITHOUT ROWID;
        CREATE INDEX signed_out_expiry ON signed_out(expires_at);
        """,
    )


@migration("0019_value_statistics")
def _value_statistics(db: StateDatabase) -> None:
    """On PostgreSQL, statistics of how a typed row's name, kind and value go together, so that the planner
    estimates a condition on a field as it is (state/typed_values.py, `STATISTICS`). On SQLite, nothing."""
    typed_values.add_statistics(db)


@migration("0020_text_array")
def _text_array(db: StateDatabase) -> None:
    """On PostgreSQL, `json_text_array(jsonb)`: the strings of a JSON array as text[], immutable, so that a list
    condition (`= ANY(json_text_array(?))`) is planned with the names it holds (`jsonsql.PostgresDialect.among`).
    On SQLite, nothing (its conditions read the JSON with json_each)."""
    if isinstance(db, PostgresDatabase):
        db.conn.run_script(
            f"CREATE FUNCTION {TEXT_ARRAY}(jsonb) RETURNS text[] LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE "  # noqa: S608
            "AS $$ SELECT coalesce(array_agg(e), '{}') FROM jsonb_array_elements_text($1) AS e $$"
        )
