"""ObservedState: what the state database holds that `make_plan` compares the workspace with.

Reading it is the only SQL of a plan. Audience counts come as a histogram of membership *signatures* (which lists
a contact is subscribed to, unsubscribed from or pending on, and why they are suppressed) so that the pure planner
can count any number of campaigns' audiences without another query: a million contacts fall into a few hundred
signatures.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.audience import Audience, list_reason
from reconciler.state.campaigns import CampaignRecord, campaign_records
from reconciler.state.db import get_meta
from reconciler.state.portable import json_integers, unit_separated
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

    def reason(self, audience: Audience) -> str | None:
        """Why this kind of contact is not a recipient of `audience` by its list rules ('' when it is, None when it
        is not on its lists): `audience.list_reason`."""
        return list_reason(self.subscribed, self.unsubscribed, self.pending, self.suppression, audience)


@dataclass(frozen=True)
class ObservedState:
    campaigns: Mapping[str, CampaignRecord]
    lists: Mapping[str, ListRecord]
    """List documents as applied, including removed ones."""
    fields: Mapping[str, str]
    workflows: Mapping[str, str]
    """Workflow name -> content hash as applied (removed ones absent)."""
    audience: Mapping[Signature, int] | None
    """Contacts with a subscription by signature; None when not read (`observe(audience=False)`): the campaigns
    whose audience is lists alone are then not counted."""
    contacts: int
    last_applied_revision: str | None = None
    serial: int = 0
    """Bumped by every write that changes what a plan is based on: a plan made from an older serial is stale."""
    audience_counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Audiences that use segments, by `segments.audience_key`: candidates by reason ('' = recipients)."""
    segment_counts: Mapping[str, int] = field(default_factory=dict)
    last_counts: Mapping[str, int] = field(default_factory=dict)
    """Counts recorded at the last apply ("Segment x", "Campaign y"), for the change since then."""
    missing_counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Campaign -> field -> recipients who lack a field its messages read without a default."""
    runs: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Workflow -> step -> active runs on it (what an edit of the workflow does to them)."""


def observe(db: StateDatabase, *, audience: bool = True, runs: bool = True) -> ObservedState:
    """Read everything `make_plan` needs but segment counts (`with_counts` adds those); `audience=False` also skips
    the list-membership histogram (a scan of every subscription: 2-3 s at a million contacts, read only when a
    campaign counted from it is planned), `runs=False` the active runs by step (a scan of every active run, which
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
        audience=audience_histogram(db) if audience else None,
        contacts=contacts,
        last_applied_revision=get_meta(db, "last_applied_revision"),
        serial=int(get_meta(db, "serial") or 0),
        last_counts=dict(db.conn.execute("SELECT subject, count FROM plan_counts").fetchall()),
        runs=active_by_step(db) if runs else {},
    )


def audience_histogram(db: StateDatabase) -> dict[Signature, int]:
    """Contacts with at least one subscription, counted by signature.

    Each list is a bit, so a contact's signature is three integers summed by SQLite (much cheaper than strings),
    and the few suppressed contacts are counted apart instead of joining every contact to the suppressions.
    """
    lists = _lists(db)
    if not lists:
        return {}
    if len(lists) > 62:
        return _histogram_by_names(db)
    signatures, params = _masks(lists)
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

    return {_signature(lists, key): n for key, n in counts.items() if n}


_LISTS = """
WITH RECURSIVE l(list) AS (
    SELECT min(list) FROM subscriptions
    UNION ALL SELECT (SELECT min(s.list) FROM subscriptions s WHERE s.list > l.list) FROM l WHERE l.list IS NOT NULL
)
SELECT list FROM l WHERE list IS NOT NULL ORDER BY list
"""
"""The lists anyone has a subscription to, each found by one step down the index on `list`: PostgreSQL has no skip
scan, and its DISTINCT read every subscription (0.6 s at a million contacts; this takes milliseconds)."""


def _lists(db: StateDatabase) -> list[str]:
    return [row[0] for row in db.conn.execute(_LISTS)]


def _masks(lists: list[str]) -> tuple[str, list[Any]]:
    """A query of each contact's subscriptions as three bit masks (subscribed, unsubscribed, pending), one bit per
    list of `lists`, with a `%s` for a WHERE clause over `contact_id`, and its parameters."""
    bit = "CASE list " + " ".join("WHEN ? THEN ?" for _ in lists) + " ELSE 0 END"
    params: list[Any] = [value for index, name in enumerate(lists) for value in (name, 1 << index)]
    signatures = f"""
        SELECT contact_id,
               sum(CASE WHEN status = 'subscribed' THEN bit ELSE 0 END) AS s,
               sum(CASE WHEN status = 'unsubscribed' THEN bit ELSE 0 END) AS u,
               sum(CASE WHEN status = 'pending' THEN bit ELSE 0 END) AS p
        FROM (SELECT contact_id, status, {bit} AS bit FROM subscriptions %s) AS b GROUP BY contact_id
    """  # noqa: S608 - only "?" placeholders and constant SQL are interpolated
    return signatures, params


def _signature(lists: list[str], key: tuple[int, int, int, str | None]) -> Signature:
    def names(mask: int) -> frozenset[str]:
        return frozenset(name for index, name in enumerate(lists) if mask >> index & 1)

    s, u, p, reason = key
    return Signature(names(s), names(u), names(p), reason)


Key = tuple[int, int, int, str | None]


def signatures(db: StateDatabase, contacts: set[int]) -> tuple[dict[int, Key], dict[Key, Signature]]:
    """The signature of each of `contacts` that has a subscription, as a key into the signatures found (contacts
    share a few hundred): read in one query, or for everyone when they are many of them."""
    lists = _lists(db)
    if not lists:
        return {}, {}
    if len(lists) > 62:
        return _signatures_by_names(db, contacts)
    query, params = _masks(lists)
    everyone = len(contacts) > 100_000
    where = "" if everyone else f"WHERE contact_id IN ({json_integers(db, '?')})"
    chosen = () if everyone else (json.dumps(sorted(contacts)),)
    keys: dict[int, Key] = {}
    for contact, s, u, p in db.conn.execute(query % where, (*params, *chosen)):
        keys[contact] = (int(s), int(u), int(p), None)
    suppressed = db.conn.execute(
        "SELECT c.id, p.reason FROM suppressions p JOIN contacts c ON c.email_hash = p.email_hash"  # noqa: S608 - constant SQL
        + ("" if everyone else f" WHERE c.id IN ({json_integers(db, '?')})"),
        chosen,
    )
    for contact, reason in suppressed:
        if contact in keys:
            keys[contact] = (*keys[contact][:3], reason)
    kinds = {key: _signature(lists, key) for key in set(keys.values())}
    return keys, kinds


def _signatures_by_names(db: StateDatabase, contacts: set[int]) -> tuple[dict[int, Key], dict[Key, Signature]]:
    """The same for workspaces with more lists than an integer has bits: each list's own bit, in Python."""
    lists = _lists(db)
    index = {name: i for i, name in enumerate(lists)}
    status = {"subscribed": 0, "unsubscribed": 1, "pending": 2}
    masks: dict[int, list[int]] = {}
    rows = db.conn.execute(
        f"SELECT contact_id, list, status FROM subscriptions WHERE contact_id IN ({json_integers(db, '?')})",  # noqa: S608
        (json.dumps(sorted(contacts)),),
    )
    for contact, name, state in rows:
        masks.setdefault(contact, [0, 0, 0])[status[state]] |= 1 << index[name]
    keys: dict[int, Key] = {contact: (s, u, p, None) for contact, (s, u, p) in masks.items()}
    suppressed = db.conn.execute(
        "SELECT c.id, p.reason FROM suppressions p JOIN contacts c ON c.email_hash = p.email_hash "  # noqa: S608 - constant SQL
        f"WHERE c.id IN ({json_integers(db, '?')})",
        (json.dumps(sorted(contacts)),),
    )
    for contact, reason in suppressed:
        if contact in keys:
            keys[contact] = (*keys[contact][:3], reason)
    return keys, {key: _signature(lists, key) for key in set(keys.values())}


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
