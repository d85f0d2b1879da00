"""Counters that reports read instead of the facts: kept up to date as engagement is recorded, rebuilt from the
facts when asked (`reconciler report --rebuild`, and by the migration that added them).

A campaign of a million recipients has millions of opens and clicks; counting them again for every report would
take seconds. So the one writer of engagement (`engagement.record`) also adds each new fact here, in the same
transaction, as do the writer of events (conversions, `count_conversions`), a campaign's start (its recipients by
country, `count_recipients`) and an erasure (the person's campaigns and workflows counted again, `recount`):

- report_counts: per campaign or workflow (kind, name), per stage or step, a value per metric: totals (opens,
  clicks, machine_opens, machine_clicks), people (openers, clickers, unsubscribed, complained; stage '*' counts a
  person once across every stage), messages that bounced (bounced_hard, bounced_soft, and bounced_after_sent for
  those the relay had accepted: a bounce reported later), and per country of the first message
  (recipients:CC, openers:CC) and per country the opens and clicks came from, when a GeoIP database is
  configured (ip_people:CC once per person, ip_events:CC);
- report_people: who has been counted for which unique metric (so each person counts once; for a bounce, the
  message's ledger id, so each message counts once);
- report_hours: opens and clicks by people per UTC hour;
- report_links: clicks by people per URL, and how many people clicked it.

Every figure here can also be counted from the facts (state/reports.py does, for a window of time): the tests
check that both agree.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import NamedTuple

from reconciler.spec.documents import Goal
from reconciler.spec.types import format_duration, parse_duration
from reconciler.state.portable import json_key
from reconciler.state.postgres import StateDatabase

BATCH = 20_000
"""Engagement rows read per step of a rebuild."""
LARGEST_AMOUNT = 1e15
"""A goal's value beyond this (a quadrillion) is a mistake in the event, not revenue: it is not added (a few such
values would make the sum infinite, which no report can show and no JSON can hold)."""


Key = tuple[str, str, str, str]


class _Fact(NamedTuple):
    id: int
    ledger_id: int | None
    kind: str
    name: str
    stage: str
    contact_id: int
    action: str
    machine: int
    at: str
    detail: str | None
    country: str | None = None


_READ = (
    "SELECT id, ledger_id, source_kind, source, coalesce(stage, ''), contact_id, action, machine, at, detail, country "
    "FROM engagement "
    "WHERE id > ? AND source IS NOT NULL AND contact_id IS NOT NULL{only} ORDER BY id LIMIT ?"
)


def count_new(db: StateDatabase, after: int, *, only: tuple[str, str] | None = None) -> None:
    """Add the engagement rows with an id above `after` (inside the writer's transaction); `only`: of one
    campaign or workflow (kind, name)."""
    sql = _READ.format(only=" AND source_kind = ? AND source = ?" if only else "")
    while True:
        facts = [_Fact(*row) for row in db.conn.execute(sql, (after, *(only or ()), BATCH))]
        if not facts:
            return
        _count(db, facts)
        after = facts[-1].id


def _people_metrics(fact: _Fact) -> list[str]:
    if fact.action in ("opened", "clicked") and not fact.machine:
        return ["openers", "clickers"] if fact.action == "clicked" else ["openers"]
    if fact.action in ("unsubscribed", "complained"):
        return [fact.action]
    return []


def _count(db: StateDatabase, facts: Iterable[_Fact]) -> None:
    counts: Counter[Key] = Counter()
    hours: Counter[Key] = Counter()
    links: Counter[Key] = Counter()
    for fact in facts:
        where = (fact.kind, fact.name)
        if fact.action in ("opened", "clicked"):
            total = ("machine_" if fact.machine else "") + ("opens" if fact.action == "opened" else "clicks")
            counts[(*where, fact.stage, total)] += 1
            if not fact.machine:
                hours[(*where, fact.at[:13], fact.action)] += 1
                if fact.country:
                    counts[(*where, "", "ip_events:" + fact.country)] += 1
                    if _first(db, fact, "", "ip:" + fact.country):
                        counts[(*where, "", "ip_people:" + fact.country)] += 1
                if fact.action == "clicked":
                    links[(*where, fact.detail or "", "clicks")] += 1
                    if _first(db, fact, "", "link " + (fact.detail or "")):
                        links[(*where, fact.detail or "", "people")] += 1
        if fact.action == "bounced":
            _count_bounce(db, fact, counts)
        for metric in _people_metrics(fact):
            for stage in (fact.stage, "*"):
                if _first(db, fact, stage, metric):
                    counts[(*where, stage, metric)] += 1
                    if metric == "openers" and stage == "" and fact.kind == "campaign":
                        counts[(*where, "", "openers:" + _country(db, fact.contact_id))] += 1
    _add(db, counts, hours, links)


def _count_bounce(db: StateDatabase, fact: _Fact, counts: Counter[Key]) -> None:
    """A bounce counts its message once (a person may bounce in several stages); one reported after the relay had
    accepted the message (its row is still `sent`) also counts as bounced_after_sent, which `delivered` leaves out."""
    metric = "bounced_soft" if (fact.detail or "").startswith("soft") else "bounced_hard"
    if fact.ledger_id is None or not _first(
        db, fact._replace(contact_id=fact.ledger_id), fact.stage, "message bounced"
    ):
        return
    counts[(fact.kind, fact.name, fact.stage, metric)] += 1
    state = db.conn.execute("SELECT state FROM ledger WHERE id = ?", (fact.ledger_id,)).fetchone()
    if state is not None and state[0] == "sent":
        counts[(fact.kind, fact.name, fact.stage, "bounced_after_sent")] += 1


def _first(db: StateDatabase, fact: _Fact, stage: str, metric: str) -> bool:
    """Whether this is the first time the person counts for `metric` (then they are remembered)."""
    return bool(
        db.conn.execute(
            "INSERT OR IGNORE INTO report_people(kind, name, stage, metric, contact_id) VALUES (?, ?, ?, ?, ?)",
            (fact.kind, fact.name, stage, metric, fact.contact_id),
        ).rowcount
    )


def _country(db: StateDatabase, contact_id: int) -> str:
    row = db.conn.execute("SELECT coalesce(nullif(country, ''), '?') FROM contacts WHERE id = ?", (contact_id,))
    found = row.fetchone()
    return str(found[0]) if found else "?"


def _add(db: StateDatabase, counts: Mapping[Key, float], hours: Mapping[Key, int], links: Mapping[Key, int]) -> None:
    db.conn.executemany(
        "INSERT INTO report_counts(kind, name, stage, metric, value) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (kind, name, stage, metric) DO UPDATE SET value = report_counts.value + excluded.value",
        [(*key, value) for key, value in counts.items()],
    )
    db.conn.executemany(
        "INSERT INTO report_hours(kind, name, hour, opens, clicks) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (kind, name, hour) DO UPDATE SET opens = report_hours.opens + excluded.opens, "
        "clicks = report_hours.clicks + excluded.clicks",
        [(k, n, h, v if a == "opened" else 0, v if a == "clicked" else 0) for (k, n, h, a), v in hours.items()],
    )
    db.conn.executemany(
        "INSERT INTO report_links(kind, name, url, clicks, people) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (kind, name, url) DO UPDATE SET clicks = report_links.clicks + excluded.clicks, "
        "people = report_links.people + excluded.people",
        [(k, n, u, v if m == "clicks" else 0, v if m == "people" else 0) for (k, n, u, m), v in links.items()],
    )


def count_recipients(db: StateDatabase, campaign: str) -> None:
    """The campaign's first message's recipients by the contact's country (when it starts, inside its write)."""
    db.conn.execute(
        "INSERT INTO report_counts(kind, name, stage, metric, value) SELECT 'campaign', ?, '', "
        "'recipients:' || coalesce(nullif(c.country, ''), '?'), count(*) FROM ledger l JOIN contacts c "
        "ON c.id = l.contact_id WHERE l.source_kind = 'campaign' AND l.source = ? AND l.stage = '' GROUP BY 4 "
        "ON CONFLICT (kind, name, stage, metric) DO UPDATE SET value = excluded.value",
        (campaign, campaign),
    )


_DEFAULT_WITHIN = format_duration(Goal.model_fields["within"].default)
"""A stored goal without `within` (a document stored before it was written out) has the Goal model's default."""


class _Goal(NamedTuple):
    event: str
    within_seconds: float
    value: str | None


def _goals(db: StateDatabase, after: int) -> dict[str, _Goal]:
    """The goals of the campaigns that started and whose goal event is among the events with an id above `after`
    (most batches of events concern no goal, and cost one indexed lookup)."""
    found = {}
    goal_event, goal_within, goal_value = (json_key(db, "spec", f"goal.{key}") for key in ("event", "within", "value"))
    sql = (  # the fragments are json_key's, of our own constant keys; values are parameters
        f"SELECT name, {goal_event}, coalesce({goal_within}, ?), {goal_value} FROM campaigns "  # noqa: S608
        f"WHERE started_at IS NOT NULL AND {goal_event} IN (SELECT DISTINCT type FROM events WHERE id > ?)"
    )
    for name, event, within, value in db.conn.execute(sql, (_DEFAULT_WITHIN, after)):
        found[str(name)] = _Goal(str(event), parse_duration(within).total_seconds(), value)
    return found


def count_conversions(db: StateDatabase, after: int, *, only: str | None = None) -> None:
    """Add the events with an id above `after` to the goals of the campaigns whose first message reached the
    person before the event and within the goal's window (inside the events writer's transaction). A message
    still on the wire when its recipient's event is recorded is not counted; `report --rebuild` counts it."""
    goals = {name: goal for name, goal in _goals(db, after).items() if only is None or name == only}
    wanted = {goal.event for goal in goals.values()}
    if not wanted:
        return
    counts: dict[Key, float] = defaultdict(float)
    rows = db.conn.execute(
        "SELECT contact_id, type, occurred_at, properties FROM events WHERE id > ? ORDER BY id", (after,)
    ).fetchall()
    for contact_id, kind, occurred_at, properties in rows:
        if kind not in wanted:
            continue
        for name, sent_at in db.conn.execute(
            "SELECT source, sent_at FROM ledger WHERE contact_id = ? AND state = 'sent' AND source_kind = 'campaign' "
            "AND stage = ''",
            (contact_id,),
        ):
            goal = goals.get(str(name))
            if goal is None or goal.event != kind or not _within(str(sent_at), str(occurred_at), goal.within_seconds):
                continue
            counts[("campaign", str(name), "", "conversions")] += 1
            amount = json.loads(properties).get(goal.value) if goal.value else None
            if isinstance(amount, int | float) and not isinstance(amount, bool) and abs(amount) <= LARGEST_AMOUNT:
                counts[("campaign", str(name), "", "revenue")] += amount
            person = _Fact(0, None, "campaign", str(name), "", int(contact_id), "converted", 0, str(occurred_at), None)
            if _first(db, person, "", "converted"):
                counts[("campaign", str(name), "", "converted")] += 1
    _add(db, counts, Counter(), Counter())


def _within(sent_at: str, occurred_at: str, seconds: float) -> bool:
    sent = datetime.fromisoformat(sent_at)
    return sent <= datetime.fromisoformat(occurred_at) < sent + timedelta(seconds=seconds)


def counted_for(db: StateDatabase, email: str) -> list[tuple[str, str]]:
    """The campaigns and workflows whose counters hold something of this person (before they are erased)."""
    rows = db.conn.execute(
        "SELECT DISTINCT p.kind, p.name FROM report_people p JOIN contacts c ON c.id = p.contact_id WHERE c.email = ? "
        "UNION SELECT DISTINCT 'campaign', l.source FROM ledger l JOIN contacts c ON c.id = l.contact_id "
        "WHERE c.email = ? AND l.source_kind = 'campaign' AND l.stage = ''",
        (email, email),
    )
    return [(str(kind), str(name)) for kind, name in rows]


def recount(db: StateDatabase, kind: str, name: str) -> None:
    """Count one campaign's (or workflow's) counters again from its facts (inside the caller's write): after an
    erasure deleted a person's facts, the figures are what the facts say."""
    for table in ("report_counts", "report_people", "report_hours", "report_links"):
        db.conn.execute(f"DELETE FROM {table} WHERE kind = ? AND name = ?", (kind, name))  # noqa: S608
    if kind == "campaign":
        count_recipients(db, name)
    count_new(db, 0, only=(kind, name))
    if kind == "campaign":
        count_conversions(db, 0, only=name)


def count_all(db: StateDatabase) -> None:
    """Inside the caller's write: forget every counter and count the facts again."""
    for table in ("report_counts", "report_people", "report_hours", "report_links"):
        db.conn.execute(f"DELETE FROM {table}")  # noqa: S608 (our own table names)
    for (name,) in db.conn.execute("SELECT name FROM campaigns WHERE started_at IS NOT NULL").fetchall():
        count_recipients(db, name)
    count_new(db, 0)
    count_conversions(db, 0)


def rebuild(db: StateDatabase) -> int:
    """Count everything again from the facts; returns the engagement rows counted."""
    from reconciler.state.db import write  # the database module runs the migrations, which use this one

    with write(db):
        count_all(db)
    return int(db.conn.execute("SELECT count(*) FROM engagement").fetchone()[0])
