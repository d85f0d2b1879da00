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
        f"c.id IN (SELECT s.contact_id FROM subscriptions s WHERE s.list IN ({dialect.json_values('?')}))",
        (wanted,),
    )
    pending = subscribed_to(lists, "pending", dialect=dialect)
    subscribed = subscribed_to(lists, dialect=dialect)
    cases: list[tuple[Sql, Sql]] = [
        (Sql(f"p.reason IN ({dialect.json_values('?')})", (json.dumps(list(blocking)),)), Sql("p.reason")),
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


def _campaign_sql(
    compiler: Compiler, desired: DesiredState, parts: tuple[list[str], list[str], list[str], list[str]]
) -> AudienceSql:
    """A campaign's audience as the workspace says it (`campaign_audience_parts`), with the suppressions its lists'
    kind of mail honours."""
    lists, exclude_lists, segments, exclude_segments = parts
    return audience_sql(
        compiler,
        lists=lists,
        exclude_lists=exclude_lists,
        segments=segments,
        exclude_segments=exclude_segments,
        blocking=blocking_for(desired.lists, lists),
    )


def audience_queries(
    desired: DesiredState, *, now: datetime, campaigns: Collection[str] | None = None, dialect: Dialect = SQLITE
) -> dict[str, AudienceSql]:
    """One query per distinct campaign audience that uses segments (list-only audiences are counted without SQL),
    for every campaign or only the named ones, in the order given."""
    compiler = workspace_compiler(desired, now=now, dialect=dialect)
    queries: dict[str, AudienceSql] = {}
    names = list(desired.campaigns) if campaigns is None else [n for n in campaigns if n in desired.campaigns]
    for campaign in (desired.campaigns[name] for name in names):
        parts = campaign_audience_parts(campaign)
        _, _, segments, exclude_segments = parts
        if not (segments or exclude_segments):
            continue
        key = audience_key(*parts)
        if key not in queries:
            queries[key] = _campaign_sql(compiler, desired, parts)
    return queries


def missing_queries(
    desired: DesiredState, *, now: datetime, reads: Mapping[str, Sequence[str]], dialect: Dialect = SQLITE
) -> dict[tuple[str, str], tuple[Sql, Sql]]:
    """For each (campaign, field) its messages read without a default: the campaign's recipients, and the test that
    a contact lacks the field (their message would fail)."""
    compiler = workspace_compiler(desired, now=now, dialect=dialect)
    queries: dict[tuple[str, str], tuple[Sql, Sql]] = {}
    for name, fields in reads.items():
        campaign = desired.campaigns.get(name)
        if campaign is None:
            continue
        query = _campaign_sql(compiler, desired, campaign_audience_parts(campaign))
        for field in fields:
            value = compiler.value(field)
            queries[(name, field)] = (query.recipients, Sql(f"({value.text}) IS NULL", value.params))
    return queries
