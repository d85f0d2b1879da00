"""The first migration's tables (0001_initial), in SQLite's words as `state/schema.py` runs them on both engines,
kept apart because they are most of the schema's text. Released: never edited (later migrations change them); the
text is indented as it always was, since SQLite keeps each table's statement as written.
"""

INITIAL = """
        -- One row per person. `email` is normalised (trimmed, lowercased); `email_hash` joins suppressions.
        CREATE TABLE contacts (
            id INTEGER PRIMARY KEY,
            email TEXT NOT NULL UNIQUE,
            email_hash TEXT NOT NULL UNIQUE,
            first_name TEXT, last_name TEXT, timezone TEXT, locale TEXT, country TEXT,
            tags TEXT NOT NULL DEFAULT '[]',          -- JSON array of strings
            fields TEXT NOT NULL DEFAULT '{}',        -- JSON object: custom fields, typed per Field
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            import_id INTEGER                         -- the import that last touched the row
        );

        -- Who is on which list, now. The history is in `consent`.
        CREATE TABLE subscriptions (
            contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
            list TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('subscribed', 'pending', 'unsubscribed')),
            updated_at TEXT NOT NULL,
            PRIMARY KEY (contact_id, list)
        ) WITHOUT ROWID;
        CREATE INDEX subscriptions_by_list ON subscriptions(list, status, contact_id);

        -- Append-only proof of consent: every subscribe, confirm and unsubscribe, with its source.
        CREATE TABLE consent (
            id INTEGER PRIMARY KEY,
            contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
            list TEXT,                                -- NULL: every list (unsubscribe from everything)
            action TEXT NOT NULL,                     -- subscribe | confirm | unsubscribe | resubscribe
            at TEXT NOT NULL,
            source TEXT NOT NULL,                     -- import:<file> | api | form | preferences | one-click ...
            text TEXT,                                -- the consent wording shown, or its version
            ip TEXT
        );
        CREATE INDEX consent_by_contact ON consent(contact_id, id);

        -- People we must not mail, by the hash of their address so an erased person stays out of re-imports.
        CREATE TABLE suppressions (
            email_hash TEXT PRIMARY KEY,
            reason TEXT NOT NULL CHECK (reason IN ('bounced', 'complained', 'unsubscribed', 'erased')),
            at TEXT NOT NULL,
            detail TEXT
        ) WITHOUT ROWID;

        -- Custom events (API, imports) that feed segments, workflows and goals.
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            contact_id INTEGER NOT NULL REFERENCES contacts(id) ON DELETE CASCADE,
            type TEXT NOT NULL,
            occurred_at TEXT NOT NULL,
            properties TEXT NOT NULL DEFAULT '{}',
            external_id TEXT UNIQUE
        );
        CREATE INDEX events_by_contact ON events(contact_id, type, occurred_at);
        CREATE INDEX events_by_type ON events(type, occurred_at);

        -- The send ledger: one row per message, created before it is sent; the unit of progress.
        CREATE TABLE ledger (
            id INTEGER PRIMARY KEY,
            source_kind TEXT NOT NULL CHECK (source_kind IN ('campaign', 'workflow')),
            source TEXT NOT NULL,                     -- campaign name, or workflow run id
            stage TEXT NOT NULL DEFAULT '',           -- stage name ('' = the first message), or workflow step id
            contact_id INTEGER REFERENCES contacts(id) ON DELETE SET NULL,
            state TEXT NOT NULL CHECK (state IN
                ('queued', 'sending', 'sent', 'deferred', 'uncertain', 'failed', 'skipped')),
            due_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,
            message_id TEXT,
            content_hash TEXT NOT NULL,
            revision TEXT NOT NULL,
            last_reply TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            UNIQUE (source_kind, source, stage, contact_id)
        );
        CREATE INDEX ledger_due ON ledger(state, due_at);

        -- Opens, clicks, bounces, complaints and unsubscribes, per message.
        CREATE TABLE engagement (
            id INTEGER PRIMARY KEY,
            ledger_id INTEGER REFERENCES ledger(id) ON DELETE SET NULL,
            contact_id INTEGER REFERENCES contacts(id) ON DELETE CASCADE,
            source_kind TEXT, source TEXT, stage TEXT,
            action TEXT NOT NULL CHECK (action IN ('opened', 'clicked', 'bounced', 'complained', 'unsubscribed')),
            machine INTEGER NOT NULL DEFAULT 0,       -- 1: a proxy, prefetcher or scanner, not a person
            at TEXT NOT NULL,
            detail TEXT
        );
        CREATE INDEX engagement_by_contact ON engagement(contact_id, action, source_kind, source);

        -- Lists, fields and workflows as last applied (so the web pages and imports work between revisions).
        CREATE TABLE lists (
            name TEXT PRIMARY KEY,
            spec TEXT NOT NULL,                       -- JSON of the List document
            removed_at TEXT
        ) WITHOUT ROWID;
        CREATE TABLE fields (
            name TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            removed_at TEXT
        ) WITHOUT ROWID;
        CREATE TABLE workflows (
            name TEXT PRIMARY KEY,
            spec TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            removed_at TEXT
        ) WITHOUT ROWID;

        -- One row per campaign ever applied; never deleted. Condition in Flux's words: ready / reason / message.
        CREATE TABLE campaigns (
            name TEXT PRIMARY KEY,
            status TEXT NOT NULL,                     -- draft scheduled sending sent paused cancelled
            ready INTEGER NOT NULL DEFAULT 1,
            reason TEXT NOT NULL,
            message TEXT NOT NULL,
            path TEXT NOT NULL,                       -- the file it was written in
            spec TEXT NOT NULL,                       -- JSON of the Campaign document as applied
            content TEXT NOT NULL,                    -- JSON: what is sent (subject, flattened templates ...)
            content_hash TEXT NOT NULL,
            start_at TEXT,                            -- UTC; for {local_time, date}: the earliest zone's moment
            confirmed_late INTEGER NOT NULL DEFAULT 0,
            started_at TEXT,
            finished_at TEXT,
            removed_at TEXT,
            recipients INTEGER,                       -- snapshotted at start
            last_attempted_revision TEXT,
            last_applied_revision TEXT,
            updated_at TEXT NOT NULL
        ) WITHOUT ROWID;

        -- Every revision applied, and every action applied (who did what, from which commit).
        CREATE TABLE revisions (
            id INTEGER PRIMARY KEY,
            revision TEXT NOT NULL,
            git_commit TEXT,
            applied_at TEXT NOT NULL,
            actions INTEGER NOT NULL
        );
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            at TEXT NOT NULL,
            revision TEXT,
            actor TEXT NOT NULL,                      -- apply | import | erase | web | api ...
            subject TEXT NOT NULL,                    -- "Campaign black-friday-2026", "contact 123"
            action TEXT NOT NULL,
            detail TEXT
        );

        -- Small facts about the workspace as the daemon saw it: last good revision, last error.
        CREATE TABLE meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE imports (
            id INTEGER PRIMARY KEY,
            file TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            rows INTEGER, created INTEGER, updated INTEGER, rejected INTEGER
        );
        """
