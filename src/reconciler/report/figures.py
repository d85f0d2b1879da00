"""The figures of a report, computed from what the state database recorded: typed, so the text, JSON and CSV
formats (and later pages) show the same numbers.

Rates count people, never machines: an open or a click by a privacy proxy or a link scanner is counted apart and
never makes a rate. Every rate is of the messages delivered (sent, less those that bounced afterwards), except the
click-to-open rate (people who clicked, of people who opened). A rate whose base is zero is None, shown as "-".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

from reconciler.errors import UsageError, did_you_mean
from reconciler.spec.types import format_duration
from reconciler.state import reports, settings
from reconciler.state.postgres import StateDatabase
from reconciler.state.reports import Engaged, Window
from reconciler.state.workflow_reads import workflow_info, workflow_names

LINKS_SHOWN = 100
"""Links a report lists (the most clicked); a campaign with a link per recipient would otherwise make a page of
megabytes. `links_total` says how many there were."""
PREVIOUS = 5
"""Campaigns before this one whose average rates a report shows beside its own."""
HOURLY_FOR = timedelta(hours=72)
"""The timeline is hourly for this long after the start, then daily."""
PENDING = ("queued", "deferred", "sending")
ALL_TIME = Window()


class Figures(BaseModel):
    model_config = ConfigDict(frozen=True)


class Delivery(Figures):
    """What happened to the messages."""

    recipients: int
    sent: int
    pending: int
    delivered: int
    bounced_hard: int
    bounced_soft: int
    failed: int
    uncertain: int
    skipped: int


class Engagement(Figures):
    """What people (and, apart, machines) did with them; unique counts are people."""

    unique_opens: int
    total_opens: int
    unique_clicks: int
    total_clicks: int
    machine_opens: int
    machine_clicks: int
    unsubscribes: int
    complaints: int


class Rates(Figures):
    open_rate: float | None
    click_rate: float | None
    click_to_open: float | None
    unsubscribe_rate: float | None
    bounce_rate: float | None


class StageReport(Figures):
    stage: str
    delivery: Delivery
    engagement: Engagement
    rates: Rates


class Link(Figures):
    url: str
    unique_clicks: int
    total_clicks: int


class Moment(Figures):
    """Opens and clicks by people in one hour (the first 72 hours) or one day (after)."""

    start: str
    opens: int
    clicks: int


class Country(Figures):
    country: str
    recipients: int
    unique_opens: int


class IpCountry(Figures):
    """Where opens and clicks came from, by the GeoIP database (only with one configured)."""

    country: str
    people: int
    opens_and_clicks: int


class GoalFigures(Figures):
    event: str
    within: str
    converted: int
    conversions: int
    conversion_rate: float | None
    revenue: float
    cost: float | None
    roi: float | None


class CampaignReport(Figures):
    kind: str = "campaign"
    name: str
    subject: str
    started_at: str | None
    finished_at: str | None
    delivery: Delivery
    engagement: Engagement
    rates: Rates
    previous: Rates | None
    """The average rates of up to PREVIOUS campaigns that started before this one."""
    stages: list[StageReport]
    links: list[Link]
    links_total: int
    timeline: list[Moment]
    weekday_hours: list[list[int]]
    """Opens by people, [weekday Monday=0][hour], in the workspace's time zone."""
    timezone: str
    countries: list[Country]
    ip_countries: list[IpCountry]
    """Empty unless Settings name a GeoIP database (tracking.geoip_database)."""
    goal: GoalFigures | None


def _engaged(db: StateDatabase, kind: str, name: str, window: Window) -> tuple[Engaged, dict[str, Engaged]]:
    """Over all time from the counters; within a window from the facts."""
    if window == ALL_TIME:
        return reports.counted_engagement(db, kind, name)
    if kind == "campaign":
        return reports.campaign_engagement(db, name, window)
    steps = reports.workflow_steps(db, name, window)
    return Engaged(), {step: counted.engaged for step, counted in steps.items()}


def _hours(db: StateDatabase, name: str, window: Window) -> list[tuple[str, int, int]]:
    return reports.counted_hours(db, "campaign", name) if window == ALL_TIME else reports.hourly(db, name, window)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _delivery(states: dict[str, int], engaged: Engaged) -> Delivery:
    """A message the relay refused as a bounce is a bounce, not also a failure; one that bounced after the relay
    took it was sent but not delivered."""
    sent = states.get("sent", 0)
    at_the_relay = max(0, engaged.bounced_hard + engaged.bounced_soft - engaged.bounced_after_sent)
    return Delivery(
        recipients=sum(states.values()),
        sent=sent,
        pending=sum(states.get(state, 0) for state in PENDING),
        delivered=max(0, sent - engaged.bounced_after_sent),
        bounced_hard=engaged.bounced_hard,
        bounced_soft=engaged.bounced_soft,
        failed=max(0, states.get("failed", 0) - at_the_relay),
        uncertain=states.get("uncertain", 0),
        skipped=states.get("skipped", 0),
    )


def _engagement(engaged: Engaged) -> Engagement:
    return Engagement(
        unique_opens=engaged.openers,
        total_opens=engaged.opens,
        unique_clicks=engaged.clickers,
        total_clicks=engaged.clicks,
        machine_opens=engaged.machine_opens,
        machine_clicks=engaged.machine_clicks,
        unsubscribes=engaged.unsubscribed,
        complaints=engaged.complained,
    )


def _rates(delivery: Delivery, engaged: Engaged, *, people: int | None = None) -> Rates:
    """Rates of people: `people` mailed (a whole campaign: those its first message reached, as its stages go to
    some of the same people again), else the messages delivered (one stage: a message each)."""
    base = delivery.delivered if people is None else people
    return Rates(
        open_rate=_ratio(engaged.openers, base),
        click_rate=_ratio(engaged.clickers, base),
        click_to_open=_ratio(engaged.clickers, engaged.openers),
        unsubscribe_rate=_ratio(engaged.unsubscribed, base),
        bounce_rate=_ratio(delivery.bounced_hard + delivery.bounced_soft + delivery.failed, delivery.recipients),
    )


def _merged(states: dict[str, dict[str, int]]) -> dict[str, int]:
    """Every stage's messages by state, added up."""
    merged: dict[str, int] = {}
    for by_state in states.values():
        for state, count in by_state.items():
            merged[state] = merged.get(state, 0) + count
    return merged


def _stage_engaged(stages: dict[str, Engaged], stage: str) -> Engaged:
    return stages.get(stage, Engaged())


class _Summary(NamedTuple):
    """What every view of a campaign starts from: its messages by stage and state, and what people did."""

    states: dict[str, dict[str, int]]
    total: Engaged
    stages: dict[str, Engaged]
    delivery: Delivery
    rates: Rates

    @property
    def first_delivered(self) -> int:
        """The first message's deliveries (the base of the goal's conversion rate)."""
        return _delivery(self.states.get("", {}), self.stages.get("", Engaged())).delivered


def _summary(db: StateDatabase, name: str, window: Window) -> _Summary:
    states = reports.states_by_stage(db, name)
    total, stages = _engaged(db, "campaign", name, window)
    delivery = _delivery(_merged(states), total)
    first = _delivery(states.get("", {}), stages.get("", Engaged()))
    return _Summary(states, total, stages, delivery, _rates(delivery, total, people=first.delivered))


def campaign_report(db: StateDatabase, name: str, window: Window = ALL_TIME) -> CampaignReport:
    """Every figure of one campaign."""
    found = reports.campaign(db, name)
    if found is None:
        known = [c.name for c in reports.started_campaigns(db)] + workflow_names(db)
        raise UsageError(f"no campaign or workflow named {name!r}; {did_you_mean(name, known, otherwise='')}".rstrip())
    summary = _summary(db, name, window)
    states, total, stages, delivery = summary.states, summary.total, summary.stages, summary.delivery
    zone = settings.load(db).settings.timezone
    hours = _hours(db, name, window)
    counted = window == ALL_TIME
    links = reports.counted_links(db, "campaign", name) if counted else reports.links(db, name, window)
    places = reports.counted_countries(db, name) if counted else reports.countries(db, name, window)
    located = reports.counted_ip_countries(db, name) if counted else reports.ip_countries(db, name, window)
    return CampaignReport(
        name=name,
        subject=found.subject,
        started_at=found.started_at or None,
        finished_at=found.finished_at,
        delivery=delivery,
        engagement=_engagement(total),
        rates=summary.rates,
        previous=_previous(db, name, found.started_at, window),
        stages=[_stage(stage, by_state, _stage_engaged(stages, stage)) for stage, by_state in sorted(states.items())],
        links=[Link(url=u, unique_clicks=p, total_clicks=c) for u, p, c in links[:LINKS_SHOWN]],
        links_total=len(links),
        timeline=_timeline(hours, found.started_at),
        weekday_hours=_grid(hours, zone),
        timezone=zone,
        countries=[Country(country=c, recipients=r, unique_opens=o) for c, r, o in places],
        ip_countries=[IpCountry(country=c, people=p, opens_and_clicks=e) for c, p, e in located],
        goal=_goal(db, found, summary.first_delivered, window),
    )


def _stage(stage: str, states: dict[str, int], engaged: Engaged) -> StageReport:
    delivery = _delivery(states, engaged)
    return StageReport(
        stage=stage or "(first)", delivery=delivery, engagement=_engagement(engaged), rates=_rates(delivery, engaged)
    )


def _previous(db: StateDatabase, name: str, started_at: str, window: Window) -> Rates | None:
    """The average of each rate over the campaigns that started before this one (those that have the rate)."""
    earlier = [c for c in reports.started_campaigns(db) if c.started_at < started_at and c.name != name][:PREVIOUS]
    if not earlier or not started_at:
        return None
    rates = [_summary(db, other.name, window).rates for other in earlier]

    def mean(key: str) -> float | None:
        values = [getattr(r, key) for r in rates if getattr(r, key) is not None]
        return round(sum(values) / len(values), 4) if values else None

    return Rates(**{key: mean(key) for key in Rates.model_fields})


def _timeline(hours: list[tuple[str, int, int]], started_at: str | None) -> list[Moment]:
    """Hourly buckets for the first 72 hours after the start, then one per day (UTC)."""
    if not started_at:
        return []
    start = datetime.fromisoformat(started_at)
    buckets: dict[str, list[int]] = {}
    for hour, opens, clicks in hours:
        moment = datetime.fromisoformat(hour + ":00:00+00:00")
        key = f"{hour}:00Z" if moment - start < HOURLY_FOR else f"{hour[:10]}"
        bucket = buckets.setdefault(key, [0, 0])
        bucket[0] += opens
        bucket[1] += clicks
    return [Moment(start=key, opens=o, clicks=c) for key, (o, c) in buckets.items()]


def _grid(hours: list[tuple[str, int, int]], zone: str) -> list[list[int]]:
    """Opens by weekday and hour on the workspace's clock (by the UTC hour they fell in)."""
    grid = [[0] * 24 for _ in range(7)]
    local = ZoneInfo(zone)
    for hour, opens, _ in hours:
        moment = datetime.fromisoformat(hour + ":00:00").replace(tzinfo=UTC).astimezone(local)
        grid[moment.weekday()][moment.hour] += opens
    return grid


def _goal(db: StateDatabase, found: reports.StartedCampaign, delivered: int, window: Window) -> GoalFigures | None:
    """Conversions of the first message's recipients (a stage is a reminder of the same offer); the rate is of
    the first message's deliveries."""
    name, goal, spent = found.name, found.goal, found.cost
    if goal is None:
        return None
    if window == ALL_TIME:
        people, conversions, revenue = reports.counted_goal(db, name)
    else:
        within = int(goal.within.total_seconds())
        people, conversions, revenue = reports.conversions(
            db, name, event=goal.event, within_seconds=within, value=goal.value, window=window
        )
    return GoalFigures(
        event=goal.event,
        within=format_duration(goal.within),
        converted=people,
        conversions=conversions,
        conversion_rate=_ratio(people, delivered),
        revenue=round(revenue, 2),
        cost=spent,
        roi=round((revenue - spent) / spent, 4) if spent else None,
    )


class StepReport(Figures):
    step: str
    entered: int
    """Runs that reached the step: those that did it, and those on it now or stopped on it."""
    completed: int
    """Runs that did it and went on."""
    waiting: int
    exited: int
    """Runs that exited on it (an `exit` step, or their exit event came while they were on it) or ended there (their
    step was removed)."""
    sent: int
    delivered: int
    pending: int
    failed: int
    skipped: int
    engagement: Engagement
    open_rate: float | None
    click_rate: float | None


class WorkflowReport(Figures):
    kind: str = "workflow"
    name: str
    status: str
    runs: dict[str, int]
    first_run: str | None
    last_run: str | None
    steps: list[StepReport]


def workflow_report(db: StateDatabase, name: str, window: Window = ALL_TIME) -> WorkflowReport:
    """Runs and each step: how many reached it, its messages, and what people did with them."""
    info = workflow_info(db, name)
    if info is None:
        raise UsageError(f"no campaign or workflow named {name!r}")
    runs, first, last = reports.workflow_runs(db, name)
    counted = reports.workflow_steps(db, name, window, engagement=window != ALL_TIME)
    if window == ALL_TIME:
        _, by_step = reports.counted_engagement(db, "workflow", name)
        for step, engaged in by_step.items():
            before = counted.get(step, reports.StepCounts(0, {}, Engaged()))
            counted[step] = reports.StepCounts(before.entered, before.states, engaged, before.on_step)
    order = list(info.steps) + sorted(set(counted) - set(info.steps))
    steps = []
    for step in order:
        found = counted.get(step)
        if found is None:
            found = reports.StepCounts(0, {}, Engaged())
        delivery = _delivery(found.states, found.engaged)
        steps.append(
            StepReport(
                step=step,
                entered=found.entered + sum(found.on_step.values()),
                completed=found.entered,
                waiting=found.on_step.get("active", 0),
                exited=found.on_step.get("exited", 0) + found.on_step.get("ended", 0),
                sent=delivery.sent,
                delivered=delivery.delivered,
                pending=delivery.pending,
                failed=delivery.failed,
                skipped=delivery.skipped,
                engagement=_engagement(found.engaged),
                open_rate=_ratio(found.engaged.openers, delivery.delivered),
                click_rate=_ratio(found.engaged.clickers, delivery.delivered),
            )
        )
    return WorkflowReport(name=name, status=info.status, runs=runs, first_run=first, last_run=last, steps=steps)


class OverviewRow(Figures):
    kind: str
    name: str
    started: str | None
    recipients: int
    delivered: int
    open_rate: float | None
    click_rate: float | None
    unsubscribes: int
    revenue: float | None


def overview(db: StateDatabase, window: Window = ALL_TIME) -> list[OverviewRow]:
    """Every campaign that started and every workflow, newest first (a workflow by its last run)."""
    rows = []
    for found in reports.started_campaigns(db):
        summary = _summary(db, found.name, window)
        goal = _goal(db, found, summary.first_delivered, window)
        rows.append(
            OverviewRow(
                kind="campaign",
                name=found.name,
                started=found.started_at,
                recipients=summary.delivery.recipients,
                delivered=summary.delivery.delivered,
                open_rate=summary.rates.open_rate,
                click_rate=summary.rates.click_rate,
                unsubscribes=summary.total.unsubscribed,
                revenue=goal.revenue if goal else None,
            )
        )
    for name in workflow_names(db):
        report = workflow_report(db, name, window)
        sent = sum(s.sent for s in report.steps)
        delivered = sum(s.delivered for s in report.steps)
        openers = sum(s.engagement.unique_opens for s in report.steps)
        clickers = sum(s.engagement.unique_clicks for s in report.steps)
        rows.append(
            OverviewRow(
                kind="workflow",
                name=name,
                started=report.last_run,
                recipients=sent,
                delivered=delivered,
                open_rate=_ratio(openers, delivered),
                click_rate=_ratio(clickers, delivered),
                unsubscribes=sum(s.engagement.unsubscribes for s in report.steps),
                revenue=None,
            )
        )
    return sorted(rows, key=lambda row: row.started or "", reverse=True)
