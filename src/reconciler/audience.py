"""Who a campaign goes to, as SQL: subscribed members of its lists, in its segments, in no excluded list or
segment, and not suppressed for a reason that blocks its kind of mail. `plan` counts with these rules and the
campaign's start snapshots with them, so the count in a pull request is the count that gets the message.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from reconciler.jsonsql import SQLITE, Dialect
from reconciler.segments import Compiler, Sql, join_sql, subscribed_to, workspace_compiler
from reconciler.spec.documents import Campaign, MailingList
from reconciler.spec.workspace import DesiredState


@dataclass(frozen=True)
class AudienceSql:
    """A campaign audience as SQL over ``contacts c LEFT JOIN suppressions p``.

    `candidates` are contacts with any subscription (any status) to the audience's lists; `reason` is the first
    reason that keeps a candidate out, or '' for a recipient. Counts (plan) and the snapshot (start) use the same.
    """

    candidates: Sql
    reason: Sql

    @property
    def recipients(self) -> Sql:
        return Sql(
            f"({self.candidates.text} AND ({self.reason.text}) = '')", self.candidates.params + self.reason.params
        )


def audience_sql(
    compiler: Compiler,
    *,
    lists: Sequence[str],
    exclude_lists: Sequence[str] = (),
    segments: Sequence[str] = (),
    exclude_segments: Sequence[str] = (),
    blocking: Sequence[str],
) -> AudienceSql:
    """Subscribed to any of `lists`, in any of `segments` (when given), in no excluded list or segment, and not
    suppressed for a `blocking` reason."""
    wanted = json.dumps(sorted(lists))
    dialect = compiler.dialect
    candidates = Sql(
        f"c.id IN (SELECT s.contact_id FROM subscriptions s WHERE {dialect.among('s.list', '?')})",
        (wanted,),
    )
    pending = subscribed_to(lists, "pending", dialect=dialect)
    subscribed = subscribed_to(lists, dialect=dialect)
    cases: list[tuple[Sql, Sql]] = [
        (Sql(dialect.among("p.reason", "?"), (json.dumps(list(blocking)),)), Sql("p.reason")),
        (
            Sql(f"NOT {subscribed.text}", subscribed.params),
            Sql(f"CASE WHEN {pending.text} THEN 'awaiting confirmation' ELSE 'unsubscribed' END", pending.params),
        ),
    ]
    if exclude_lists:
        cases.append((subscribed_to(list(exclude_lists), dialect=dialect), Sql("'excluded list'")))
    if segments:
        inside = join_sql(" OR ", [compiler.membership(name) for name in segments])
        cases.append((Sql(f"NOT {inside.text}", inside.params), Sql("'not in segments'")))
    if exclude_segments:
        cases.append(
            (join_sql(" OR ", [compiler.membership(name) for name in exclude_segments]), Sql("'excluded segment'"))
        )
    text = "CASE " + " ".join(f"WHEN {test.text} THEN {value.text}" for test, value in cases) + " ELSE '' END"
    params = tuple(p for test, value in cases for p in (*test.params, *value.params))
    return AudienceSql(candidates, Sql(text, params))


def audience_key(
    lists: Sequence[str], exclude_lists: Sequence[str], segments: Sequence[str], exclude_segments: Sequence[str]
) -> str:
    """Campaigns with the same audience share one count."""
    return json.dumps([sorted(lists), sorted(exclude_lists), sorted(segments), sorted(exclude_segments)])


def campaign_audience_parts(campaign: Campaign) -> tuple[list[str], list[str], list[str], list[str]]:
    audience = campaign.audience
    exclude = audience.exclude
    return (
        list(audience.lists),
        list(exclude.lists) if exclude else [],
        list(audience.segments),
        list(exclude.segments) if exclude else [],
    )


MARKETING_BLOCKING = ("bounced", "complained", "unsubscribed", "erased")
"""Suppression reasons that keep a contact from marketing lists."""
TRANSACTIONAL_BLOCKING = ("bounced", "erased")
"""...and from transactional ones: receipts still go to someone who unsubscribed from marketing or complained."""


def is_marketing(lists: Mapping[str, MailingList], names: Sequence[str]) -> bool:
    """Mail for the lists `names` is marketing unless every one of them is `category: transactional` (receipts):
    marketing mail honours unsubscribes from everything, quiet hours and caps, and must carry the compliance
    footer."""
    known = [lists[name] for name in names if name in lists]
    return not known or len(known) < len(names) or any(found.category == "marketing" for found in known)


def blocking_for(lists: Mapping[str, MailingList], names: Sequence[str]) -> tuple[str, ...]:
    """Suppressions that keep people off the lists `names` (`lists`: the List documents by name)."""
    return MARKETING_BLOCKING if is_marketing(lists, names) else TRANSACTIONAL_BLOCKING


@dataclass(frozen=True)
class Audience:
    """A campaign audience as `plan` counts it: the list rules (`list_reason`) over each contact's subscriptions and
    suppression, then its segments and excluded segments as sets of contacts, each segment evaluated once."""

    lists: tuple[str, ...]
    exclude_lists: tuple[str, ...]
    segments: tuple[str, ...]
    exclude_segments: tuple[str, ...]
    blocking: tuple[str, ...]


@dataclass(frozen=True)
class Counting:
    """Everything a plan counts, as SQL that does not run yet: each segment's members (once each, whatever uses
    them), the segment audiences of campaigns by `audience_key`, and for each (campaign, field) a message reads
    without a default, the test that a contact lacks the field."""

    compiler: Compiler
    members: tuple[str, ...]
    """Every segment whose members are needed: those whose size is shown, those audiences use."""
    sizes: tuple[str, ...]
    audiences: Mapping[str, Audience]
    missing: Mapping[tuple[str, str], tuple[str, Sql]]
    """(campaign, field) -> (the campaign's audience key, the test that the contact ``c`` lacks the field)."""


def counting(
    desired: DesiredState,
    *,
    now: datetime,
    campaigns: Collection[str] | None = None,
    sizes: bool = True,
    reads: Mapping[str, Sequence[str]] | None = None,
    dialect: Dialect = SQLITE,
) -> Counting:
    """What a plan counts: every segment's size (`sizes`), the audiences of every campaign that uses segments (or
    of the named `campaigns`, in the order given), and who lacks a field a campaign's messages read (`reads`:
    campaign -> fields)."""
    compiler = workspace_compiler(desired, now=now, dialect=dialect)
    names = list(desired.campaigns) if campaigns is None else [n for n in campaigns if n in desired.campaigns]
    audiences: dict[str, Audience] = {}
    keys: dict[str, str] = {}
    for campaign in (desired.campaigns[name] for name in names):
        parts = campaign_audience_parts(campaign)
        lists, exclude_lists, segments, exclude_segments = parts
        keys[campaign.name] = key = audience_key(*parts)
        audiences[key] = Audience(
            tuple(lists),
            tuple(exclude_lists),
            tuple(segments),
            tuple(exclude_segments),
            blocking_for(desired.lists, lists),
        )
    missing: dict[tuple[str, str], tuple[str, Sql]] = {}
    for name, fields in (reads or {}).items():
        if name in keys:
            for field in fields:
                value = compiler.value(field)
                missing[(name, field)] = (keys[name], Sql(f"({value.text}) IS NULL", value.params))
    used = {key for key, _ in missing.values()}
    audiences = {key: a for key, a in audiences.items() if a.segments or a.exclude_segments or key in used}
    wanted = set(desired.segments) if sizes else set()
    wanted |= {name for a in audiences.values() for name in (*a.segments, *a.exclude_segments)}
    members = tuple(name for name in sorted(wanted) if name in desired.segments)
    return Counting(compiler, members, tuple(sorted(desired.segments)) if sizes else (), audiences, missing)


def list_reason(
    subscribed: Collection[str],
    unsubscribed: Collection[str],
    pending: Collection[str],
    suppression: str | None,
    audience: Audience,
) -> str | None:
    """Why a contact with these subscriptions and suppression is not a recipient of `audience` by its list rules
    (the order `audience_sql` tests them in), '' when they are, None when they are not on its lists at all."""
    wanted = set(audience.lists)
    if (
        not wanted.intersection(subscribed)
        and not wanted.intersection(unsubscribed)
        and not wanted.intersection(pending)
    ):
        return None
    if suppression is not None and suppression in audience.blocking:
        return suppression
    if not wanted.intersection(subscribed):
        return "awaiting confirmation" if wanted.intersection(pending) else "unsubscribed"
    if set(audience.exclude_lists).intersection(subscribed):
        return "excluded list"
    return ""
