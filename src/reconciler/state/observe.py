"""ObservedState: what the state database holds that `make_plan` compares the workspace with.

Reading it is the only SQL of a plan. Audience counts come as a histogram of membership *signatures* (which lists
a contact is subscribed to, unsubscribed from or pending on, and why they are suppressed) so that the pure planner
can count any number of campaigns' audiences without another query: a million contacts fall into a few hundred
signatures.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.audience import AudienceSql
from reconciler.segments import Sql
from reconciler.state import audiences as run
from reconciler.state.campaigns import CampaignRecord, campaign_records
from reconciler.state.db import get_meta
from reconciler.state.portable import unit_separated
from reconciler.state.postgres import StateDatabase
from reconciler.state.records import ListRecord, field_types, list_records
from reconciler.state.workflows import active_by_step


@dataclass(frozen=True)
class Signature:
    """One kind of contact, for counting: their lists by subscription status and their suppression, if any."""

    subscribed: frozenset[str]
    unsubscribed: frozenset[str]
    pending: frozenset[str]
    suppression: str | None


@dataclass(frozen=True)
class ObservedState:
    campaigns: Mapping[str, CampaignRecord]
    lists: Mapping[str, ListRecord]
    """List documents as applied, including removed ones."""
    fields: Mapping[str, str]
    workflows: Mapping[str, str]
    """Workflow name -> content hash as applied (removed ones absent)."""
    audience: Mapping[Signature, int]
    contacts: int
    last_applied_revision: str | None = None
    serial: int = 0
    """Bumped by every write that changes what a plan is based on: a plan made from an older serial is stale."""
    audience_counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Audiences that use segments, by `segments.audience_key`: candidates by reason ('' = recipients)."""
    segment_counts: Mapping[str, int] = field(default_factory=dict)
    last_counts: Mapping[str, int] = field(default_factory=dict)
    """Counts recorded at the last apply ("Segment x", "Campaign y"), for the change since then."""
    missing_counts: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(campaign, field) -> recipients who lack a field its messages read without a default."""
    runs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Workflow -> step -> active runs on it (what an edit of the workflow does to them)."""


def observe(db: StateDatabase, *, audience: bool = True, runs: bool = True) -> ObservedState:
    """Read everything `make_plan` needs but segment counts (`with_counts` adds those); `audience=False` also skips
    the list-membership histogram (status), `runs=False` the active runs by step (a scan of every active run, which
    only the plan's words about workflows read)."""
    campaigns = {record.name: record for record in campaign_records(db)}
    lists = list_records(db)
    fields = field_types(db)
    workflows = dict(db.conn.execute("SELECT name, content_hash FROM workflows WHERE removed_at IS NULL").fetchall())
    contacts = db.conn.execute("SELECT count(*) FROM contacts").fetchone()[0]
    return ObservedState(
        campaigns=campaigns,
        lists=lists,
        fields=fields,
        workflows=workflows,
        audience=audience_histogram(db) if audience else {},
        contacts=contacts,
        last_applied_revision=get_meta(db, "last_applied_revision"),
        serial=int(get_meta(db, "serial") or 0),
        last_counts=dict(db.conn.execute("SELECT subject, count FROM plan_counts").fetchall()),
        runs=active_by_step(db) if runs else {},
    )


def with_counts(
    db: StateDatabase,
    observed: ObservedState,
    *,
    audiences: Mapping[str, AudienceSql],
    segments: Mapping[str, Sql],
    missing: Mapping[tuple[str, str], tuple[Sql, Sql]] | None = None,
    deadline: float | None = None,
) -> ObservedState:
    """`observed` plus the counts of compiled campaign `audiences` and `segments`, each a query of its own.

    Counting stops at `deadline` (time.monotonic()); what was not counted by then is absent, and the plan says so.
    """
    audience_counts = dict(observed.audience_counts)
    segment_counts = dict(observed.segment_counts)
    for key, query in audiences.items():
        if deadline is not None and time.monotonic() > deadline:
            break
        audience_counts[key] = run.audience_reasons(db, candidates=query.candidates, reason=query.reason)
    for name, members in segments.items():
        if deadline is not None and time.monotonic() > deadline:
            break
        segment_counts[name] = run.count(db, members)
    missing_counts = dict(observed.missing_counts)
    for pair, (recipients, lacking) in (missing or {}).items():
        if deadline is not None and time.monotonic() > deadline:
            break
        missing_counts[pair] = run.count_where(db, recipients, lacking)
    return replace(
        observed, audience_counts=audience_counts, segment_counts=segment_counts, missing_counts=missing_counts
    )


def audience_histogram(db: StateDatabase) -> dict[Signature, int]:
    """Contacts with at least one subscription, counted by signature.

    Each list is a bit, so a contact's signature is three integers summed by SQLite (much cheaper than strings),
    and the few suppressed contacts are counted apart instead of joining every contact to the suppressions.
    """
    lists = [row[0] for row in db.conn.execute("SELECT DISTINCT list FROM subscriptions ORDER BY list")]
    if not lists:
        return {}
    if len(lists) > 62:
        return _histogram_by_names(db)
    bit = "CASE list " + " ".join("WHEN ? THEN ?" for _ in lists) + " ELSE 0 END"
    params: list[Any] = [value for index, name in enumerate(lists) for value in (name, 1 << index)]
    signatures = f"""
        SELECT contact_id,
               sum(CASE WHEN status = 'subscribed' THEN bit ELSE 0 END) AS s,
               sum(CASE WHEN status = 'unsubscribed' THEN bit ELSE 0 END) AS u,
               sum(CASE WHEN status = 'pending' THEN bit ELSE 0 END) AS p
        FROM (SELECT contact_id, status, {bit} AS bit FROM subscriptions %s) AS b GROUP BY contact_id
    """  # noqa: S608 - only "?" placeholders and constant SQL are interpolated
    everyone = db.conn.execute(f"SELECT s, u, p, count(*) FROM ({signatures % ''}) AS m GROUP BY 1, 2, 3", params)  # noqa: S608
    counts: Counter[tuple[int, int, int, str | None]] = Counter()
    for s, u, p, count in everyone:  # int(): PostgreSQL's sum of integers is a numeric (a Decimal)
        counts[(int(s), int(u), int(p), None)] += count
    suppressed = db.conn.execute(
        "WITH x AS (SELECT c.id, p.reason FROM suppressions p JOIN contacts c ON c.email_hash = p.email_hash) "  # noqa: S608
        f"SELECT m.s, m.u, m.p, x.reason, count(*) FROM ({signatures % 'WHERE contact_id IN (SELECT id FROM x)'}) m "
        "JOIN x ON x.id = m.contact_id GROUP BY 1, 2, 3, 4",
        params,
    )
    for s, u, p, reason, count in suppressed:
        counts[(int(s), int(u), int(p), None)] -= count
        counts[(int(s), int(u), int(p), reason)] += count

    def names(mask: int) -> frozenset[str]:
        return frozenset(name for index, name in enumerate(lists) if mask >> index & 1)

    return {Signature(names(s), names(u), names(p), reason): n for (s, u, p, reason), n in counts.items() if n}


_STATUSES = ("subscribed", "unsubscribed", "pending")


def _histogram_by_names(db: StateDatabase) -> dict[Signature, int]:
    """The same counts for workspaces with more lists than an integer has bits."""
    histogram: Counter[Signature] = Counter()
    joined = {status: unit_separated(db, f"CASE WHEN status = '{status}' THEN list END") for status in _STATUSES}
    rows = db.conn.execute(
        f"""
        SELECT m.subscribed, m.unsubscribed, m.pending, p.reason, count(*)
        FROM (
            SELECT contact_id,
                   {joined["subscribed"]} AS subscribed,
                   {joined["unsubscribed"]} AS unsubscribed,
                   {joined["pending"]} AS pending
            FROM subscriptions GROUP BY contact_id
        ) AS m
        JOIN contacts c ON c.id = m.contact_id
        LEFT JOIN suppressions p ON p.email_hash = c.email_hash
        GROUP BY 1, 2, 3, 4
        """  # noqa: S608 - constant SQL
    )
    for subscribed, unsubscribed, pending, reason, count in rows:
        histogram[Signature(_set(subscribed), _set(unsubscribed), _set(pending), reason)] += count
    return dict(histogram)


def _set(text: str | None) -> frozenset[str]:
    return frozenset(text.split("\x1f")) if text else frozenset()
