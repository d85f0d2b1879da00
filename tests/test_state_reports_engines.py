"""What reports read of the state, on both engines (the `state_db` fixture: SQLite, then PostgreSQL): the launch of
tests/report_state.py (five people, a reminder stage, a later campaign, what each did written beside them) built
through the state's own writers (apply, start, claims and outcomes, engagement, a provider's bounce, events, an
unsubscribe), then every figure of its report, over all time (the counters) and in windows (the facts), the
overview, each recipient, a workflow's runs and steps, and the Python types of what comes back; with the same
assertions on each engine. A PostgreSQL database whose collation is a language's (English: 'a' before 'B') still
lists links in SQLite's byte order."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from journeys import LISTS, SETTINGS, TEMPLATE
from reconciler.apply import apply_plan, observe_for
from reconciler.check import check
from reconciler.clock import parse_instant
from reconciler.load import load_workspace
from reconciler.plan import make_plan
from reconciler.report import figures, render
from reconciler.start import start_due, start_stages
from reconciler.state import engagement, ledger, reports, rollups
from reconciler.state.contacts import erase_contact
from reconciler.state.db import open_postgres, write
from reconciler.state.reports import Window
from reconciler.state.subscribers import (
    change_subscriptions,
    contact_for,
    insert_events,
    message_target,
    provider_event,
    unsubscribe,
)
from report_state import LATER, LAUNCH, PEOPLE

BLOCKING = ("bounced", "complained", "unsubscribed")
EVERYTHING = Window(since="2000-01-01T00:00:00Z")
"""A window from before anything happened: every fact, counted from the facts instead of the counters."""


def _workspace(root: Path) -> None:
    files = {
        "spec/settings.yaml": SETTINGS.format(port=2525, extra=""),  # nothing is sent: outcomes are recorded
        "spec/lists.yaml": LISTS,
        "templates/mail/a.mjml": TEMPLATE,
        "templates/mail/b.mjml": TEMPLATE,
        "templates/mail/c.mjml": TEMPLATE,
        "campaigns/launch.yaml": LAUNCH,
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text.lstrip("\n"), encoding="utf-8")


def _apply(root: Path, db: Any, now: datetime) -> None:
    desired, problems = load_workspace(root)
    problems += check(desired)
    assert not [p for p in problems if p.severity == "error"], problems
    apply_plan(db, make_plan(desired, observe_for(db, desired, now=now), now=now), desired, now=now)


def _deliver(db: Any, at: str) -> None:
    """Every due message accepted by the relay at `at`, as the dispatcher records it."""
    for source in ledger.due_sources(db, now=at):
        for row in ledger.due_rows(db, source, now=at, after_id=0, limit=100):
            claimed = ledger.claim(
                db,
                row.id,
                source=source,
                dispatcher="d1",
                message_id=f"<{row.id}@example.com>",
                blocking=BLOCKING,
                marketing=True,
                at=at,
            )
            assert claimed == "claimed", (source.name, row.contact.email, claimed)
            ledger.record(db, ledger.Outcome(row.id, "sent", "250 ok", at), source=source)


def _row(db: Any, person: str, source: str, stage: str = "") -> int:
    found = db.conn.execute(
        "SELECT l.id FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE c.email = ? AND l.source = ? "
        "AND l.stage = ?",
        (f"{person}@example.com", source, stage),
    ).fetchone()
    assert found is not None, (person, source, stage)
    return int(found[0])


def _did(db: Any, person: str, action: str, at: str, *, machine: bool = False, url: str | None = None) -> None:
    fact = engagement.Engagement(_row(db, person, "launch"), action, at, machine=machine, detail=url)  # type: ignore[arg-type]
    with write(db):
        engagement.record(db, [fact])


def _purchase(db: Any, person: str, at: str, total: Any) -> None:
    insert_events(db, [(f"{person}@example.com", "purchase", at, {"total": total}, None)], at=at)


def build(root: Path, db: Any) -> None:
    """report_state.seed's campaigns and facts (without its welcome workflow), written by the state's writers."""
    _workspace(root)
    at = "2030-03-01T09:00:00Z"
    for person in PEOPLE:
        with write(db):
            contact = contact_for(db, f"{person}@example.com", at=at)
            change_subscriptions(db, contact, {"news": "subscribed"}, at=at, source="api")
    _apply(root, db, parse_instant(at))
    launch = parse_instant("2030-03-02T10:00:00Z")
    assert start_due(db, now=launch) == ["launch"]
    _deliver(db, "2030-03-02T10:00:00Z")
    _did(db, "a", "opened", "2030-03-02T10:10:00Z")  # a: 3 opens, 2 clicks on X
    _did(db, "a", "clicked", "2030-03-02T10:11:00Z", url="https://shop.example.com/x")
    _did(db, "a", "clicked", "2030-03-02T10:12:00Z", url="https://shop.example.com/x")
    _did(db, "a", "opened", "2030-03-02T11:00:00Z")
    _did(db, "a", "opened", "2030-03-05T12:00:00Z")  # day 4: in the daily part of the timeline
    _did(db, "b", "opened", "2030-03-02T10:05:00Z", machine=True)  # b: a proxy's open, then their own
    _did(db, "b", "opened", "2030-03-02T10:30:00Z")
    _did(db, "c", "clicked", "2030-03-02T10:01:00Z", machine=True, url="https://shop.example.com/y")  # a scanner
    _did(db, "d", "clicked", "2030-03-02T11:30:00Z", url="https://shop.example.com/y")  # d: a click, images off
    provider_event(  # e: the mailbox does not exist, reported after the message was accepted
        db, "generic", "bounce-1", email="e@example.com", kind="bounce", hard=True, at="2030-03-02T10:20:00Z",
        detail="550 5.1.1 no such user",
    )  # fmt: skip
    _purchase(db, "a", "2030-03-02T11:00:00Z", 30)  # within 2 days: 30
    _purchase(db, "b", "2030-03-03T09:00:00Z", 10)  # within: 10
    _purchase(db, "b", "2030-03-03T10:00:00Z", "abc")  # a conversion, no revenue
    _purchase(db, "d", "2030-03-05T11:00:00Z", 99)  # three days later: not counted
    _purchase(db, "c", "2030-03-02T09:00:00Z", 50)  # before the message: not counted
    assert start_stages(db, now=parse_instant("2030-03-03T10:00:00Z")) == ["launch/reminder"]  # a, b, c, d
    _deliver(db, "2030-03-03T10:00:00Z")
    (root / "campaigns/later.yaml").write_text(LATER.lstrip())
    later = parse_instant("2030-03-04T10:00:00Z")
    _apply(root, db, later)
    assert start_due(db, now=later) == ["later"]
    _deliver(db, "2030-03-04T10:00:00Z")
    target = message_target(db, _row(db, "c", "launch"))  # c unsubscribes with the launch's link
    assert target is not None
    unsubscribe(db, target, at="2030-03-04T12:00:00Z", source="one-click", ip=None)


@pytest.fixture
def built(tmp_path: Path, state_db: Any) -> Any:
    build(tmp_path, state_db)
    return state_db


def test_a_campaigns_figures_over_all_time_and_from_the_facts(built: Any) -> None:
    launch = figures.campaign_report(built, "launch")
    assert launch.delivery.model_dump() == {
        "recipients": 9,  # 5 first messages + 4 reminders
        "sent": 9,
        "pending": 0,
        "delivered": 8,  # e's first message bounced after it was accepted
        "bounced_hard": 1,
        "bounced_soft": 0,
        "failed": 0,
        "uncertain": 0,
        "skipped": 0,
    }
    assert launch.engagement.model_dump() == {
        "unique_opens": 3,  # a, b, and d (whose click is an open with images off)
        "total_opens": 4,  # a 3, b 1 (the proxy's open is apart)
        "unique_clicks": 2,  # a, d
        "total_clicks": 3,
        "machine_opens": 1,
        "machine_clicks": 1,
        "unsubscribes": 1,  # c
        "complaints": 0,
    }
    assert (launch.rates.open_rate, launch.rates.click_rate) == (0.75, 0.5)
    assert [(s.stage, s.delivery.sent, s.engagement.unique_opens) for s in launch.stages] == [
        ("(first)", 5, 3),
        ("reminder", 4, 0),
    ]
    assert [link.model_dump() for link in launch.links] == [
        {"url": "https://shop.example.com/x", "unique_clicks": 1, "total_clicks": 2},
        {"url": "https://shop.example.com/y", "unique_clicks": 1, "total_clicks": 1},
    ]
    assert launch.goal is not None and launch.goal.model_dump() == {
        "event": "purchase",
        "within": "2d",
        "converted": 2,  # a and b
        "conversions": 3,  # a's, and b's two (one without a number)
        "conversion_rate": 0.5,  # of the 4 first messages delivered
        "revenue": 40.0,
        "cost": 100.0,
        "roi": -0.6,
    }
    assert [(m.start, m.opens, m.clicks) for m in launch.timeline] == [
        ("2030-03-02T10:00Z", 2, 2),
        ("2030-03-02T11:00Z", 1, 1),
        ("2030-03-05", 1, 0),
    ]
    assert sum(map(sum, launch.weekday_hours)) == 4
    assert [(c.country, c.recipients, c.unique_opens) for c in launch.countries] == [("?", 5, 3)]
    assert launch.ip_countries == []
    assert figures.campaign_report(built, "launch", EVERYTHING) == launch  # the facts say what the counters say
    later = figures.campaign_report(built, "later")
    assert later.previous is not None and later.previous.open_rate == 0.75  # the launch, before it
    assert render.as_json(launch) == render.as_json(figures.campaign_report(built, "launch", EVERYTHING))


def test_a_window_counts_what_happened_in_it(built: Any) -> None:
    day_one = Window(since="2030-03-02T00:00:00Z", until="2030-03-03T00:00:00Z")
    launch = figures.campaign_report(built, "launch", day_one)
    assert (launch.engagement.unique_opens, launch.engagement.total_opens) == (3, 3)  # a's day-4 open is later
    assert launch.goal is not None and (launch.goal.converted, launch.goal.conversions) == (1, 1)
    assert launch.goal.revenue == 30.0  # b bought on the 3rd
    engaged, stages = reports.campaign_engagement(built, "launch", day_one)
    assert (engaged.openers, engaged.clickers, engaged.bounced_hard, engaged.bounced_after_sent) == (3, 2, 1, 1)
    assert set(stages) == {""}
    assert reports.hourly(built, "launch", day_one) == [("2030-03-02T10", 2, 2), ("2030-03-02T11", 1, 1)]
    assert reports.links(built, "launch", day_one) == [
        ("https://shop.example.com/x", 1, 2),
        ("https://shop.example.com/y", 1, 1),
    ]
    nothing = Window(since="2031-01-01T00:00:00Z")
    assert figures.campaign_report(built, "launch", nothing).engagement.total_opens == 0
    assert reports.conversions(
        built, "launch", event="purchase", within_seconds=7200, value="total", window=EVERYTHING
    ) == (1, 1, 30.0)  # within two hours of the message: a alone
    assert reports.conversions(
        built, "launch", event="purchase", within_seconds=2 * 86400, value=None, window=EVERYTHING
    ) == (2, 3, 0.0)


def test_goal_figures_are_the_same_whichever_side_is_read_first(built: Any) -> None:
    before = reports.conversions(
        built, "launch", event="purchase", within_seconds=2 * 86400, value="total", window=EVERYTHING
    )
    for n in range(12):  # more purchases than recipients: read from the purchases' side no more
        _purchase(built, "stranger", f"2030-03-02T12:{n:02d}:00Z", 1000)
    _purchase(built, "a", "2030-03-02T12:30:00Z", 1e308)  # absurd amounts are left out
    _purchase(built, "a", "2030-03-02T12:31:00Z", 1e308)
    _purchase(built, "a", "2030-03-02T12:32:00Z", 12345678901234567890123456789)  # a number no float holds exactly
    after = reports.conversions(
        built, "launch", event="purchase", within_seconds=2 * 86400, value="total", window=EVERYTHING
    )
    assert after == (before[0], before[1] + 3, before[2]) == (2, 6, 40.0)
    assert reports.counted_goal(built, "launch") == after


def test_the_overview_and_each_recipient(built: Any) -> None:
    rows = {row.name: row for row in figures.overview(built)}
    assert [row.name for row in figures.overview(built)] == ["later", "launch"]  # newest first
    assert (rows["launch"].recipients, rows["launch"].delivered, rows["launch"].revenue) == (9, 8, 40.0)
    assert (rows["later"].recipients, rows["later"].open_rate, rows["later"].revenue) == (4, 0.0, None)
    assert figures.overview(built, EVERYTHING) == figures.overview(built)
    every = reports.recipients(built, "campaign", "launch", limit=-1)
    assert len(every) == 9 and [r.stage for r in every] == [""] * 5 + ["reminder"] * 4
    first = {r.email: dataclasses.astuple(r) for r in every if r.stage == ""}
    assert first["a@example.com"] == ("a@example.com", "", "sent", "250 ok", 3, 2, False)
    assert first["b@example.com"][4] == 1 and first["c@example.com"][4:] == (0, 0, True)
    assert reports.recipients(built, "campaign", "launch", limit=2, offset=4) == every[4:6]
    assert [c.name for c in reports.started_campaigns(built)] == ["later", "launch"]
    assert reports.states_by_stage(built, "launch") == {"": {"sent": 5}, "reminder": {"sent": 4}}


def test_counters_and_facts_keep_their_python_types(built: Any) -> None:
    """int for counts, float for money, on both engines (PostgreSQL's sum of a number is a Decimal)."""
    engaged, stages = reports.counted_engagement(built, "campaign", "launch")
    assert all(type(v) is int for v in dataclasses.astuple(engaged))
    for window in (EVERYTHING, Window(since="2030-03-02T10:00:00Z", until="2030-03-02T11:00:00Z")):
        engaged, stages = reports.campaign_engagement(built, "launch", window)
        assert all(type(v) is int for s in (engaged, *stages.values()) for v in dataclasses.astuple(s))
        for rows in (
            reports.links(built, "launch", window),
            reports.hourly(built, "launch", window),
            reports.countries(built, "launch", window),
            reports.ip_countries(built, "launch", window),
        ):
            assert all(type(a) is str and type(b) is int and type(c) is int for a, b, c in rows)
    people, conversions, revenue = reports.conversions(
        built, "launch", event="purchase", within_seconds=3600, value="total", window=EVERYTHING
    )
    assert (type(people), type(conversions), type(revenue)) == (int, int, float)
    assert [type(v) for v in reports.counted_goal(built, "launch")] == [int, int, float]
    runs, first, last = reports.workflow_runs(built, "nothing")
    assert (runs, first, last) == ({}, None, None)


def test_where_opens_and_clicks_came_from(built: Any) -> None:
    facts = [
        engagement.Engagement(_row(built, "a", "launch"), "clicked", "2030-03-02T12:00:00Z", detail="x", country="SE"),
        engagement.Engagement(_row(built, "a", "launch"), "opened", "2030-03-02T12:01:00Z", country="SE"),
        engagement.Engagement(_row(built, "b", "launch"), "opened", "2030-03-02T12:02:00Z", country="GB"),
        engagement.Engagement(_row(built, "d", "launch"), "opened", "2030-03-02T12:03:00Z", country="DE"),
        engagement.Engagement(_row(built, "c", "launch"), "opened", "2030-03-02T12:04:00Z", machine=True, country="US"),
    ]
    with write(built):
        engagement.record(built, facts)
    expected = [("SE", 1, 2), ("DE", 1, 1), ("GB", 1, 1)]  # most people, then most events, then the code
    assert reports.ip_countries(built, "launch", EVERYTHING) == expected
    assert reports.counted_ip_countries(built, "launch") == expected
    report = figures.campaign_report(built, "launch")
    assert [(c.country, c.people, c.opens_and_clicks) for c in report.ip_countries] == expected
    assert report == figures.campaign_report(built, "launch", EVERYTHING)


def test_a_rebuild_and_an_erasure_count_again_what_the_facts_say(built: Any) -> None:
    counted = figures.campaign_report(built, "launch")
    built.conn.execute("DELETE FROM report_counts")
    assert rollups.rebuild(built) == 11  # 9 opens and clicks, the bounce, the unsubscribe
    assert figures.campaign_report(built, "launch") == counted
    assert erase_contact(built, "a@example.com", at="2030-03-06T00:00:00Z")
    after = figures.campaign_report(built, "launch")
    assert after == figures.campaign_report(built, "launch", EVERYTHING)
    assert after.engagement.unique_opens == 2 and after.links[0].url == "https://shop.example.com/y"
    assert after.goal is not None and after.goal.revenue == 10.0


def _workflow(db: Any) -> None:
    """A workflow's runs, steps and messages as the runner writes them: three runs through `hi` (two sent, one
    skipped), one waiting on `rest`, one that exited there; b opened the message `hi` sent."""
    at = "2030-03-01T09:01:00Z"
    with write(db):
        for n, (person, state, step) in enumerate(
            (("a", "completed", ""), ("b", "active", "rest"), ("c", "exited", "rest")), start=1
        ):
            contact = db.conn.execute("SELECT id FROM contacts WHERE email = ?", (f"{person}@example.com",))
            contact_id = contact.fetchone()[0]
            db.conn.execute(
                "INSERT INTO workflow_runs(id, workflow, contact_id, state, step, entered_at, started_at, revision, "
                "trigger) VALUES (?, 'hello', ?, ?, ?, ?, ?, 'r1', 'consent 1')",
                (n, contact_id, state, step, at, f"2030-03-01T09:0{n}:00Z"),
            )
            db.conn.execute("INSERT INTO workflow_steps(run_id, step, at, result) VALUES (?, 'hi', ?, 'sent')", (n, at))
            db.conn.execute(
                "INSERT INTO ledger(source_kind, source, stage, contact_id, state, due_at, content_hash, revision, "
                "created_at, updated_at, workflow, sent_at) VALUES ('workflow', ?, 'hi', ?, ?, ?, 'h', 'r1', ?, ?, "
                "'hello', ?)",
                (str(n), contact_id, "skipped" if person == "c" else "sent", at, at, at, at),
            )
        hi = db.conn.execute("SELECT id FROM ledger WHERE workflow = 'hello' AND source = '2'").fetchone()[0]
        engagement.record(db, [engagement.Engagement(hi, "opened", "2030-03-01T10:00:00Z")])


def test_a_workflows_runs_and_steps(built: Any) -> None:
    _workflow(built)
    runs, first, last = reports.workflow_runs(built, "hello")
    assert (runs, first, last) == (
        {"completed": 1, "active": 1, "exited": 1},
        "2030-03-01T09:01:00Z",
        "2030-03-01T09:03:00Z",
    )
    steps = reports.workflow_steps(built, "hello", EVERYTHING)
    assert set(steps) == {"hi", "rest"}
    hi = steps["hi"]
    assert (hi.entered, hi.states, hi.on_step) == (3, {"sent": 2, "skipped": 1}, {})
    assert (hi.engaged.openers, hi.engaged.opens) == (1, 1)
    assert steps["rest"] == reports.StepCounts(0, {}, reports.Engaged(), {"active": 1, "exited": 1})
    counted, by_step = reports.counted_engagement(built, "workflow", "hello")
    assert by_step["hi"] == hi.engaged and counted.openers == 1
    assert [r.stage for r in reports.recipients(built, "workflow", "hello", limit=-1)] == ["hi"] * 3


@pytest.fixture
def english(postgres_cluster: Any) -> Iterator[Any]:
    """A PostgreSQL state database whose collation is English's (ICU), where 'a' sorts before 'B'."""
    url = postgres_cluster.database(icu_locale="en-US")
    db = open_postgres(url)
    try:
        yield db
    finally:
        db.close()
        postgres_cluster.drop(url)


@pytest.mark.postgresql
def test_links_are_listed_in_byte_order_whatever_the_databases_collation(tmp_path: Path, english: Any) -> None:
    (sorted_here,) = english.conn.execute("SELECT 'a' < 'B'").fetchone()
    assert sorted_here  # the database's own order is not SQLite's
    build(tmp_path, english)
    for url in ("https://shop.example.com/a", "https://shop.example.com/B"):
        _did(english, "b", "clicked", "2030-03-02T12:00:00Z", url=url)
    expected = [f"https://shop.example.com/{path}" for path in ("x", "B", "a", "y")]  # most clicks, then bytes
    assert [url for url, _, _ in reports.links(english, "launch", EVERYTHING)] == expected
    assert [url for url, _, _ in reports.counted_links(english, "campaign", "launch")] == expected
