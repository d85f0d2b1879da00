"""`reconciler report`: every figure of a campaign and a workflow, on a state whose facts were counted by hand.

Five people get a launch with a reminder stage; what each does is written beside them, and the expected figures
are added up in the comments. The campaign sends through a real SMTP server; opens, clicks, bounces,
unsubscribes and purchases are recorded the way the web service and the API record them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import reconciler
from journeys import Journey
from reconciler.state import engagement
from reconciler.state.db import write
from reconciler.state.subscribers import message_target, provider_event, unsubscribe
from smtp_sink import Sink, SinkServer

LAUNCH = """
kind: Campaign
name: launch
subject: "=HYPERLINK(\\"http://evil.example\\")"
template: mail/a
audience: {lists: [news]}
send_at: 2030-03-02T10:00:00Z
status: scheduled
goal: {event: purchase, within: 2d, value: total}
cost: 100
stages:
  - {name: reminder, template: mail/b, subject: Reminder, after: 1d}
"""

LATER = """
kind: Campaign
name: later
subject: Later
template: mail/c
audience: {lists: [news]}
send_at: 2030-03-04T10:00:00Z
status: scheduled
"""

WELCOME = """
kind: Workflow
name: hello
trigger: {subscribed: news}
steps:
  - {id: hi, send: mail/a, subject: Hi}
  - {id: rest, wait: 1d}
  - {id: tag-it, tag: welcomed}
"""

PEOPLE = ("a", "b", "c", "d", "e")


@pytest.fixture
def server() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    with SinkServer(sink) as port:
        yield sink, port


def _row(j: Journey, person: str, source: str, stage: str = "") -> int:
    row = j.db.conn.execute(
        "SELECT l.id FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE c.email = ? AND l.source = ? "
        "AND l.stage = ?",
        (f"{person}@example.com", source, stage),
    ).fetchone()
    assert row is not None, (person, source, stage)
    return int(row[0])


def _did(j: Journey, person: str, action: str, at: str, *, machine: bool = False, url: str | None = None) -> None:
    fact = engagement.Engagement(_row(j, person, "launch"), action, at, machine=machine, detail=url)  # type: ignore[arg-type]
    with write(j.db):
        engagement.record(j.db, [fact])


@pytest.fixture
def seeded(tmp_path: Path, server: tuple[Sink, int]) -> Journey:
    sink, port = server
    j = Journey(tmp_path, sink, port, WELCOME)
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns/launch.yaml").write_text(LAUNCH.lstrip())
    j.at("2030-03-01T09:00:00Z")  # the workflow is applied before anyone subscribes
    for person in PEOPLE:
        j.person(f"{person}@example.com", lists=("news",), at="2030-03-01T09:00:00Z")
    j.at("2030-03-01T09:01:00Z")  # five welcome runs send "hi"
    j.at("2030-03-02T10:00:00Z")  # the launch goes to all five
    _did(j, "a", "opened", "2030-03-02T10:10:00Z")  # a: 3 opens, 2 clicks on X
    _did(j, "a", "clicked", "2030-03-02T10:11:00Z", url="https://shop.example.com/x")
    _did(j, "a", "clicked", "2030-03-02T10:12:00Z", url="https://shop.example.com/x")
    _did(j, "a", "opened", "2030-03-02T11:00:00Z")
    _did(j, "a", "opened", "2030-03-05T12:00:00Z")  # day 4: in the daily part of the timeline
    _did(j, "b", "opened", "2030-03-02T10:05:00Z", machine=True)  # b: a proxy's open, then their own
    _did(j, "b", "opened", "2030-03-02T10:30:00Z")
    _did(j, "c", "clicked", "2030-03-02T10:01:00Z", machine=True, url="https://shop.example.com/y")  # a scanner
    _did(j, "d", "clicked", "2030-03-02T11:30:00Z", url="https://shop.example.com/y")  # d: a click, images off
    provider_event(  # e: the mailbox does not exist, reported after the message was accepted
        j.db, "generic", "bounce-1", email="e@example.com", kind="bounce", hard=True, at="2030-03-02T10:20:00Z",
        detail="550 5.1.1 no such user",
    )  # fmt: skip
    j.event("a@example.com", "purchase", at="2030-03-02T11:00:00Z", total=30)  # within 2 days: 30
    j.event("b@example.com", "purchase", at="2030-03-03T09:00:00Z", total=10)  # within: 10
    j.event("b@example.com", "purchase", at="2030-03-03T10:00:00Z", total="abc")  # a conversion, no revenue
    j.event("d@example.com", "purchase", at="2030-03-05T11:00:00Z", total=99)  # three days later: not counted
    j.event("c@example.com", "purchase", at="2030-03-02T09:00:00Z", total=50)  # before the message: not counted
    j.at("2030-03-03T10:00:00Z")  # the reminder: a, b, c, d (e is suppressed now)
    (tmp_path / "campaigns/later.yaml").write_text(LATER.lstrip())
    j.at("2030-03-04T10:00:00Z")  # a later campaign to a, b, c, d
    target = message_target(j.db, _row(j, "c", "launch"))  # c unsubscribes with the launch's link, after `later`
    assert target is not None
    unsubscribe(j.db, target, at="2030-03-04T12:00:00Z", source="one-click", ip=None)
    return j


def report(j: Journey, *args: str) -> Any:
    result = reconciler("report", *args, "--format", "json", cwd=j.root)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_campaigns_report_counts_people_apart_from_machines_and_attributes_what_follows(seeded: Journey) -> None:
    launch = report(seeded, "launch")
    assert launch["delivery"] == {
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
    assert launch["engagement"] == {
        "unique_opens": 3,  # a, b, and d (whose click is an open with images off)
        "total_opens": 4,  # a 3, b 1 (the proxy's open is apart)
        "unique_clicks": 2,  # a, d
        "total_clicks": 3,
        "machine_opens": 1,
        "machine_clicks": 1,
        "unsubscribes": 1,  # c, through the launch's link, after `later` was sent
        "complaints": 0,
    }
    assert launch["rates"]["open_rate"] == round(3 / 8, 4)
    assert launch["rates"]["click_rate"] == round(2 / 8, 4)
    assert launch["rates"]["click_to_open"] == round(2 / 3, 4)
    first = next(s for s in launch["stages"] if s["stage"] == "(first)")
    assert first["delivery"]["delivered"] == 4 and first["rates"]["open_rate"] == 0.75
    reminder = next(s for s in launch["stages"] if s["stage"] == "reminder")
    assert reminder["delivery"]["sent"] == 4 and reminder["engagement"]["unique_opens"] == 0
    assert launch["links"] == [
        {"url": "https://shop.example.com/x", "unique_clicks": 1, "total_clicks": 2},
        {"url": "https://shop.example.com/y", "unique_clicks": 1, "total_clicks": 1},  # the scanner's is apart
    ]
    assert launch["goal"] == {
        "event": "purchase",
        "within": "2d",
        "converted": 2,  # a and b
        "conversions": 3,
        "conversion_rate": 0.5,  # of the first message's 4 delivered
        "revenue": 40.0,
        "cost": 100.0,
        "roi": -0.6,
    }
    later = report(seeded, "later")
    assert later["engagement"]["unsubscribes"] == 0
    assert later["previous"]["open_rate"] == round(3 / 8, 4)  # the launch, the one campaign before it


def test_the_timeline_is_hourly_then_daily_and_the_grid_is_on_the_workspaces_clock(seeded: Journey) -> None:
    launch = report(seeded, "launch")
    assert launch["timeline"] == [
        {"start": "2030-03-02T10:00Z", "opens": 2, "clicks": 2},
        {"start": "2030-03-02T11:00Z", "opens": 1, "clicks": 1},
        {"start": "2030-03-05", "opens": 1, "clicks": 0},
    ]
    grid = launch["weekday_hours"]
    assert launch["timezone"] == "Europe/Warsaw"
    assert grid[5][11] == 2 and grid[5][12] == 1 and grid[1][13] == 1  # Saturday 11:00 and 12:00, Tuesday 13:00
    assert sum(map(sum, grid)) == 4
    assert launch["countries"] == [{"country": "?", "recipients": 5, "unique_opens": 3}]


def test_a_workflows_report_counts_each_step(seeded: Journey) -> None:
    hello = report(seeded, "hello")
    assert hello["runs"] == {"completed": 5}
    assert hello["first_run"] == hello["last_run"] == "2030-03-01T09:01:00Z"
    steps = {s["step"]: s for s in hello["steps"]}
    assert list(steps) == ["hi", "rest", "tag-it"]
    assert steps["hi"]["entered"] == 5 and steps["hi"]["sent"] == 5 and steps["tag-it"]["entered"] == 5
    assert steps["rest"]["sent"] == 0


def test_the_overview_text_and_csv(seeded: Journey) -> None:
    text = reconciler("report", cwd=seeded.root)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].split() == [
        "KIND", "NAME", "STARTED", "RECIPIENTS", "DELIVERED", "OPEN", "RATE", "CLICK", "RATE", "UNSUBSCRIBES", "REVENUE"
    ]  # fmt: skip
    assert [line.split()[:2] for line in lines[1:4]] == [
        ["campaign", "later"],
        ["campaign", "launch"],
        ["workflow", "hello"],
    ]
    assert lines[2].split()[3:] == ["9", "8", "37.5%", "25.0%", "1", "40.00"]
    assert "Rates count people, not machines" in text.stdout
    stages = reconciler("report", "launch", "--format", "csv", cwd=seeded.root)
    rows = list(csv.DictReader(io.StringIO(stages.stdout)))
    assert [row["stage"] for row in rows] == ["(first)", "reminder"]
    assert rows[0]["delivery.delivered"] == "4" and rows[0]["engagement.unique_opens"] == "3"
    detail = reconciler("report", "launch", cwd=seeded.root).stdout
    assert "open rate           37.5%" in detail and "ROI -60.0%" in detail


def test_csv_cells_never_become_formulas_and_unknown_names_are_one_line(seeded: Journey) -> None:
    out = reconciler("report", "--format", "csv", cwd=seeded.root).stdout
    assert "=HYPERLINK" not in out.replace("'=HYPERLINK", "")
    unknown = reconciler("report", "lanch", cwd=seeded.root)
    assert unknown.returncode == 2 and "no campaign or workflow named 'lanch'" in unknown.stderr
    assert "did you mean 'launch'" in unknown.stderr
    window = report(seeded, "launch", "--since", "2030-03-05T00:00:00Z")
    assert window["engagement"]["total_opens"] == 1 and window["goal"]["conversions"] == 0
