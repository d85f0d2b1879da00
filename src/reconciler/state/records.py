"""Records of lists, fields and workflows as applied, and of the revisions themselves."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from reconciler.spec.documents import CustomField, MailingList
from reconciler.state.db import get_meta, set_meta, write
from reconciler.state.portable import differs
from reconciler.state.postgres import StateDatabase


@dataclass(frozen=True)
class ListRecord:
    """A List document as last applied; a removed list keeps its record (a running campaign may still use it)."""

    document: MailingList
    removed_at: str | None = None


def upsert_list(db: StateDatabase, document: MailingList) -> None:
    db.conn.execute(
        "INSERT INTO lists(name, spec) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, removed_at = NULL",
        (document.name, document.model_dump_json(by_alias=True)),
    )


def remove_list(db: StateDatabase, name: str, *, at: str) -> None:
    db.conn.execute("UPDATE lists SET removed_at = ? WHERE name = ?", (at, name))


def upsert_field(db: StateDatabase, document: CustomField) -> None:
    db.conn.execute(
        "INSERT INTO fields(name, type) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET type = excluded.type, removed_at = NULL",
        (document.name, document.type),
    )


def remove_field(db: StateDatabase, name: str, *, at: str) -> None:
    db.conn.execute("UPDATE fields SET removed_at = ? WHERE name = ?", (at, name))


def record_revision(db: StateDatabase, revision: str, *, git_commit: str | None, at: str, actions: int) -> None:
    db.conn.execute(
        "INSERT INTO revisions(revision, git_commit, applied_at, actions) VALUES (?, ?, ?, ?)",
        (revision, git_commit, at, actions),
    )
    set_meta(db, "last_applied_revision", revision)
    set_meta(db, "last_applied_commit", git_commit or "")
    set_meta(db, "last_applied_at", at)


def revisions(db: StateDatabase, *, limit: int = 10) -> list[dict[str, Any]]:
    return list(db.query("SELECT * FROM revisions ORDER BY id DESC LIMIT ?", [limit]))


def record_counts(db: StateDatabase, counts: Mapping[str, int], *, at: str) -> None:
    """Remember counts as of this apply (only those that changed), for "the change since the last apply"."""
    db.conn.executemany(
        "INSERT INTO plan_counts(subject, count, at) VALUES (?, ?, ?) ON CONFLICT(subject) DO UPDATE SET "  # noqa: S608
        f"count = excluded.count, at = excluded.at WHERE plan_counts.count {differs(db)} excluded.count",
        [(subject, count, at) for subject, count in counts.items()],
    )


def list_records(db: StateDatabase) -> dict[str, ListRecord]:
    """The one reader of list records: every list as last applied, removed ones too."""
    rows = db.conn.execute("SELECT name, spec, removed_at FROM lists ORDER BY name")
    return {name: ListRecord(MailingList.model_validate_json(spec), removed_at) for name, spec, removed_at in rows}


def lists(db: StateDatabase) -> dict[str, MailingList]:
    """Every List document as last applied (removed ones too: a running campaign may still send to one)."""
    return {name: record.document for name, record in list_records(db).items()}


def field_types(db: StateDatabase) -> dict[str, str]:
    return dict(db.conn.execute("SELECT name, type FROM fields WHERE removed_at IS NULL").fetchall())


@dataclass(frozen=True)
class RefusedRevision:
    """The last revision that was not applied because of errors, while it is the newest one seen."""

    revision: str
    since: str
    """When this revision was first refused."""
    count: int
    problems: tuple[str, ...]
    """The first problems, formatted as `validate` prints them."""

    def as_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "since": self.since, "count": self.count, "problems": list(self.problems)}

    def problem(self) -> str:
        """The refusal as one of the daemon's problems."""
        first = f": {self.problems[0]}" if self.problems else ""
        return (
            f"revision {self.revision} was refused with {self.count} error(s) since {self.since}; the last good "
            f"revision stays in force (run `reconciler validate`){first}"
        )


def refuse_revision(db: StateDatabase, revision: str, problems: list[str], *, at: str) -> None:
    """Remember why a revision was refused (`status` and /healthz show it) until a good revision is applied."""
    with write(db):
        known = refused_revision(db)
        since = known.since if known is not None and known.revision == revision else at
        stored = RefusedRevision(revision, since, len(problems), tuple(problems[:20]))
        set_meta(db, "refused_revision", json.dumps(stored.as_dict()))


def clear_refused(db: StateDatabase) -> None:
    """Inside the caller's write: a good revision was applied."""
    db.conn.execute("DELETE FROM meta WHERE key = 'refused_revision'")


def refused_revision(db: StateDatabase) -> RefusedRevision | None:
    text = get_meta(db, "refused_revision")
    if not text:
        return None
    data = json.loads(text)
    return RefusedRevision(data["revision"], data["since"], data["count"], tuple(data["problems"]))


HEARTBEAT_SECONDS = 300.0
"""How often an idle daemon writes its record (for `reconciler status`), when nothing else changed."""


@dataclass(frozen=True)
class DaemonRecord:
    """The daemon as it last said it was: where it runs, when, and whether it is well."""

    host: str
    pid: int
    seen_at: str
    status: str
    problems: tuple[str, ...]


def save_daemon(db: StateDatabase, record: DaemonRecord) -> None:
    with write(db):
        set_meta(db, "daemon", json.dumps({**record.__dict__, "problems": list(record.problems)}))


def daemon_record(db: StateDatabase) -> DaemonRecord | None:
    text = get_meta(db, "daemon")
    if not text:
        return None
    data = json.loads(text)
    return DaemonRecord(data["host"], data["pid"], data["seen_at"], data["status"], tuple(data["problems"]))


WEBHOOK_MEMORY = timedelta(days=30)
"""How long a provider's event id is remembered: providers redeliver for hours or days, never for a month."""
DISPATCHER_MEMORY = timedelta(days=1)


def prune(db: StateDatabase, *, now: datetime) -> dict[str, int]:
    """Forget facts kept only to catch repeats or for debugging: provider event ids older than WEBHOOK_MEMORY, and
    registrations of dispatchers silent for DISPATCHER_MEMORY that hold no message. Consent records, the ledger,
    engagement and the audit log are never pruned."""
    with write(db):
        webhooks = db.conn.execute(
            "DELETE FROM webhook_events WHERE at < ?", ((now - WEBHOOK_MEMORY).strftime("%Y-%m-%dT%H:%M:%SZ"),)
        ).rowcount
        dispatchers = db.conn.execute(
            "DELETE FROM dispatchers WHERE heartbeat_at < ? AND id NOT IN "
            "(SELECT claimed_by FROM ledger WHERE state = 'sending' AND claimed_by IS NOT NULL)",
            ((now - DISPATCHER_MEMORY).strftime("%Y-%m-%dT%H:%M:%SZ"),),
        ).rowcount
    return {"webhook ids": webhooks, "dispatcher registrations": dispatchers}
