"""The send ledger while it is being worked: what is due, claims and outcomes.

A row is claimed (`queued`/`deferred` → `sending`) at the point of no return: once the server has accepted the
envelope and said "go ahead" to DATA, and right before the body and its final dot are written. The claim is one
short write transaction, together with the outcome of the message its connection sent before. So after a kill -9 at
most one row per connection is `sending` without an outcome, and each of them may have been delivered: recovery
(`dispatchers`) marks exactly those `uncertain`. A row killed before that point is still `queued` and goes out
after the restart. A server that refuses the envelope (4xx/5xx before DATA) gets its outcome written by `refused`,
and nothing is claimed in batches ahead of time (the way listmonk skips up to a batch after a crash, its issue
#3022).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import Any, Literal

from reconciler.spec.contact import Contact
from reconciler.state import engagement
from reconciler.state.campaigns import load_audience
from reconciler.state.conditions import Reason
from reconciler.state.contacts import CONTACT_COLUMNS, contact_from_row
from reconciler.state.content import MessageContent, load_content
from reconciler.state.db import audit, write, write_rows
from reconciler.state.portable import is_postgres, json_key, json_values
from reconciler.state.postgres import StateDatabase
from reconciler.state.sharing import (
    RECORD_OUTCOME,
    Cap,
    Claim,
    Reservation,
    at_once,
    claim_at_once,
    held,
    outcome_params,
    reserved,
)
from reconciler.state.suppressions import suppress

POLICY_PAUSE_MIN = 20
"""Policy rejections (5.7.x) a campaign may collect before the ratio below can pause it."""
POLICY_PAUSE_RATIO = 0.05
"""Pause a campaign when this share of its attempted messages was refused for policy or reputation reasons."""
CONFIRMATION_SOURCE = "double-opt-in"
"""Ledger rows of confirmation emails: source_kind 'workflow', this source, stage '<list>:<n>'."""
_BACKOFF_FIRST = timedelta(minutes=5)
_BACKOFF_CAP = timedelta(hours=2)


@dataclass(frozen=True)
class Source:
    """A message definition with rows to send: a campaign's first message (stage '') or one of its stages."""

    kind: Literal["campaign", "workflow"]
    name: str
    stage: str
    content: MessageContent
    lists: tuple[str, ...]
    due: int
    requires: Literal["subscribed", "pending", "none"] = "subscribed"
    """The subscription a recipient must still have at claim time (`pending` for a double opt-in confirmation,
    `none` for a transactional workflow)."""
    transactional: bool = False
    """A transactional workflow's message: it reaches people who left marketing; only a bounce, a complaint or an
    erasure stops it."""

    @property
    def label(self) -> str:
        """What progress lines call it: "Campaign c", "Campaign c/stage", "Workflow w/step", "Confirmation l:1"."""
        if self.kind == "campaign":
            return f"Campaign {self.name}/{self.stage}" if self.stage else f"Campaign {self.name}"
        if self.name == CONFIRMATION_SOURCE:
            return f"Confirmation {self.stage}"
        return f"Workflow {self.name}/{self.stage}"


@dataclass(frozen=True)
class DueRow:
    """A ledger row to send, with its contact."""

    id: int
    attempts: int
    message_id: str | None
    first_attempt_at: str | None
    stored_contact: Contact | tuple[Any, ...]
    """The contact, or its stored columns (CONTACT_COLUMNS): parsed when first asked for, which for a large send is
    in the render process, not in the one that talks SMTP."""

    @cached_property
    def contact(self) -> Contact:
        stored = self.stored_contact
        return stored if isinstance(stored, Contact) else contact_from_row(stored)


@dataclass(frozen=True)
class Outcome:
    """What happened to a claimed row, to be written with the connection's next claim."""

    row_id: int
    state: Literal["sent", "deferred", "failed", "uncertain", "queued"]
    """queued: uncertain and sent again (on_uncertain: resend)."""
    reply: str
    at: str
    next_attempt_at: str | None = None
    suppress: bool = False
    """The address is bad (5.1.x): suppress it as bounced, and record the bounce."""
    policy: bool = False
    """A policy or reputation refusal (5.7.x), counted against the campaign."""
    soft: bool = False
    """A soft bounce (mailbox full), recorded as engagement without suppressing."""

    @property
    def plain(self) -> bool:
        """Written to its own row alone (no suppression, engagement or campaign counter): a claim carrying it needs
        no writers' lock on PostgreSQL (`write_rows`)."""
        return not (self.suppress or self.soft or self.policy)


def backoff(attempts: int, *, jitter: float) -> timedelta:
    """5 min × 2^(n-1), capped at 2 h, times a random factor in [0.8, 1.2) so retries do not arrive in a herd."""
    base: timedelta = min(_BACKOFF_CAP, _BACKOFF_FIRST * (2 ** max(0, attempts - 1)))
    return base * (0.8 + 0.4 * jitter)


# --- what is due ---------------------------------------------------------------------------------------------


def due_sources(db: StateDatabase, *, now: str) -> list[Source]:
    """Every started, unpaused campaign stage with rows due at `now`. The rows are counted before the campaign's
    content is joined: grouping rows that carry it made SQLite sort a copy of the content (tens of KB) per waiting
    row, 80 s before the first message of a 1,000,000-recipient send."""
    sources = []
    for name, stage, content, audience, due in db.conn.execute(
        "SELECT c.name, w.stage, c.content, c.audience, w.due FROM campaigns c JOIN (SELECT l.source, l.stage, "
        "count(*) AS due FROM campaigns s JOIN ledger l ON l.source_kind = 'campaign' AND l.source = s.name "
        "WHERE s.status = 'sending' AND l.state IN ('queued', 'deferred') AND coalesce(l.next_attempt_at, l.due_at) "
        "<= ? GROUP BY l.source, l.stage) w ON w.source = c.name ORDER BY c.started_at, c.name, w.stage",
        (now,),
    ):
        lists = load_audience(audience).lists
        sources.append(Source("campaign", name, stage, load_content(content), lists, due))
    return sources


def due_steps(db: StateDatabase, *, now: str) -> list[tuple[str, str, int]]:
    """Workflow send steps with rows due at `now`: (workflow, step, rows)."""
    return [
        (str(workflow), str(step), int(count))
        for workflow, step, count in db.conn.execute(
            "SELECT workflow, stage, count(*) FROM ledger WHERE state IN ('queued', 'deferred') "
            "AND coalesce(next_attempt_at, due_at) <= ? AND workflow IS NOT NULL GROUP BY workflow, stage "
            "ORDER BY workflow, stage",
            (now,),
        )
    ]


def skip_waiting(db: StateDatabase, workflow: str, step: str, *, why: str, at: str) -> None:
    """Waiting messages of a workflow step that can no longer be sent (its step or workflow was removed)."""
    with write(db):
        db.conn.execute(
            "UPDATE ledger SET state = 'skipped', last_reply = ?, updated_at = ? WHERE workflow = ? AND stage = ? "
            "AND state IN ('queued', 'deferred')",
            (why, at, workflow, step),
        )


def due_confirmations(db: StateDatabase, *, now: str) -> list[tuple[str, int]]:
    """Double opt-in confirmation emails waiting, by stage ('<list>:<n>')."""
    return [
        (str(stage), int(count))
        for stage, count in db.conn.execute(
            "SELECT stage, count(*) FROM ledger WHERE source_kind = 'workflow' AND source = ? "
            "AND state IN ('queued', 'deferred') AND coalesce(next_attempt_at, due_at) <= ? GROUP BY stage",
            (CONFIRMATION_SOURCE, now),
        )
    ]


def due_rows(
    db: StateDatabase,
    source: Source,
    *,
    now: str,
    after_id: int,
    limit: int,
    reserve: Reservation | None = None,
) -> list[DueRow]:
    """The next page of due rows of `source` (by id), with their contacts. With `reserve` on PostgreSQL, where the
    dispatchers of several daemons send at once, the page is reserved for `reserve.dispatcher` (`sharing.reserved`)."""
    # a workflow's rows are one per run (the row's source), found by their workflow
    which = "l.workflow = ?" if source.kind == "workflow" and source.name != CONFIRMATION_SOURCE else "l.source = ?"
    due = (
        f"l.source_kind = ? AND {which} AND l.stage = ? AND l.state IN ('queued', 'deferred') "
        "AND coalesce(l.next_attempt_at, l.due_at) <= ? AND l.id > ?"
    )
    params = (source.kind, source.name, source.stage, now, after_id)
    if reserve is not None and is_postgres(db):
        return [DueRow(row[0], row[1], row[2], row[3], row[4:]) for row in reserved(db, due, params, reserve, limit)]
    rows = db.conn.execute(
        f"SELECT l.id, l.attempts, l.message_id, l.first_attempt_at, {CONTACT_COLUMNS} "
        f"FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE {due} ORDER BY l.id LIMIT ?",
        (*params, limit),
    )
    return [DueRow(row[0], row[1], row[2], row[3], row[4:]) for row in rows]


@dataclass(frozen=True)
class SentMessage:
    """A campaign message as it was sent, to render it again (view online)."""

    row: DueRow
    source: Source


def sent_message(db: StateDatabase, row_id: int) -> SentMessage | None:
    """A campaign's ledger row with its contact, and the campaign's stored content and lists."""
    row = db.conn.execute(
        "SELECT m.content, m.audience, l.source, l.stage, l.id, l.attempts, l.message_id, l.first_attempt_at, "
        f"{CONTACT_COLUMNS} FROM ledger l JOIN contacts c ON c.id = l.contact_id "
        "JOIN campaigns m ON l.source_kind = 'campaign' AND m.name = l.source WHERE l.id = ?",
        (row_id,),
    ).fetchone()
    if row is None:
        return None
    content, audience, name, stage = row[:4]
    source = Source("campaign", name, stage, load_content(content), load_audience(audience).lists, 1)
    return SentMessage(DueRow(row[4], row[5], row[6], row[7], row[8:]), source)


def recent_sends(db: StateDatabase, contact_id: int, *, since: str) -> dict[int, str]:
    """When marketing messages went to a contact after `since` (for the frequency cap and the contact's frequency
    choice), by row id, oldest first: one sent exactly a window ago is out of it, so a message held until then goes
    out then. Receipts and opt-in confirmations do not count (rows from before that was recorded count)."""
    return dict(
        db.conn.execute(
            "SELECT id, sent_at FROM ledger WHERE contact_id = ? AND state = 'sent' AND sent_at > ? "
            "AND coalesce(marketing, 1) = 1 ORDER BY sent_at",
            (contact_id, since),
        ).fetchall()
    )


def postpone(db: StateDatabase, rows: Iterable[tuple[int, str, str]], *, at: str) -> None:
    """Hold rows back without an attempt (quiet hours, frequency cap): (row id, until, why)."""
    with write(db):
        db.conn.executemany(
            "UPDATE ledger SET next_attempt_at = ?, last_reply = ?, updated_at = ? "
            "WHERE id = ? AND state IN ('queued', 'deferred')",
            [(until, why, at, row_id) for row_id, until, why in rows],
        )


# --- claim and outcome ---------------------------------------------------------------------------------------


def _not_sendable(db: StateDatabase, row: tuple[Any, ...], source: Source, blocking: Sequence[str]) -> str | None:
    """Why the claimed row's message may no longer go out (the contact erased, suppressed or gone from the lists
    since the rows were made), or None."""
    _, contact_id, suppressed, subscribed = row
    if contact_id is None:
        return "the contact was erased before sending"
    if suppressed in blocking:
        return f"not sent: the address is suppressed ({suppressed}) since the campaign started"
    if source.requires == "none" or subscribed:
        return None
    if source.requires == "pending":
        return "not sent: the subscription is no longer waiting for confirmation"
    if source.kind == "campaign":
        return "not sent: the contact unsubscribed from the campaign's lists before their message went out"
    return _not_on_list(
        db, contact_id, source.lists
    )  # a run starts for anyone its trigger names; a step needs the list


def claim(
    db: StateDatabase,
    row_id: int,
    *,
    source: Source,
    dispatcher: str,
    message_id: str,
    blocking: Sequence[str],
    marketing: bool,
    at: str,
    previous: Outcome | None = None,
    caps: Sequence[Cap] = (),
) -> str:
    """In one transaction: write `previous`, then claim `row_id` for sending (`marketing`: whether the message
    counts toward the contact's marketing limits). Returns "claimed", "skipped" (the
    contact unsubscribed, bounced or complained meanwhile), "paused" (its campaign stopped), "held" (`caps`: the
    contact's messages sent or being sent by now, by any process, reach a limit; the row waits) or "taken"
    (another process has it, or it is no longer due).

    On PostgreSQL the row is locked with ``FOR UPDATE SKIP LOCKED`` (a row another transaction holds is
    "taken", without waiting; but a row of this dispatcher's own reserved page is waited for: only another's page
    being reserved can hold it, for a moment), and a claim whose `previous` is `plain` takes no writers' lock
    (`write_rows`): the dispatchers of several daemons claim side by side. There a claim without `caps` is first
    tried in one statement (`sharing.claim_at_once`), and only when that does not claim the row is it found out
    why below."""
    light = previous is None or previous.plain
    if light and not caps and at_once(db) and (previous is None or previous.row_id != row_id):
        usual = Claim(
            row_id,
            dispatcher,
            message_id,
            at,
            marketing,
            source.kind,
            source.name,
            source.requires,
            json.dumps(list(source.lists)),
            json.dumps(list(blocking)),
        )
        if claim_at_once(db, usual, None if previous is None else _outcome_params(previous)):
            return "claimed"
        previous = None  # written: what stood in the way is found out below
    with write_rows(db) if light else write(db):
        if _paused_after(db, previous, source=source):
            return "paused"
        row = _claimed_row(db, row_id, source, lock=" FOR UPDATE OF l SKIP LOCKED" if is_postgres(db) else "")
        if row is None and is_postgres(db) and _reserved_by(db, row_id) == dispatcher:
            # this dispatcher's own page: what locked the row was another's page being reserved, whose statement
            # saw the row before this reservation and let it go as soon as it found it reserved; wait for that
            row = _claimed_row(db, row_id, source, lock=" FOR UPDATE OF l")
        if row is None or row[0] not in ("queued", "deferred"):
            return "taken"
        contact_id = row[1]
        if why := _not_sendable(db, row, source, blocking):
            db.conn.execute(
                "UPDATE ledger SET state = 'skipped', last_reply = ?, updated_at = ?, reserved_by = NULL WHERE id = ?",
                (why, at, row_id),
            )
            return "skipped"
        if caps and held(db, row_id, contact_id, caps, at=at):
            return "held"
        db.conn.execute(
            "UPDATE ledger SET state = 'sending', claimed_by = ?, attempts = attempts + 1, message_id = ?, "
            "first_attempt_at = coalesce(first_attempt_at, ?), updated_at = ?, marketing = ?, reserved_by = NULL, "
            "reserved_until = NULL WHERE id = ?",
            (dispatcher, message_id, at, at, int(marketing), row_id),
        )
        return "claimed"


def _not_on_list(db: StateDatabase, contact_id: int, lists: Sequence[str]) -> str:
    """Why a workflow's marketing message is skipped: the person left its list, or was never on it."""
    names = ", ".join(lists)
    left = db.conn.execute(
        "SELECT 1 FROM subscriptions WHERE contact_id = ? AND status = 'unsubscribed' "
        f"AND list IN ({json_values(db, '?')})",
        (contact_id, json.dumps(list(lists))),
    ).fetchone()
    if left:
        return f"not sent: the contact unsubscribed from the workflow's list ({names}) before their message went out"
    return f"not sent: the contact is not subscribed to {names} (the workflow's list)"


def refused(db: StateDatabase, outcome: Outcome, *, source: Source, previous: Outcome | None = None) -> str:
    """The server refused a message before DATA (or during it), so it was never claimed: write its outcome as an
    attempt (unless another process took the row meanwhile), together with `previous`. Returns "recorded", or
    "paused" when its campaign stopped sending meanwhile (the refusal is then not counted)."""
    with write(db):  # two rows that may each be waited for: with the writers' lock, never a deadlock
        if _paused_after(db, previous, source=source):
            return "paused"
        attempted = db.conn.execute(
            "UPDATE ledger SET attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, ?) "
            "WHERE id = ? AND state IN ('queued', 'deferred')",
            (outcome.at, outcome.row_id),
        ).rowcount
        if attempted:
            _record(db, outcome, source=source)
    return "recorded"


def _claimed_row(db: StateDatabase, row_id: int, source: Source, *, lock: str) -> Any:
    """The row's state, contact, suppression and whether the contact is on the source's lists, `lock`ed."""
    return db.conn.execute(
        "SELECT l.state, l.contact_id, p.reason, EXISTS (SELECT 1 FROM subscriptions s WHERE "
        f"s.contact_id = l.contact_id AND s.status = ? AND s.list IN ({json_values(db, '?')})) "
        "FROM ledger l LEFT JOIN contacts c ON c.id = l.contact_id "
        "LEFT JOIN suppressions p ON p.email_hash = c.email_hash WHERE l.id = ?" + lock,
        (source.requires, json.dumps(list(source.lists)), row_id),
    ).fetchone()


def _reserved_by(db: StateDatabase, row_id: int) -> str | None:
    row = db.conn.execute("SELECT reserved_by FROM ledger WHERE id = ?", (row_id,)).fetchone()
    return None if row is None else row[0]


def _paused_after(db: StateDatabase, previous: Outcome | None, *, source: Source) -> bool:
    """Inside the write of a claim or a refusal: write `previous` (the connection's last outcome), then whether the
    message's campaign stopped sending meanwhile."""
    if previous is not None:
        _record(db, previous, source=source)
    return source.kind == "campaign" and not _sending(db, source.name)


def _sending(db: StateDatabase, campaign: str) -> bool:
    row = db.conn.execute("SELECT status FROM campaigns WHERE name = ?", (campaign,)).fetchone()
    return row is not None and row[0] == "sending"


def record(db: StateDatabase, outcome: Outcome, *, source: Source) -> None:
    """Write one outcome on its own (the last message of a connection, or a message that failed to render)."""
    with write_rows(db) if outcome.plain else write(db):
        _record(db, outcome, source=source)


def _record(db: StateDatabase, outcome: Outcome, *, source: Source) -> None:
    db.conn.execute(RECORD_OUTCOME, _outcome_params(outcome))
    if outcome.suppress or outcome.soft:
        if outcome.suppress:
            hashed = db.conn.execute(
                "SELECT c.email_hash FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE l.id = ?",
                (outcome.row_id,),
            ).fetchone()
            if hashed is not None:
                suppress(db, hashed[0], "bounced", at=outcome.at, detail=outcome.reply)
        detail = ("soft: " if outcome.soft else "hard: ") + outcome.reply[:200]
        engagement.record(db, [engagement.Engagement(outcome.row_id, "bounced", outcome.at, detail=detail)])
    if outcome.policy and source.kind == "campaign":
        _count_policy_failure(db, source.name, reply=outcome.reply, at=outcome.at)


def _outcome_params(outcome: Outcome) -> tuple[Any, ...]:
    return outcome_params(outcome.state, outcome.reply, outcome.at, outcome.next_attempt_at, outcome.row_id)


def _count_policy_failure(db: StateDatabase, name: str, *, reply: str, at: str) -> None:
    db.conn.execute("UPDATE campaigns SET policy_failures = policy_failures + 1 WHERE name = ?", (name,))
    failures, attempted = db.conn.execute(
        "SELECT c.policy_failures, (SELECT count(*) FROM ledger WHERE source_kind = 'campaign' AND source = c.name "
        "AND attempts > 0) FROM campaigns c WHERE c.name = ?",
        (name,),
    ).fetchone()
    if failures >= POLICY_PAUSE_MIN and failures >= POLICY_PAUSE_RATIO * attempted:
        message = (
            f"paused: {failures} of {attempted} messages were refused for policy or reputation reasons "
            f"(last: {reply[:120]})"
        )
        changed = db.conn.execute(
            "UPDATE campaigns SET status = 'paused', held = 1, ready = 0, reason = ?, message = ?, "
            "updated_at = ? WHERE name = ? AND status = 'sending'",
            (Reason.POLICY_REJECTIONS, message, at, name),
        ).rowcount
        if changed:
            audit(db, at=at, actor="dispatch", subject=f"Campaign {name}", action="pause", detail=message)


@dataclass(frozen=True)
class Failure:
    """A message that did not arrive (or may not have), with the server's last word."""

    email: str
    stage: str
    state: str
    attempts: int
    reply: str
    at: str


def failures(db: StateDatabase, campaign: str, *, limit: int) -> list[Failure]:
    """A campaign's failed, uncertain and deferred messages, latest first."""
    rows = db.conn.execute(
        "SELECT coalesce(c.email, '(erased)'), l.stage, l.state, l.attempts, coalesce(l.last_reply, ''), l.updated_at "
        "FROM ledger l LEFT JOIN contacts c ON c.id = l.contact_id WHERE l.source_kind = 'campaign' AND l.source = ? "
        "AND l.state IN ('failed', 'uncertain', 'deferred') ORDER BY l.updated_at DESC, l.id DESC LIMIT ?",
        (campaign, limit),
    )
    return [Failure(*row) for row in rows]


def next_due(db: StateDatabase) -> str | None:
    """When the earliest waiting row of a sending campaign, an opt-in confirmation or an active workflow becomes
    due (retries, quiet hours, local times); a paused workflow's messages wake nobody."""
    row = db.conn.execute(
        "SELECT min(coalesce(l.next_attempt_at, l.due_at)) FROM ledger l LEFT JOIN campaigns c ON l.source_kind = "
        "'campaign' AND c.name = l.source WHERE l.state IN ('queued', 'deferred') AND l.contact_id IS NOT NULL "
        "AND (c.status = 'sending' OR l.source_kind = 'workflow' AND (l.workflow IS NULL OR EXISTS (SELECT 1 FROM "
        f"workflows w WHERE w.name = l.workflow AND w.removed_at IS NULL AND {json_key(db, 'w.spec', 'status')} = "
        "'active')))"
    ).fetchone()
    return row[0] if row else None
