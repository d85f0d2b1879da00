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
from report_state import seed
from smtp_sink import Sink, SinkServer


@pytest.fixture
def server() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    with SinkServer(sink) as port:
        yield sink, port


@pytest.fixture
def seeded(tmp_path: Path, server: tuple[Sink, int]) -> Journey:
    return seed(tmp_path, *server)


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
    assert launch["rates"]["open_rate"] == 0.75  # people: 3 of the 4 whom the first message reached
    assert launch["rates"]["click_rate"] == 0.5
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
    assert later["previous"]["open_rate"] == 0.75  # the launch, the one campaign before it


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
    assert steps["rest"]["sent"] == 0 and steps["rest"]["completed"] == 5 and steps["rest"]["waiting"] == 0


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
    assert lines[2].split()[3:] == ["9", "8", "75.0%", "50.0%", "1", "40.00"]
    assert "Rates count people, not machines" in text.stdout
    stages = reconciler("report", "launch", "--format", "csv", cwd=seeded.root)
    rows = list(csv.DictReader(io.StringIO(stages.stdout)))
    assert [row["stage"] for row in rows] == ["(first)", "reminder"]
    assert rows[0]["delivery.delivered"] == "4" and rows[0]["engagement.unique_opens"] == "3"
    detail = reconciler("report", "launch", cwd=seeded.root).stdout
    assert "open rate           75.0%" in detail and "ROI -60.0%" in detail


def test_csv_cells_never_become_formulas_and_unknown_names_are_one_line(seeded: Journey) -> None:
    out = reconciler("report", "--format", "csv", cwd=seeded.root).stdout
    assert "=HYPERLINK" not in out.replace("'=HYPERLINK", "")
    unknown = reconciler("report", "lanch", cwd=seeded.root)
    assert unknown.returncode == 2 and "no campaign or workflow named 'lanch'" in unknown.stderr
    assert "did you mean 'launch'" in unknown.stderr
    window = report(seeded, "launch", "--since", "2030-03-05T00:00:00Z")
    assert window["engagement"]["total_opens"] == 1 and window["goal"]["conversions"] == 0


def test_the_html_report_is_one_offline_file_with_charts_that_hold_the_figures(seeded: Journey) -> None:
    out = seeded.root / "launch.html"
    result = reconciler("report", "launch", "--format", "html", "-o", str(out), cwd=seeded.root)
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert len(page.encode()) < 500_000
    assert "<script" not in page and 'src="http' not in page and "<link" not in page and "@import" not in page
    assert page.count("<svg") == 5  # funnel, over time, heat map, links, countries
    assert page.count('class="hour"') == 7 * 24
    assert 'data-count="2"' in page  # Saturday 11:00 on the workspace's clock
    assert "=HYPERLINK" in page and "<script" not in page  # the subject, escaped as text
    for term in ("Open rate", "Click rate", "Click-to-open", "Machine opens and clicks"):
        assert f"<dt>{term}</dt>" in page
    overview = reconciler("report", "--format", "html", cwd=seeded.root).stdout
    assert "<td>launch</td>" in overview and "75.0%" in overview
    workflow = reconciler("report", "hello", "--format", "html", cwd=seeded.root).stdout
    assert "Workflow hello" in workflow and workflow.count("<svg") == 1


def test_the_counters_agree_with_the_facts_and_a_rebuild_gives_the_same(seeded: Journey) -> None:
    """Reports over all time read counters kept as facts are recorded; a window counts the facts themselves (a
    window from before anything happened is every fact). A rebuild counts the counters again from the facts."""
    counted = report(seeded, "launch")
    from_facts = report(seeded, "launch", "--since", "2000-01-01T00:00:00Z")
    assert counted == from_facts
    workflow = report(seeded, "hello")
    assert workflow == report(seeded, "hello", "--since", "2000-01-01T00:00:00Z")
    seeded.db.conn.execute("DELETE FROM report_counts")  # counters lost: a rebuild brings them back
    rebuilt = reconciler("report", "launch", "--rebuild", "--format", "json", cwd=seeded.root)
    assert rebuilt.returncode == 0 and "Counted 11 engagement facts again" in rebuilt.stderr
    assert json.loads(rebuilt.stdout) == counted


def test_goal_figures_are_the_same_whichever_side_is_read_first(seeded: Journey) -> None:
    before = report(seeded, "launch")["goal"]  # fewer purchases than recipients: read from the purchases
    seeded.person("stranger@example.com", at="2030-03-02T09:00:00Z")
    for n in range(12):  # now more purchases than recipients: read from the recipients
        seeded.event("stranger@example.com", "purchase", at=f"2030-03-02T12:{n:02d}:00Z", total=1000)
    assert report(seeded, "launch")["goal"] == before


def test_a_workflows_steps_show_who_waits_and_who_exited(tmp_path: Path, server: tuple[Sink, int]) -> None:
    sink, port = server
    cart = """
        kind: Workflow
        name: cart
        trigger: {event: cart_abandoned, key: cart_id}
        list: news
        exit_when: {event: purchase}
        steps:
          - {id: wait, wait: 1h}
          - {id: remind, send: mail/a, subject: Your cart}
          - {id: later, wait: 1d}
          - {id: last, send: mail/b, subject: Last call}
        """
    j = Journey(tmp_path, sink, port, cart)
    j.at("2030-03-02T08:00:00Z")
    for person in ("p", "q", "r"):
        j.person(f"{person}@example.com", lists=("news",), at="2030-03-02T08:00:00Z")
        j.event(f"{person}@example.com", "cart_abandoned", at="2030-03-02T08:00:00Z", cart_id=person)
    j.at("2030-03-02T08:01:00Z")
    j.at("2030-03-02T09:02:00Z")  # all three reminded, now waiting a day
    j.event("p@example.com", "purchase", at="2030-03-02T10:00:00Z")
    j.at("2030-03-02T10:01:00Z")
    steps = {s["step"]: s for s in report(j, "cart")["steps"]}
    assert (steps["wait"]["entered"], steps["wait"]["completed"]) == (3, 3)
    assert steps["remind"]["sent"] == 3
    assert (steps["later"]["entered"], steps["later"]["waiting"], steps["later"]["exited"]) == (3, 2, 1)
    assert steps["last"]["entered"] == 0


def test_an_erased_person_leaves_the_counters_as_the_facts_do(seeded: Journey) -> None:
    erased = reconciler("contacts", "erase", "a@example.com", "--yes", cwd=seeded.root)
    assert erased.returncode == 0, erased.stderr
    counted = report(seeded, "launch")
    assert counted == report(seeded, "launch", "--since", "2000-01-01T00:00:00Z")
    assert counted["engagement"]["unique_opens"] == 2 and counted["goal"]["revenue"] == 10.0
    rebuilt = reconciler("report", "launch", "--rebuild", "--format", "json", cwd=seeded.root)
    assert json.loads(rebuilt.stdout) == counted


def test_csv_numbers_stay_numbers_and_impossible_windows_are_usage_errors(seeded: Journey) -> None:
    seeded.event("b@example.com", "purchase", at="2030-03-03T11:00:00Z", total=-100)  # a refund
    rows = list(csv.DictReader(io.StringIO(reconciler("report", "--format", "csv", cwd=seeded.root).stdout)))
    launch = next(row for row in rows if row["name"] == "launch")
    assert launch["revenue"] == "-60.0"
    for args in (("--until", "0001-01-01T00:00:00+14:00"), ("--since", "2030-03-05T00:00:00Z", "--until", "2030")):
        bad = reconciler("report", "launch", *args, cwd=seeded.root)
        assert bad.returncode == 2 and "unexpected" not in bad.stderr, bad.stderr


def test_a_report_lists_the_hundred_most_clicked_links_of_many(seeded: Journey) -> None:
    row = seeded.db.conn.execute(
        "SELECT l.id FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE c.email = 'b@example.com' "
        "AND l.source = 'launch' AND l.stage = ''"
    ).fetchone()[0]
    facts = [
        engagement.Engagement(row, "clicked", "2030-03-02T12:00:00Z", detail=f"https://shop.example.com/o/{n}")
        for n in range(300)
    ]
    with write(seeded.db):
        engagement.record(seeded.db, facts)
    launch = report(seeded, "launch")
    assert len(launch["links"]) == 100 and launch["links_total"] == 302
    page = reconciler("report", "launch", "--format", "html", cwd=seeded.root).stdout
    assert "The 100 most clicked of 302 links." in page and len(page.encode()) < 500_000


def test_contacts_show_tells_one_persons_story_in_time_order(seeded: Journey) -> None:
    shown = reconciler("contacts", "show", "C@example.com", cwd=seeded.root)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "c@example.com (-): news unsubscribed"
    body = [line.split("  ", 2)[2] for line in lines[1:]]
    assert body[0] == "subscribe news (api)"
    assert "message workflow hello/hi: sent" in body and "message campaign launch: sent" in body
    assert "clicked launch https://shop.example.com/y (a machine)" in body and 'event purchase {"total": 50}' in body
    assert any(line.startswith("workflow hello started: ") for line in body), body  # the welcome run, and its end
    assert any(line.startswith("workflow hello completed") for line in body), body
    assert set(body[-2:]) == {"unsubscribe news (one-click)", "unsubscribed launch"}  # the consent and the fact
    times = [line.split("  ", 2)[1] for line in lines[1:]]
    assert times == sorted(times)
    missing = reconciler("contacts", "show", "nobody@example.com", cwd=seeded.root)
    assert missing.returncode != 0 and "no contact nobody@example.com" in missing.stderr


def test_each_recipient_with_what_happened_and_what_they_did(seeded: Journey) -> None:
    rows = json.loads(reconciler("report", "launch", "--recipients", "--format", "json", cwd=seeded.root).stdout)
    assert len(rows) == 9
    first = {r["email"]: r for r in rows if r["stage"] == ""}
    assert (first["a@example.com"]["opens"], first["a@example.com"]["clicks"]) == (3, 2)
    assert first["b@example.com"]["opens"] == 1  # the proxy's open is not theirs
    assert first["c@example.com"]["unsubscribed"] and first["c@example.com"]["clicks"] == 0
    text = reconciler("report", "launch", "--recipients", cwd=seeded.root).stdout.splitlines()
    assert text[0].split()[:3] == ["ADDRESS", "STAGE", "STATE"] and len(text) == 10
    table = list(
        csv.DictReader(
            io.StringIO(reconciler("report", "hello", "--recipients", "--format", "csv", cwd=seeded.root).stdout)
        )
    )
    assert [r["stage"] for r in table] == ["hi"] * 5
    bare = reconciler("report", "--recipients", cwd=seeded.root)
    assert bare.returncode == 2 and "needs the NAME" in bare.stderr


def test_a_bounce_after_a_deferral_is_one_bounce_and_a_deferral_that_went_through_is_delivered(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    sink, port = server

    def relay(rcpt: str, attempt: int, phase: str) -> str | None:
        if phase != "rcpt":
            return None
        if rcpt == "x@example.com":  # greylisted, then the mailbox turns out not to exist
            return "451 4.7.1 greylisted, try again later" if attempt == 1 else "550 5.1.1 no such user"
        if rcpt == "y@example.com" and attempt == 1:  # greylisted once, then accepted
            return "451 4.7.1 greylisted, try again later"
        if rcpt == "w@example.com":  # the mailbox is full every time: deferred until retry_for runs out
            return "452 4.2.2 mailbox full"
        return None

    sink.script = relay
    j = Journey(tmp_path, sink, port, "")
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns/drop.yaml").write_text(
        "kind: Campaign\nname: drop\nsubject: Drop\ntemplate: mail/a\naudience: {lists: [news]}\n"
        "send_at: 2030-03-02T10:00:00Z\nstatus: scheduled\n"
    )
    for person in ("w", "x", "y", "z"):
        j.person(f"{person}@example.com", lists=("news",), at="2030-03-01T09:00:00Z")
    j.at("2030-03-02T10:00:00Z")  # z delivered; w, x, y deferred
    during = report(j, "drop")["delivery"]
    assert (during["sent"], during["pending"], during["delivered"], during["bounced_hard"]) == (1, 3, 1, 0)
    j.at("2030-03-02T11:00:00Z")  # the retry: x refused for good, y accepted, w deferred again
    j.at("2030-03-06T11:00:00Z")  # w's retries ran out (retry_for: 3 days by default)
    delivery = report(j, "drop")["delivery"]
    assert sink.received() == {"z@example.com": 1, "y@example.com": 1}
    assert delivery == {
        "recipients": 4,
        "sent": 2,  # z, y: the relay took them
        "pending": 0,
        "delivered": 2,
        "bounced_hard": 1,  # x: refused after its deferral, counted once
        "bounced_soft": 1,  # w: still deferred when its retries ran out
        "failed": 0,
        "uncertain": 0,
        "skipped": 0,
    }
    overview = {row["name"]: row for row in report(j)}
    assert overview["drop"]["delivered"] == 2


def test_an_absurd_revenue_is_left_out_and_every_report_stays_valid_json(seeded: Journey) -> None:
    """Two purchases of 1e308 each summed to infinity: `report --format json` printed `Infinity` (not JSON) and
    the read API answered 500."""
    for _ in range(2):
        seeded.event("a@example.com", "purchase", at="2030-03-02T12:00:00Z", total=1e308)

    def strict(text: str) -> Any:
        def refuse(constant: str) -> None:
            raise AssertionError(f"{constant} in the JSON")

        return json.loads(text, parse_constant=refuse)

    for args in ((), ("--since", "2030-01-01T00:00:00Z")):
        done = reconciler("report", "launch", "--format", "json", *args, cwd=seeded.root)
        assert done.returncode == 0, done.stderr
        goal = strict(done.stdout)["goal"]
        assert goal["revenue"] == 40.0 and goal["conversions"] == 5, goal  # counted, without the absurd amounts
    overview = reconciler("report", "--format", "json", cwd=seeded.root)
    assert [row["revenue"] for row in strict(overview.stdout) if row["name"] == "launch"] == [40.0]


def test_one_step_of_a_workflow_and_windows_that_cannot_be(seeded: Journey) -> None:
    step = report(seeded, "hello:hi")
    assert [s["step"] for s in step["steps"]] == ["hi"] and step["steps"][0]["sent"] == 5
    wrong = reconciler("report", "hello:hy", cwd=seeded.root)
    assert wrong.returncode == 2 and "workflow hello has no step 'hy'; its steps: hi, rest, tag-it" in wrong.stderr
    late = reconciler("report", "--since", "9999-12-31T23:59:59Z", cwd=seeded.root)
    assert late.returncode == 2 and "is not before --until (no end)" in late.stderr, late.stderr
    bad = reconciler("report", "--since", "2030-13-01", cwd=seeded.root)
    assert bad.returncode == 2 and bad.stderr.count("write") == 1, bad.stderr


def test_a_page_past_the_end_and_a_file_that_cannot_be_written_are_one_line(seeded: Journey, tmp_path: Path) -> None:
    past = reconciler("report", "launch", "--recipients", "--page", "9", cwd=seeded.root)
    assert past.returncode == 2 and "--page 9: there are fewer pages" in past.stderr, past.stderr
    nowhere = reconciler("report", "launch", "-o", str(tmp_path / "no/such/folder/r.html"), cwd=seeded.root)
    assert nowhere.returncode == 2 and "cannot write it" in nowhere.stderr and "Traceback" not in nowhere.stderr
    assert "unexpected" not in nowhere.stderr, nowhere.stderr
