"""Contact writes and reads: the upsert an import runs per batch, subscriptions with their consent record,
GDPR export and erasure.

Suppressions are keyed by the hash of the normalised address, so an erased person leaves no address behind and
still cannot be imported again.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reconciler import strictjson
from reconciler.spec.contact import TEXT_FIELDS, Contact
from reconciler.state import postgres_import, rollups
from reconciler.state.db import audit, write
from reconciler.state.portable import (
    field_key,
    json_merge,
    json_values,
    key_removed,
    key_set,
    tag_added,
    tag_removed,
    tag_union,
)
from reconciler.state.postgres import PostgresDatabase, StateDatabase
from reconciler.state.suppressions import SuppressionReason, email_hash, suppress, suppress_many

CONTACT_NAMES = ("id", "email", *TEXT_FIELDS, "tags", "fields", "created_at", "frequency")
CONTACT_COLUMNS = ", ".join(f"c.{name}" for name in CONTACT_NAMES)
"""What `contact_from_row` reads, selected from `contacts c`, in this order."""


def contact_from_row(values: Sequence[Any]) -> Contact:
    """The one reader of a contact row: the values of CONTACT_COLUMNS, in order."""
    row = dict(zip(CONTACT_NAMES, values, strict=True))
    tags, fields, created_at = row["tags"], row["fields"], row["created_at"]
    return Contact(
        id=int(row["id"]),
        email=str(row["email"]),
        **{name: row[name] for name in TEXT_FIELDS},
        tags=tuple(json.loads(tags)) if tags and tags != "[]" else (),
        created_at=datetime.fromisoformat(created_at) if created_at else None,
        fields=json.loads(fields) if fields and fields != "{}" else {},
        frequency=row["frequency"],
    )


def find_contact(db: StateDatabase, email: str) -> Contact | None:
    """A contact by normalised address."""
    row = db.conn.execute(f"SELECT {CONTACT_COLUMNS} FROM contacts c WHERE c.email = ?", (email,)).fetchone()
    return contact_from_row(row) if row else None


@dataclass(frozen=True)
class ContactRow:
    """One normalised, typed row of an import: only the values the file gave (None = keep what we have).

    Hash and JSON are computed where the row is parsed (a worker process, for large files), not by the writer.
    """

    email: str
    email_hash: str
    builtins: dict[str, str]
    tags: str
    """JSON array, sorted."""
    fields: str
    """JSON object of custom fields."""
    created_at: str | None = None
    status: str | None = None
    """What the file's status column said: None (subscribe as usual), `held` (store, do not subscribe),
    `unsubscribed` (from the import's lists; from everything when it names none), `blocklisted` (from everything),
    `bounced` or `complained` (suppressed)."""
    evidence: str | None = None
    """What the tool the file came from knew of this person's consent ("opted in 2023-01-15 10:22:33 from
    203.0.113.9; confirmed ..."): kept in the consent record the import makes for them."""

    @classmethod
    def build(
        cls,
        email: str,
        builtins: dict[str, str],
        tags: list[str],
        fields: dict[str, Any],
        created_at: str | None = None,
        *,
        status: str | None = None,
        evidence: str | None = None,
    ) -> ContactRow:
        return cls(
            email,
            email_hash(email),
            builtins,
            strictjson.dumps(sorted(set(tags))),
            strictjson.dumps(fields),
            created_at,
            status,
            evidence,
        )


@dataclass
class BatchResult:
    created: int = 0
    updated: int = 0
    duplicates: int = 0
    """Rows for an address an earlier row of the same file already gave (merged into it)."""
    skipped_erased: int = 0
    subscribed: int = 0
    kept_out: dict[str, int] = field(default_factory=dict)
    """Rows not subscribed, by why: suppressed (bounced ...), or unsubscribed from the list earlier."""
    statuses: dict[str, int] = field(default_factory=dict)
    """Rows by what their status column said, when it said more than "subscribed"."""

    def add(self, other: BatchResult) -> None:
        """Count another batch into this total."""
        self.created += other.created
        self.updated += other.updated
        self.duplicates += other.duplicates
        self.skipped_erased += other.skipped_erased
        self.subscribed += other.subscribed
        for reason, count in other.kept_out.items():
            self.kept_out[reason] = self.kept_out.get(reason, 0) + count
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count


_UPSERTED = ("email", "email_hash", *TEXT_FIELDS, "tags", "fields", "created_at", "updated_at", "import_id")


def _merge(db: StateDatabase) -> str:
    """The upsert's SET list: what a row of an address we hold changes of its contact."""
    return f"""
    {", ".join(f"{c} = coalesce(excluded.{c}, contacts.{c})" for c in TEXT_FIELDS)},
    tags = CASE WHEN excluded.tags = '[]' THEN contacts.tags ELSE {tag_union(db, "contacts.tags", "excluded.tags")} END,
    fields = {json_merge(db, "contacts.fields", "excluded.fields")},
    updated_at = excluded.updated_at,
    import_id = excluded.import_id
"""


def start_import(db: StateDatabase, *, file: str, at: str) -> int:
    with write(db):
        (import_id,) = db.conn.execute(
            "INSERT INTO imports(file, started_at) VALUES (?, ?) RETURNING id", (file, at)
        ).fetchone()
    return int(import_id)


def import_batch(
    db: StateDatabase,
    rows: Sequence[ContactRow],
    *,
    import_id: int,
    at: str,
    lists: Iterable[tuple[str, Sequence[str]]] = (),
    source: str,
    consent_text: str | None,
    preconfirmed: Collection[str] = (),
    marketing: Sequence[str] = (),
) -> BatchResult:
    """Upsert one batch of rows and subscribe them to `lists` ((name, blocking suppression reasons) pairs), in one
    transaction. The consent record of a list in `preconfirmed` (double opt-in, confirmed elsewhere as the caller
    says) has the action `preconfirmed` instead of `subscribe`. A row whose `status` says otherwise is not
    subscribed: it is held, unsubscribed (from `lists`, or from everything: the `marketing` lists it is on, and a
    suppression) or suppressed, each with a consent or suppression record naming `source`.

    Nobody who unsubscribed, bounced, complained or was erased is subscribed again; erased addresses are not even
    stored again.
    """
    result = BatchResult()
    hashes = {row.email: row.email_hash for row in rows}
    with write(db):
        blocked = _suppressed(db, hashes.values())
        earlier = _existing(db, hashes)
        seen: set[str] = set()
        status: dict[str, str | None] = {}
        values = []
        for row in rows:
            if blocked.get(hashes[row.email]) == "erased":
                result.skipped_erased += 1
                continue
            if row.email in seen or earlier.get(row.email) == import_id:
                result.duplicates += 1
            elif row.email in earlier:
                result.updated += 1
            else:
                result.created += 1
            seen.add(row.email)
            status[row.email] = row.status
            given = (*(row.builtins.get(c) for c in TEXT_FIELDS), row.tags, row.fields, row.created_at or at)
            values.append((row.email, row.email_hash, *given, at, import_id))  # the columns of _UPSERTED
        if isinstance(db, PostgresDatabase):
            postgres_import.upsert_batch(db, _UPSERTED, _merge(db), values, earlier)
        else:  # a statement per row: SQLite has no round trips to save
            upsert = f"INSERT INTO contacts ({', '.join(_UPSERTED)}) VALUES ({', '.join('?' * len(_UPSERTED))}) "
            db.conn.executemany(f"{upsert} ON CONFLICT (email) DO UPDATE SET {_merge(db)}", values)
        _keep_evidence(db, rows)
        emails = json.dumps(sorted(email for email in seen if status[email] is None))
        lists = list(lists)
        for name, blocking in lists:
            action = "preconfirmed" if name in preconfirmed else "subscribe"
            _subscribe_batch(db, result, emails, name, blocking, at=at, source=source, text=consent_text, action=action)
        if any(status.values()):
            _apply_statuses(db, result, status, [name for name, _ in lists], marketing, at=at, source=source)
    return result


_WITH_EVIDENCE = "FROM contacts c LEFT JOIN import_evidence ev ON ev.email = c.email WHERE"


def _keep_evidence(db: StateDatabase, rows: Sequence[ContactRow]) -> None:
    """Inside the import's write: this batch's consent evidence, for the consent records its statements insert."""
    db.conn.execute("CREATE TEMP TABLE IF NOT EXISTS import_evidence (email TEXT PRIMARY KEY, text TEXT NOT NULL)")
    db.conn.execute("DELETE FROM import_evidence")  # the temporary table: SQLite and PostgreSQL look there first
    db.conn.executemany(
        "INSERT INTO import_evidence(email, text) VALUES (?, ?) ON CONFLICT(email) DO UPDATE SET text = excluded.text",
        [(row.email, row.evidence) for row in rows if row.evidence],
    )


def _apply_statuses(
    db: StateDatabase,
    result: BatchResult,
    status: dict[str, str | None],
    lists: Sequence[str],
    marketing: Sequence[str],
    *,
    at: str,
    source: str,
) -> None:
    """Inside the import's write: the rows whose status column says they must not be mailed (or not yet)."""
    everything = sorted(e for e, s in status.items() if s == "blocklisted" or (s == "unsubscribed" and not lists))
    from_lists = json.dumps(sorted(e for e, s in status.items() if s == "unsubscribed" and lists))
    for word in filter(None, status.values()):
        result.statuses[word] = result.statuses.get(word, 0) + 1
    for name in lists:
        _unsubscribe_batch(db, from_lists, name, at=at, source=source, joined_only=False)
    for name in marketing:
        _unsubscribe_batch(db, json.dumps(everything), name, at=at, source=source, joined_only=True)
    db.conn.execute(
        "INSERT INTO consent(contact_id, list, action, at, source, text) SELECT c.id, NULL, 'unsubscribe', ?, ?, "
        f"ev.text {_WITH_EVIDENCE} c.email IN ({json_values(db, '?')}) "
        "AND NOT EXISTS (SELECT 1 FROM suppressions p WHERE p.email_hash = c.email_hash)",
        (at, source, json.dumps(everything)),
    )
    reasons: dict[str, SuppressionReason] = {"bounced": "bounced", "complained": "complained"}
    suppress_many(
        db,
        [(email_hash(e), "unsubscribed", f"unsubscribed from everything ({source})") for e in everything]
        + [(email_hash(e), reasons[s], f"{s} ({source})") for e, s in status.items() if s in reasons],
        at=at,
    )


def _unsubscribe_batch(db: StateDatabase, emails: str, name: str, *, at: str, source: str, joined_only: bool) -> None:
    """Unsubscribe these addresses from one list, each change with its consent record. `joined_only`: only those
    on the list (leaving everything); otherwise the unsubscribe is kept for people never on it too, so that no
    later import subscribes them."""
    joined = "AND EXISTS (SELECT 1 FROM subscriptions j WHERE j.contact_id = c.id AND j.list = :list)" * joined_only
    params = {"emails": emails, "list": name, "at": at, "source": source}
    db.conn.execute(
        "INSERT INTO consent(contact_id, list, action, at, source, text) SELECT c.id, :list, 'unsubscribe', :at, "
        f":source, ev.text {_WITH_EVIDENCE} c.email IN ({json_values(db, ':emails')}) AND NOT EXISTS (SELECT 1 "
        f"FROM subscriptions s WHERE s.contact_id = c.id AND s.list = :list AND s.status = 'unsubscribed') {joined}",
        params,
    )
    db.conn.execute(
        "INSERT INTO subscriptions(contact_id, list, status, updated_at) SELECT c.id, :list, 'unsubscribed', :at "
        f"FROM contacts c WHERE c.email IN ({json_values(db, ':emails')}) {joined} "
        "ON CONFLICT(contact_id, list) DO UPDATE SET status = 'unsubscribed', updated_at = excluded.updated_at "
        "WHERE subscriptions.status != 'unsubscribed'",
        params,
    )


def _suppressed(db: StateDatabase, hashes: Iterable[str]) -> dict[str, str]:
    rows = db.conn.execute(
        f"SELECT email_hash, reason FROM suppressions WHERE email_hash IN ({json_values(db, '?')})",
        (json.dumps(list(hashes)),),
    )
    return dict(rows.fetchall())


def _existing(db: StateDatabase, hashes: dict[str, str]) -> dict[str, int | None]:
    rows = db.conn.execute(
        f"SELECT email, import_id FROM contacts WHERE email IN ({json_values(db, '?')})",
        (json.dumps(list(hashes)),),
    )
    return dict(rows.fetchall())


def _subscribe_batch(
    db: StateDatabase,
    result: BatchResult,
    emails: str,
    name: str,
    blocking: Sequence[str],
    *,
    at: str,
    source: str,
    text: str | None,
    action: str,
) -> None:
    params = {
        "emails": emails,
        "list": name,
        "at": at,
        "source": source,
        "text": text,
        "action": action,
        "b": json.dumps(list(blocking)),
    }
    kept_out = db.conn.execute(
        f"""
        SELECT coalesce(p.reason, s.status), count(*) FROM contacts c
        LEFT JOIN suppressions p ON p.email_hash = c.email_hash AND p.reason IN ({json_values(db, ":b")})
        LEFT JOIN subscriptions s ON s.contact_id = c.id AND s.list = :list AND s.status = 'unsubscribed'
        WHERE c.email IN ({json_values(db, ":emails")}) AND (p.reason IS NOT NULL OR s.status IS NOT NULL)
        GROUP BY 1
        """,
        params,
    ).fetchall()
    for reason, count in kept_out:
        result.kept_out[reason] = result.kept_out.get(reason, 0) + count
    eligible = f"""
        FROM contacts c WHERE c.email IN ({json_values(db, ":emails")})
        AND NOT EXISTS (SELECT 1 FROM suppressions p WHERE p.email_hash = c.email_hash
                        AND p.reason IN ({json_values(db, ":b")}))
        AND NOT EXISTS (SELECT 1 FROM subscriptions s WHERE s.contact_id = c.id AND s.list = :list)
    """
    db.conn.execute(
        "INSERT INTO consent(contact_id, list, action, at, source, text) SELECT c.id, :list, :action, :at, :source, "
        "CASE WHEN ev.text IS NULL THEN :text ELSE ltrim(coalesce(:text, '') || ' (' || ev.text || ')') END "
        + eligible.replace("FROM contacts c WHERE", _WITH_EVIDENCE, 1),
        params,
    )
    cursor = db.conn.execute(
        f"INSERT INTO subscriptions(contact_id, list, status, updated_at) SELECT c.id, :list, 'subscribed', :at "
        f"{eligible}",
        params,
    )
    result.subscribed += cursor.rowcount


def contacts_of_import(db: StateDatabase, import_id: int) -> int:
    """Contacts an import created or updated so far (what an interrupted one saved)."""
    return int(db.conn.execute("SELECT count(*) FROM contacts WHERE import_id = ?", (import_id,)).fetchone()[0])


def finish_import(
    db: StateDatabase,
    import_id: int,
    *,
    at: str,
    rows: int,
    created: int,
    updated: int,
    rejected: int,
    file: str,
    interrupted: bool = False,
) -> None:
    """Record how an import ended; an interrupted one keeps no finish time (it did not finish)."""
    with write(db):
        db.conn.execute(
            "UPDATE imports SET finished_at = ?, rows = ?, created = ?, updated = ?, rejected = ? WHERE id = ?",
            (None if interrupted else at, rows, created, updated, rejected, import_id),
        )
        audit(
            db,
            at=at,
            actor="import",
            subject=f"import {import_id}",
            action="interrupted" if interrupted else "imported",
            detail=f"{file}: {created} created, {updated} updated, {rejected} rejected",
        )


def export_contact(db: StateDatabase, email: str) -> dict[str, Any] | None:
    """Everything held about one person (GDPR access), or None when we hold nothing."""
    hashed = email_hash(email)
    suppression = db.conn.execute(
        "SELECT reason, at, detail FROM suppressions WHERE email_hash = ?", (hashed,)
    ).fetchone()
    contact = next(db.query("SELECT * FROM contacts WHERE email = ?", [email]), None)
    if contact is None:
        if suppression is None:
            return None
        return {
            "email": email,
            "held": "only a hash of the address, to keep it suppressed",
            "suppression": dict(zip(("reason", "at", "detail"), suppression, strict=True)),
        }
    cid = contact["id"]

    def rows(sql: str) -> list[dict[str, Any]]:
        return list(db.query(sql, [cid]))

    for key in ("tags", "fields"):
        contact[key] = json.loads(contact[key])
    for key in ("email_hash", "import_id", "id"):
        contact.pop(key)
    events = rows("SELECT type, occurred_at, properties FROM events WHERE contact_id = ? ORDER BY occurred_at")
    for event in events:
        event["properties"] = json.loads(event["properties"])
    return {
        "contact": contact,
        "subscriptions": rows("SELECT list, status, updated_at FROM subscriptions WHERE contact_id = ? ORDER BY list"),
        "consent": rows("SELECT list, action, at, source, text, ip FROM consent WHERE contact_id = ? ORDER BY id"),
        "suppression": dict(zip(("reason", "at", "detail"), suppression, strict=True)) if suppression else None,
        "messages": _by_step(
            rows(
                "SELECT source_kind, coalesce(workflow, source) AS source, stage, workflow IS NOT NULL AS by_step, "
                "state, message_id, updated_at FROM ledger WHERE contact_id = ? ORDER BY id"
            )
        ),
        "engagement": _by_step(
            rows(
                "SELECT coalesce(l.workflow, e.source) AS source, e.stage, l.workflow IS NOT NULL AS by_step, "
                "e.action, e.machine, e.at, CASE WHEN e.action = 'clicked' THEN e.detail END AS url "
                "FROM engagement e LEFT JOIN ledger l ON l.id = e.ledger_id WHERE e.contact_id = ? ORDER BY e.id"
            )
        ),
        "events": events,
        "workflow_runs": rows(
            "SELECT workflow, key, state, step, started_at, trigger, ended_at, outcome FROM workflow_runs "
            "WHERE contact_id = ? ORDER BY id"
        ),
    }


def _by_step(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A workflow's message is named by its workflow and step (its ledger row's source is the run, a number that
    means nothing to the person); a campaign's by its name and stage."""
    named = []
    for row in found:
        by_step = row.pop("by_step")
        named.append({("step" if by_step and key == "stage" else key): value for key, value in row.items()})
    return named


def erase_contact(db: StateDatabase, email: str, *, at: str) -> bool:
    """Delete everything about the person except a hash that keeps them suppressed; True if we held a record."""
    hashed = email_hash(email)
    with write(db):
        db.conn.execute(
            "UPDATE ledger SET state = 'skipped', last_reply = 'not sent: the contact was erased', updated_at = ? "
            "WHERE state IN ('queued', 'deferred') AND contact_id = (SELECT id FROM contacts WHERE email = ?)",
            (at, email),
        )
        counted = rollups.counted_for(db, email)
        deleted = db.conn.execute("DELETE FROM contacts WHERE email = ?", (email,)).rowcount
        for kind, name in counted:  # the report counters forget the person as the facts do
            rollups.recount(db, kind, name)
        suppress(db, hashed, "erased", at=at)
        audit(
            db,
            at=at,
            actor="erase",
            subject=f"contact {hashed[:12]}",
            action="erased",
            detail="record deleted" if deleted else "no record; address hash suppressed",
        )
    return bool(deleted)


def change_tag(db: StateDatabase, contact_id: int, tag: str, *, present: bool, at: str) -> None:
    """Inside the caller's write: add or remove one tag (a workflow's `tag` and `untag` steps)."""
    db.conn.execute(tag_statement(db, present=present), (tag, at, contact_id))


def tag_statement(db: StateDatabase, *, present: bool) -> str:
    """`change_tag`'s statement, of the parameters (tag, at, contact id): for a batch of them."""
    tags = tag_added(db, "tags") if present else tag_removed(db, "tags")
    return f"UPDATE contacts SET tags = {tags}, updated_at = ? WHERE id = ?"


def set_custom_field(db: StateDatabase, contact_id: int, name: str, value: object, *, at: str) -> None:
    """Inside the caller's write: one custom field's value (None removes it), as a workflow's `set_field` step
    says; the value was checked against the Field's type by `validate`."""
    params: tuple[str, ...] = (field_key(db, name),)
    if value is None:
        fields = key_removed(db, "fields")
    else:
        fields, params = key_set(db, "fields"), (*params, strictjson.dumps(value))
    db.conn.execute(f"UPDATE contacts SET fields = {fields}, updated_at = ? WHERE id = ?", (*params, at, contact_id))
