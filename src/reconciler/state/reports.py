"""What reports read: a campaign's or a workflow's messages and what people did with them, counted in SQL.

Every count here is of facts as they were recorded (the ledger, engagement, events); the rates and the layout are
the report package's. A message's engagement carries its source and stage (copied from its ledger row when it is
recorded), so a campaign's figures read the engagement_by_source index and never the whole table; a workflow's
messages are found through the ledger's `workflow` column.

Times are compared as `+at`: the unary plus keeps SQLite from choosing an index on the time (engagement_by_action),
which would read every campaign's engagement to find one campaign's.

`Window` bounds when engagement and conversions happened (`--since`, `--until`); messages are counted whenever
they were sent, so rates in a window are "of everyone mailed, how many acted in it".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, NonNegativeFloat

from reconciler.segments import json_path
from reconciler.spec.documents import Goal
from reconciler.state.postgres import StateDatabase
from reconciler.state.rollups import LARGEST_AMOUNT


@dataclass(frozen=True)
class Window:
    """Engagement and conversions between `since` and `until` (ISO UTC, either open)."""

    since: str = ""
    until: str = "9999"


class _Terms(BaseModel):
    """What a report reads of a campaign's document as applied (`campaigns.spec`), typed and defaulted as the
    Campaign model types and defaults them."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    subject: str = ""
    goal: Goal | None = None
    cost: NonNegativeFloat | None = None


@dataclass(frozen=True)
class StartedCampaign:
    """A campaign that started, with what its report shows of its document."""

    name: str
    started_at: str
    finished_at: str | None
    subject: str
    goal: Goal | None
    """The conversion it is judged by (its `within` defaulted by the Goal model), or None."""
    cost: float | None


def _started(name: str, started_at: str | None, finished_at: str | None, spec: str) -> StartedCampaign:
    """The one reader of a started campaign for reports."""
    terms = _Terms.model_validate_json(spec)
    return StartedCampaign(name, started_at or "", finished_at, terms.subject, terms.goal, terms.cost)


@dataclass(frozen=True)
class Engaged:
    """One stage's (or the whole campaign's) engagement: unique people and totals, people and machines apart."""

    openers: int = 0
    opens: int = 0
    clickers: int = 0
    clicks: int = 0
    machine_opens: int = 0
    machine_clicks: int = 0
    unsubscribed: int = 0
    complained: int = 0
    bounced_hard: int = 0
    """Messages (not people) that bounced for good, at the relay or reported later."""
    bounced_soft: int = 0
    """Messages still deferred when their retries ran out, or reported as a soft bounce."""
    bounced_after_sent: int = 0
    """Of those, messages the relay had accepted (a bounce reported later): no longer delivered."""


def started_campaigns(db: StateDatabase) -> list[StartedCampaign]:
    """Every campaign that started sending, newest first."""
    rows = db.conn.execute(
        "SELECT name, started_at, finished_at, spec FROM campaigns WHERE started_at IS NOT NULL "
        "ORDER BY started_at DESC, name"
    )
    return [_started(*row) for row in rows]


def campaign(db: StateDatabase, name: str) -> StartedCampaign | None:
    row = db.conn.execute(
        "SELECT name, started_at, finished_at, spec FROM campaigns WHERE name = ?", (name,)
    ).fetchone()
    return None if row is None else _started(*row)


def states_by_stage(db: StateDatabase, name: str) -> dict[str, dict[str, int]]:
    """The campaign's ledger rows by stage ('' is the first message) and state."""
    found: dict[str, dict[str, int]] = defaultdict(dict)
    rows = db.conn.execute(
        "SELECT stage, state, count(*) FROM ledger WHERE source_kind = 'campaign' AND source = ? GROUP BY 1, 2",
        (name,),
    )
    for stage, state, count in rows:
        found[str(stage)][str(state)] = int(count)
    return dict(found)


def _engaged_columns(g: str) -> str:
    """The columns `_engaged` reads, of the engagement table under the alias `g`. A person opened a message when
    they opened or clicked it (a click is an open with images off); proxies and scanners never do."""
    return (
        f"count(DISTINCT CASE WHEN {g}.action IN ('opened', 'clicked') AND {g}.machine = 0 THEN {g}.contact_id END), "
        f"sum({g}.action = 'opened' AND {g}.machine = 0), "
        f"count(DISTINCT CASE WHEN {g}.action = 'clicked' AND {g}.machine = 0 THEN {g}.contact_id END), "
        f"sum({g}.action = 'clicked' AND {g}.machine = 0), sum({g}.action = 'opened' AND {g}.machine = 1), "
        f"sum({g}.action = 'clicked' AND {g}.machine = 1), "
        f"count(DISTINCT CASE WHEN {g}.action = 'unsubscribed' THEN {g}.contact_id END), "
        f"count(DISTINCT CASE WHEN {g}.action = 'complained' THEN {g}.contact_id END), "
        f"count(DISTINCT CASE WHEN {g}.action = 'bounced' AND {g}.detail LIKE 'hard:%' THEN {g}.ledger_id END), "
        f"count(DISTINCT CASE WHEN {g}.action = 'bounced' AND {g}.detail LIKE 'soft:%' THEN {g}.ledger_id END), "
        f"count(DISTINCT CASE WHEN {g}.action = 'bounced' AND EXISTS (SELECT 1 FROM ledger sent "
        f"WHERE sent.id = {g}.ledger_id AND sent.state = 'sent') THEN {g}.ledger_id END)"
    )


def _engaged(row: tuple[object, ...]) -> Engaged:
    return Engaged(*(int(value or 0) for value in row))  # type: ignore[call-overload]


def campaign_engagement(db: StateDatabase, name: str, window: Window) -> tuple[Engaged, dict[str, Engaged]]:
    """The whole campaign's engagement (each person once across stages) and each stage's."""
    where = "source_kind = 'campaign' AND source = ? AND +at >= ? AND +at < ?"
    params = (name, window.since, window.until)
    total = db.conn.execute(
        f"SELECT {_engaged_columns('engagement')} FROM engagement INDEXED BY engagement_by_source WHERE {where}", params
    ).fetchone()
    stages = db.conn.execute(
        f"SELECT stage, {_engaged_columns('engagement')} FROM engagement INDEXED BY engagement_by_source "
        f"WHERE {where} GROUP BY stage",
        params,
    )
    return _engaged(total), {str(row[0] or ""): _engaged(row[1:]) for row in stages}


def links(db: StateDatabase, name: str, window: Window) -> list[tuple[str, int, int]]:
    """(URL, people who clicked it, clicks) of the campaign's links, most people first; people only."""
    rows = db.conn.execute(
        "SELECT detail, count(DISTINCT contact_id), count(*) FROM engagement INDEXED BY engagement_by_source "
        "WHERE source_kind = 'campaign' "
        "AND source = ? AND action = 'clicked' AND machine = 0 AND +at >= ? AND +at < ? "
        "GROUP BY detail ORDER BY 2 DESC, 3 DESC, 1",
        (name, window.since, window.until),
    )
    return [(str(url or ""), int(people), int(clicks)) for url, people, clicks in rows]


def ip_countries(db: StateDatabase, name: str, window: Window) -> list[tuple[str, int, int]]:
    """(country of the IP, people who opened or clicked from it, opens and clicks) by people, most people first."""
    rows = db.conn.execute(
        "SELECT country, count(DISTINCT contact_id), count(*) FROM engagement INDEXED BY engagement_by_source "
        "WHERE source_kind = 'campaign' AND source = ? AND action IN ('opened', 'clicked') AND machine = 0 "
        "AND country IS NOT NULL AND +at >= ? AND +at < ? GROUP BY country ORDER BY 2 DESC, 3 DESC, 1",
        (name, window.since, window.until),
    )
    return [(str(country), int(people), int(events)) for country, people, events in rows]


def hourly(db: StateDatabase, name: str, window: Window) -> list[tuple[str, int, int]]:
    """(hour as YYYY-MM-DDTHH in UTC, opens, clicks) by people, in time order."""
    rows = db.conn.execute(
        "SELECT substr(at, 1, 13), sum(action = 'opened'), sum(action = 'clicked') "
        "FROM engagement INDEXED BY engagement_by_source "
        "WHERE source_kind = 'campaign' AND source = ? AND machine = 0 AND action IN ('opened', 'clicked') "
        "AND +at >= ? AND +at < ? GROUP BY 1 ORDER BY 1",
        (name, window.since, window.until),
    )
    return [(str(hour), int(opens), int(clicks)) for hour, opens, clicks in rows]


def countries(db: StateDatabase, name: str, window: Window) -> list[tuple[str, int, int]]:
    """(the contact's country, recipients, people who opened) for the campaign's first message, most first."""
    rows = db.conn.execute(
        "SELECT coalesce(nullif(c.country, ''), '?'), count(*), sum(EXISTS (SELECT 1 FROM engagement g "
        "WHERE g.ledger_id = l.id AND g.action IN ('opened', 'clicked') AND g.machine = 0 "
        "AND +g.at >= ? AND +g.at < ?)) FROM ledger l JOIN contacts c ON c.id = l.contact_id "
        "WHERE l.source_kind = 'campaign' AND l.source = ? AND l.stage = '' "
        "GROUP BY 1 ORDER BY 2 DESC, 1",
        (window.since, window.until, name),
    )
    return [(str(country), int(recipients), int(openers or 0)) for country, recipients, openers in rows]


def conversions(
    db: StateDatabase, name: str, *, event: str, within_seconds: int, value: str | None, window: Window
) -> tuple[int, int, float]:
    """(people who converted, conversions, revenue): events of type `event` from recipients of the campaign's
    first message, after it was sent and within `within_seconds`; revenue sums the numeric `value` property (up to
    LARGEST_AMOUNT each).

    Read from the smaller side: the recipients, each looked up among their events (a campaign of a few thousand),
    or the goal's events since the campaign started, each looked up in the campaign's ledger (a campaign of a
    million, whose recipients outnumber the purchases)."""
    path = json_path(value) if value else "$.__no_value__"
    started, recipients = db.conn.execute(
        "SELECT coalesce(started_at, ''), coalesce(recipients, 0) FROM campaigns WHERE name = ?", (name,)
    ).fetchone() or ("", 0)
    events = db.conn.execute(  # counted up to the number that decides, not every purchase ever
        "SELECT count(*) FROM (SELECT 1 FROM events INDEXED BY events_by_type_time WHERE type = ? "
        "AND occurred_at >= ? LIMIT ?)",
        (event, started, recipients),
    ).fetchone()[0]
    join = (
        "FROM events e INDEXED BY events_by_type_time CROSS JOIN ledger l ON l.source_kind = 'campaign' "
        "AND l.source = ? AND l.stage = '' AND l.contact_id = e.contact_id WHERE e.type = ? AND e.occurred_at >= ? "
        if events < recipients
        else "FROM ledger l CROSS JOIN events e ON e.contact_id = l.contact_id AND e.type = ? AND e.occurred_at >= ? "
        "WHERE l.source_kind = 'campaign' AND l.source = ? AND l.stage = '' "
    )
    first = (name, event, started) if events < recipients else (event, started, name)
    row = db.conn.execute(
        "SELECT count(DISTINCT e.contact_id), count(*), total(CASE WHEN json_type(e.properties, ?) IN "
        "('integer', 'real') AND abs(json_extract(e.properties, ?)) <= ? THEN json_extract(e.properties, ?) END) "
        f"{join}"
        "AND l.state = 'sent' AND e.occurred_at >= l.sent_at "
        "AND e.occurred_at < strftime('%Y-%m-%dT%H:%M:%SZ', l.sent_at, ?) AND +e.occurred_at >= ? "
        "AND +e.occurred_at < ?",
        (path, path, LARGEST_AMOUNT, path, *first, f"+{within_seconds} seconds", window.since, window.until),
    ).fetchone()
    return int(row[0]), int(row[1]), float(row[2] or 0.0)


@dataclass(frozen=True)
class StepCounts:
    """One workflow step: runs that did it, its messages by state, what people did with them, and the runs that
    are on it now (active: waiting there) or stopped there (exited, ended)."""

    entered: int
    states: dict[str, int]
    engaged: Engaged
    on_step: dict[str, int] = field(default_factory=dict)


def workflow_runs(db: StateDatabase, name: str) -> tuple[dict[str, int], str | None, str | None]:
    """The workflow's runs by state, and when the first and the last one started."""
    states = dict(db.conn.execute("SELECT state, count(*) FROM workflow_runs WHERE workflow = ? GROUP BY 1", (name,)))
    first, last = db.conn.execute(
        "SELECT min(started_at), max(started_at) FROM workflow_runs WHERE workflow = ?", (name,)
    ).fetchone()
    return {str(k): int(v) for k, v in states.items()}, first, last


def workflow_steps(db: StateDatabase, name: str, window: Window, *, engagement: bool = True) -> dict[str, StepCounts]:
    """Each step that runs reached (by step key), with its messages and their engagement (`engagement=False`:
    without, for a caller that reads it from the counters)."""
    entered = dict(
        db.conn.execute(
            "SELECT s.step, count(DISTINCT s.run_id) FROM workflow_steps s JOIN workflow_runs r ON r.id = s.run_id "
            "WHERE r.workflow = ? GROUP BY 1",
            (name,),
        )
    )
    states: dict[str, dict[str, int]] = defaultdict(dict)
    for step, state, count in db.conn.execute(
        "SELECT stage, state, count(*) FROM ledger WHERE workflow = ? GROUP BY 1, 2", (name,)
    ):
        states[str(step)][str(state)] = int(count)
    engaged = (
        {}
        if not engagement
        else {
            str(row[0]): _engaged(row[1:])
            for row in db.conn.execute(
                f"SELECT l.stage, {_engaged_columns('g')} "
                "FROM ledger l JOIN engagement g ON g.ledger_id = l.id WHERE l.workflow = ? "
                "AND +g.at >= ? AND +g.at < ? GROUP BY 1",
                (name, window.since, window.until),
            )
        }
    )
    on_step: dict[str, dict[str, int]] = defaultdict(dict)
    for step, state, count in db.conn.execute(
        "SELECT step, state, count(*) FROM workflow_runs WHERE workflow = ? AND state IN ('active', 'exited', "
        "'ended') AND step != '' GROUP BY 1, 2",
        (name,),
    ):
        on_step[str(step)][str(state)] = int(count)
    steps = set(entered) | set(states) | set(engaged) | set(on_step)
    return {
        str(step): StepCounts(
            int(entered.get(step, 0)), states.get(str(step), {}), engaged.get(str(step), Engaged()), on_step[str(step)]
        )
        for step in steps
    }


# --- the same figures from the counters (state/rollups.py), for reports over all time -----------------------------

_PEOPLE = {"openers", "clickers", "unsubscribed", "complained"}


def _from_metrics(values: dict[str, float]) -> Engaged:
    return Engaged(
        openers=int(values.get("openers", 0)),
        opens=int(values.get("opens", 0)),
        clickers=int(values.get("clickers", 0)),
        clicks=int(values.get("clicks", 0)),
        machine_opens=int(values.get("machine_opens", 0)),
        machine_clicks=int(values.get("machine_clicks", 0)),
        unsubscribed=int(values.get("unsubscribed", 0)),
        complained=int(values.get("complained", 0)),
        bounced_hard=int(values.get("bounced_hard", 0)),
        bounced_soft=int(values.get("bounced_soft", 0)),
        bounced_after_sent=int(values.get("bounced_after_sent", 0)),
    )


def counted_engagement(db: StateDatabase, kind: str, name: str) -> tuple[Engaged, dict[str, Engaged]]:
    """As `campaign_engagement` over all time, from the counters: stage '*' holds the people across stages, the
    totals add up the stages."""
    by_stage: dict[str, dict[str, float]] = defaultdict(dict)
    for stage, metric, value in db.conn.execute(
        "SELECT stage, metric, value FROM report_counts WHERE kind = ? AND name = ? AND metric NOT LIKE '%:%'",
        (kind, name),
    ):
        by_stage[str(stage)][str(metric)] = float(value)
    across = by_stage.pop("*", {})
    totals: dict[str, float] = defaultdict(float)
    for values in by_stage.values():
        for metric, value in values.items():
            if metric not in _PEOPLE:
                totals[metric] += value
    return _from_metrics({**totals, **across}), {stage: _from_metrics(v) for stage, v in by_stage.items()}


def counted_links(db: StateDatabase, kind: str, name: str) -> list[tuple[str, int, int]]:
    rows = db.conn.execute(
        "SELECT url, people, clicks FROM report_links WHERE kind = ? AND name = ? ORDER BY 2 DESC, 3 DESC, 1",
        (kind, name),
    )
    return [(str(url), int(people), int(clicks)) for url, people, clicks in rows]


def counted_hours(db: StateDatabase, kind: str, name: str) -> list[tuple[str, int, int]]:
    rows = db.conn.execute(
        "SELECT hour, opens, clicks FROM report_hours WHERE kind = ? AND name = ? ORDER BY hour", (kind, name)
    )
    return [(str(hour), int(opens), int(clicks)) for hour, opens, clicks in rows]


def counted_countries(db: StateDatabase, name: str) -> list[tuple[str, int, int]]:
    """(the contact's country, recipients, openers), most recipients first."""
    return _by_country(db, name, "recipients", "openers")


def counted_ip_countries(db: StateDatabase, name: str) -> list[tuple[str, int, int]]:
    """(the country of the address, people, opens and clicks), most people first."""
    return _by_country(db, name, "ip_people", "ip_events")


def _by_country(db: StateDatabase, name: str, first: str, second: str) -> list[tuple[str, int, int]]:
    """The counters `first:CC` and `second:CC` of a campaign, per country, most `first` then `second` first."""
    found: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for metric, value in db.conn.execute(
        "SELECT metric, value FROM report_counts WHERE kind = 'campaign' AND name = ? AND stage = '' "
        "AND (metric LIKE ? OR metric LIKE ?)",
        (name, first + ":%", second + ":%"),
    ):
        what, _, country = str(metric).partition(":")
        found[country][0 if what == first else 1] += int(value)
    return sorted(((c, a, b) for c, (a, b) in found.items()), key=lambda row: (-row[1], -row[2], row[0]))


def counted_goal(db: StateDatabase, name: str) -> tuple[int, int, float]:
    """As `conversions` over all time, from the counters: (people who converted, conversions, revenue)."""
    values = dict(
        db.conn.execute(
            "SELECT metric, value FROM report_counts WHERE kind = 'campaign' AND name = ? AND stage = '' "
            "AND metric IN ('converted', 'conversions', 'revenue')",
            (name,),
        ).fetchall()
    )
    return int(values.get("converted", 0)), int(values.get("conversions", 0)), float(values.get("revenue", 0.0))


@dataclass(frozen=True)
class Recipient:
    """One message of a campaign or workflow: who, which stage or step, what happened, and what they did."""

    email: str
    stage: str
    state: str
    reply: str
    opens: int
    clicks: int
    unsubscribed: bool


def recipients(db: StateDatabase, kind: str, name: str, *, limit: int, offset: int = 0) -> list[Recipient]:
    """The messages of a campaign (or a workflow) in the order they were queued, `limit` from `offset`."""
    which = "l.source_kind = 'campaign' AND l.source = ?" if kind == "campaign" else "l.workflow = ?"
    rows = db.conn.execute(
        "SELECT coalesce(c.email, '(erased)'), l.stage, l.state, coalesce(l.last_reply, ''), "
        "(SELECT count(*) FROM engagement g WHERE g.ledger_id = l.id AND g.action = 'opened' AND g.machine = 0), "
        "(SELECT count(*) FROM engagement g WHERE g.ledger_id = l.id AND g.action = 'clicked' AND g.machine = 0), "
        "EXISTS (SELECT 1 FROM engagement g WHERE g.ledger_id = l.id AND g.action = 'unsubscribed') "
        f"FROM ledger l LEFT JOIN contacts c ON c.id = l.contact_id WHERE {which} ORDER BY l.id LIMIT ? OFFSET ?",
        (name, limit, offset),
    )
    return [Recipient(str(e), str(s), str(st), str(r), int(o), int(c), bool(u)) for e, s, st, r, o, c, u in rows]
