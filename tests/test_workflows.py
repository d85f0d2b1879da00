"""Workflows that run: each trigger, each step, both branches, exits, re-entry and keys, on a fixed clock.

Every test moves one workspace through simulated days with `Journey.at` (a daemon pass at that moment) and sends
to a real SMTP server on loopback; it asserts what a marketer would check: who got which message when, where each
run is, and what happened to the contact's lists, tags and fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import reconciler
from journeys import Journey
from reconciler.state.contacts import change_tag
from reconciler.state.db import write
from reconciler.state.subscribers import change_subscriptions, save_preferences
from sending import body, parse
from smtp_sink import Sink, SinkServer
from web_server import WebServer

WELCOME = """
kind: Workflow
name: welcome
trigger: {subscribed: news}
steps:
  - id: hello
    send: mail/a
    subject: Welcome
  - id: pause
    wait: 2d
  - id: tips
    send: mail/b
    subject: Tips
  - id: wait-for-tips
    wait_until: {opened: tips}
    timeout: 3d
  - id: branch
    if: {opened: tips}
    then:
      - {id: more, send: mail/c, subject: More for readers}
      - {id: reader, tag: reader}
    else:
      - {id: nudge, send: mail/c, subject: Did you miss it}
  - id: done
    add_to_list: customers
"""


@pytest.fixture
def server() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    with SinkServer(sink) as port:
        yield sink, port


def journey(tmp_path: Path, server: tuple[Sink, int], workflows: str, *, settings: str = "") -> Journey:
    sink, port = server
    return Journey(tmp_path, sink, port, workflows, settings=settings)


def test_a_welcome_drip_with_a_branch_on_opens_runs_on_each_contacts_own_clock(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    j = journey(tmp_path, server, WELCOME)
    j.at("2026-03-02T08:00:00Z")  # applied before anyone subscribes
    j.person("reader@example.com", lists=("news",), at="2026-03-02T09:00:00Z")
    j.person("skimmer@example.com", lists=("news",), at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:00:30Z")
    assert j.sent("reader@example.com") == ["welcome/hello"]
    j.at("2026-03-04T09:00:00Z")  # two days after the run entered the wait, to the minute: not yet
    assert j.sent("reader@example.com") == ["welcome/hello"]
    j.at("2026-03-04T09:00:31Z")
    assert j.sent("reader@example.com") == ["welcome/hello", "welcome/tips"]
    j.opens("reader@example.com", "tips", at="2026-03-04T12:00:00Z")
    j.opens("skimmer@example.com", "tips", at="2026-03-04T12:00:00Z", machine=True)  # a privacy proxy, not a person
    j.at("2026-03-04T12:05:00Z")  # the open is seen within the poll of a wait_until
    j.at("2026-03-04T12:20:00Z")
    assert j.sent("reader@example.com") == ["welcome/hello", "welcome/tips", "welcome/more"]
    assert j.sent("skimmer@example.com") == ["welcome/hello", "welcome/tips"]
    j.at("2026-03-07T09:00:31Z")  # the skimmer's timeout (3 days after the wait began)
    assert j.sent("skimmer@example.com") == ["welcome/hello", "welcome/tips", "welcome/nudge"]
    assert j.runs("reader@example.com") == [("welcome", "", "completed", "")]
    assert j.contact("reader@example.com")["tags"] == ["reader"]
    assert j.contact("skimmer@example.com")["tags"] == []
    assert j.contact("skimmer@example.com")["lists"] == {"customers": "subscribed", "news": "subscribed"}
    assert [step for step, _ in j.history("skimmer@example.com")] == [
        "hello",
        "pause",
        "tips",
        "wait-for-tips",
        "branch",
        "nudge",
        "done",
    ]
    assert dict(j.history("skimmer@example.com"))["wait-for-tips"] == "timed out"
    subjects = [subject for rcpt, subject in j.received() if rcpt == "reader@example.com"]
    assert subjects == ["Welcome", "Tips", "More for readers"]


def test_subscriptions_before_the_workflow_existed_start_nothing(tmp_path: Path, server: tuple[Sink, int]) -> None:
    j = journey(tmp_path, server, WELCOME.replace("name: welcome", "name: welcome\nstatus: paused"))
    j.person("early@example.com", lists=("news",), at="2026-03-01T09:00:00Z")
    j.at("2026-03-02T08:00:00Z")
    j.write_workflows(WELCOME)
    j.at("2026-03-02T08:01:00Z")
    j.person("late@example.com", lists=("news",), at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:01:00Z")
    assert j.runs("early@example.com") == []
    assert j.sent("late@example.com") == ["welcome/hello"]


CART = """
kind: Workflow
name: cart
trigger: {event: cart_abandoned, key: cart_id, property: {name: total, gte: 20}}
list: customers
re_entry: always
exit_when: {event: purchase}
steps:
  - {id: wait, wait: 1h}
  - {id: reminder, send: mail/a, subject: Your cart}
  - {id: later, wait: 1d}
  - {id: last, send: mail/b, subject: Last call}
"""


def test_an_abandoned_cart_keys_runs_by_cart_filters_by_total_and_stops_at_purchase(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    j = journey(tmp_path, server, CART)
    j.at("2026-03-02T08:00:00Z")
    j.person("ann@example.com", lists=("customers",), at="2026-03-02T08:00:00Z")
    j.event("ann@example.com", "cart_abandoned", at="2026-03-02T09:00:00Z", cart_id="A", total=50)
    j.event("ann@example.com", "cart_abandoned", at="2026-03-02T09:01:00Z", cart_id="A", total=55)  # same cart
    j.event("ann@example.com", "cart_abandoned", at="2026-03-02T09:02:00Z", cart_id="B", total=80)
    j.event("ann@example.com", "cart_abandoned", at="2026-03-02T09:03:00Z", cart_id="C", total=5)  # too small
    j.at("2026-03-02T09:05:00Z")
    assert [(key, state) for _, key, state, _ in j.runs("ann@example.com")] == [("A", "active"), ("B", "active")]
    j.at("2026-03-02T10:06:00Z")
    assert j.sent("ann@example.com") == ["cart/reminder", "cart/reminder"]
    j.event("ann@example.com", "purchase", at="2026-03-02T11:00:00Z", order="1")
    j.at("2026-03-02T11:01:00Z")
    assert [state for _, _, state, _ in j.runs("ann@example.com")] == ["exited", "exited"]
    j.at("2026-03-04T12:00:00Z")
    assert j.sent("ann@example.com") == ["cart/reminder", "cart/reminder"]  # no last call after the purchase


def test_exit_when_is_checked_before_each_step_even_when_the_event_came_through_another_path(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    j = journey(tmp_path, server, CART)
    j.at("2026-03-02T08:00:00Z")
    j.person("bo@example.com", lists=("customers",), at="2026-03-02T08:00:00Z")
    j.event("bo@example.com", "cart_abandoned", at="2026-03-02T09:00:00Z", cart_id="A", total=50)
    j.at("2026-03-02T09:01:00Z")
    j.event("bo@example.com", "purchase", at="2026-03-02T09:30:00Z")
    j.at("2026-03-02T10:02:00Z")  # both the purchase and the end of the wait are seen in this pass
    assert j.sent("bo@example.com") == []
    assert j.runs("bo@example.com")[0][2] == "exited"


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("never", 1), ("always", 2), ("{after: 10d}", 1), ("{after: 2d}", 2)],
)
def test_re_entry_rules(tmp_path: Path, server: tuple[Sink, int], rule: str, expected: int) -> None:
    workflow = f"""
        kind: Workflow
        name: thanks
        trigger: {{event: purchase}}
        list: customers
        re_entry: {rule}
        steps:
          - {{id: thank, send: mail/a, subject: Thank you}}
        """
    j = journey(tmp_path, server, workflow)
    j.at("2026-03-02T08:00:00Z")
    j.person("cy@example.com", lists=("customers",), at="2026-03-02T08:00:00Z")
    j.event("cy@example.com", "purchase", at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:01:00Z")
    j.event("cy@example.com", "purchase", at="2026-03-05T09:00:00Z")
    j.at("2026-03-05T09:01:00Z")
    assert len(j.sent("cy@example.com")) == expected


def test_a_birthday_a_week_ahead_at_nine_on_each_contacts_own_clock(tmp_path: Path, server: tuple[Sink, int]) -> None:
    workflow = """
        kind: Workflow
        name: birthday
        trigger: {date_field: birthday, at: "09:00", before: 1w}
        list: news
        steps:
          - {id: gift, send: mail/a, subject: A gift for your birthday}
        """
    j = journey(tmp_path, server, workflow)
    j.at("2026-03-01T00:00:00Z")
    j.person(
        "tokyo@example.com", lists=("news",), at="2026-03-01T00:00:00Z", timezone="Asia/Tokyo", birthday="1990-03-16"
    )
    j.person(
        "nyc@example.com",
        lists=("news",),
        at="2026-03-01T00:00:00Z",
        timezone="America/New_York",
        birthday="1985-03-16",
    )
    j.person("leap@example.com", lists=("news",), at="2026-03-01T00:00:00Z", birthday="2000-02-29")
    j.at("2026-03-08T23:59:00Z")  # 08:59 on the 9th in Tokyo: not yet
    assert j.sent("tokyo@example.com") == []
    j.at("2026-03-09T00:01:00Z")  # 09:01 in Tokyo
    assert j.sent("tokyo@example.com") == ["birthday/gift"] and j.sent("nyc@example.com") == []
    j.at("2026-03-09T13:01:00Z")  # 09:01 in New York (daylight saving time began on the 8th)
    assert j.sent("nyc@example.com") == ["birthday/gift"]
    j.at("2026-03-09T20:00:00Z")
    assert j.sent("tokyo@example.com") == ["birthday/gift"]  # once a year
    assert [key for _, key, _, _ in j.runs("tokyo@example.com")] == ["2026"]
    j.at("2027-02-21T09:00:00Z")  # 29 February is celebrated on the 28th in 2027: a week before is the 21st
    assert j.sent("leap@example.com") == ["birthday/gift"]


WINBACK = """
kind: Segment
name: lapsed
lists: [news]
where: {field: orders, lte: 0}
---
kind: Workflow
name: winback
trigger: {segment_entered: lapsed}
list: news
re_entry: always
steps:
  - {id: miss-you, send: mail/a, subject: We miss you}
  - {id: mark, set_field: {field: stage, value: winback}}
"""


def test_segment_entered_starts_only_for_contacts_who_enter_after_the_first_look(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    j = journey(tmp_path, server, WINBACK)
    j.person("already@example.com", lists=("news",), at="2026-03-01T00:00:00Z", orders=0)
    j.person("buyer@example.com", lists=("news",), at="2026-03-01T00:00:00Z", orders=3)
    j.at("2026-03-02T08:00:00Z")
    assert j.sent("already@example.com") == []  # no flood of everyone already in the segment
    j.person("buyer@example.com", at="2026-03-03T00:00:00Z", orders=0)
    j.at("2026-03-03T08:00:00Z")
    assert j.sent("buyer@example.com") == ["winback/miss-you"]
    assert j.contact("buyer@example.com")["fields"]["stage"] == "winback"
    j.at("2026-03-04T08:00:00Z")
    assert j.sent("buyer@example.com") == ["winback/miss-you"]  # still in: not entered again


def test_backfill_starts_runs_for_everyone_already_in_the_segment(tmp_path: Path, server: tuple[Sink, int]) -> None:
    j = journey(
        tmp_path,
        server,
        WINBACK.replace("trigger: {segment_entered: lapsed}", "trigger: {segment_entered: lapsed, backfill: true}"),
    )
    j.person("already@example.com", lists=("news",), at="2026-03-01T00:00:00Z", orders=0)
    j.at("2026-03-02T08:00:00Z")
    assert j.sent("already@example.com") == ["winback/miss-you"]


def test_list_tag_and_field_actions_change_the_contact_with_consent_records(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    workflow = """
        kind: Workflow
        name: promote
        trigger: {event: big_order}
        category: transactional
        steps:
          - {id: add, add_to_list: vip}
          - {id: move, move_to_list: {from: news, to: customers}}
          - {id: drop, remove_from_list: vip}
          - {id: t1, tag: big-spender}
          - {id: t2, tag: temp}
          - {id: t3, untag: temp}
          - {id: f1, set_field: {field: orders, value: 7}}
          - {id: f2, set_field: {field: stage, value: null}}
        """
    j = journey(tmp_path, server, workflow)
    j.at("2026-03-02T08:00:00Z")
    j.person("dee@example.com", lists=("news",), at="2026-03-02T08:00:00Z", stage="new")
    j.event("dee@example.com", "big_order", at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:01:00Z")
    contact = j.contact("dee@example.com")
    assert contact["lists"] == {"customers": "subscribed", "news": "unsubscribed", "vip": "unsubscribed"}
    assert contact["tags"] == ["big-spender"]
    assert contact["fields"] == {"orders": 7}
    sources = j.db.conn.execute("SELECT DISTINCT source FROM consent WHERE source LIKE 'workflow%'").fetchall()
    assert sources == [("workflow promote",)]
    assert j.runs("dee@example.com") == [("promote", "", "completed", "")]


def test_a_marketing_workflow_stops_mailing_someone_who_left_its_list_but_a_transactional_one_does_not(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    workflows = """
        kind: Workflow
        name: tips
        trigger: {event: signup}
        list: news
        steps:
          - {id: wait, wait: 1d}
          - {id: tip, send: mail/a, subject: A tip}
        ---
        kind: Workflow
        name: receipt
        trigger: {event: signup}
        category: transactional
        steps:
          - {id: wait, wait: 1d}
          - {id: receipt, send: mail/b, subject: Your receipt}
        """
    j = journey(tmp_path, server, workflows)
    j.at("2026-03-02T08:00:00Z")
    j.person("eve@example.com", lists=("news",), at="2026-03-02T08:00:00Z")
    j.event("eve@example.com", "signup", at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:01:00Z")
    j.person("max@example.com", lists=("news",), at="2026-03-02T08:00:00Z")
    j.event("max@example.com", "signup", at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:01:00Z")
    j.leave("eve@example.com", "news", at="2026-03-02T12:00:00Z")
    j.leave_all("max@example.com", at="2026-03-02T12:00:00Z")
    j.at("2026-03-03T09:02:00Z")
    assert j.sent("eve@example.com") == ["receipt/receipt"]
    assert j.sent("max@example.com") == ["receipt/receipt"]  # left all marketing: receipts still come
    skipped = j.db.conn.execute("SELECT last_reply FROM ledger WHERE workflow = 'tips' ORDER BY id").fetchall()
    assert "unsubscribed from the workflow's list" in skipped[0][0] and "suppressed (unsubscribed)" in skipped[1][0]


def test_a_transactional_workflow_never_mails_an_address_that_bounced(tmp_path: Path, server: tuple[Sink, int]) -> None:
    from state_helpers import suppress_address

    workflow = """
        kind: Workflow
        name: receipt
        trigger: {event: order}
        category: transactional
        steps:
          - {id: receipt, send: mail/b, subject: Your receipt}
        """
    j = journey(tmp_path, server, workflow)
    j.at("2026-03-02T08:00:00Z")
    j.person("bad@example.com", at="2026-03-02T08:00:00Z")
    suppress_address(j.db, "bad@example.com", "bounced")
    j.event("bad@example.com", "order", at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:01:00Z")
    assert j.sent("bad@example.com") == [] and j.received() == []


ONBOARD = """
kind: Workflow
name: onboard
trigger: {subscribed: news}
steps:
  - id: known
    if: {tag: customer}
    then:
      - {id: stop, exit: true, reason: already a customer}
  - {id: hello, send: mail/a, subject: Hello}
  - {id: pause, wait: 1d}
  - {id: quit, exit: true}
---
kind: WorkflowTest
name: a-customer-exits
workflow: onboard
contact: {tags: [customer]}
expect:
  - "0 then known"
  - "0 exited at stop: already a customer"
---
kind: WorkflowTest
name: a-newcomer-gets-hello
workflow: onboard
contact: {}
expect:
  - "0 else known"
  - "0 sent hello"
  - "1d exited at quit"
"""


def test_an_exit_step_ends_the_run_there_with_its_reason(tmp_path: Path, server: tuple[Sink, int]) -> None:
    j = journey(tmp_path, server, ONBOARD)
    j.at("2026-03-02T08:00:00Z")
    customer = j.person("old@example.com", at="2026-03-02T09:00:00Z")
    with write(j.db):
        change_tag(j.db, customer, "customer", present=True, at="2026-03-02T09:00:00Z")
        change_subscriptions(j.db, customer, {"news": "subscribed"}, at="2026-03-02T09:00:00Z", source="api")
    j.person("new@example.com", lists=("news",), at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:01:00Z")
    assert j.runs("old@example.com") == [("onboard", "", "exited", "stop")]
    assert j.sent("old@example.com") == []
    assert j.history("old@example.com") == [("known", "then")]
    assert j.sent("new@example.com") == ["onboard/hello"]
    assert j.runs("new@example.com") == [("onboard", "", "active", "pause")]
    j.at("2026-03-03T09:01:00Z")
    assert j.runs("new@example.com") == [("onboard", "", "exited", "quit")]
    outcomes = j.db.conn.execute("SELECT step, outcome FROM workflow_runs ORDER BY step").fetchall()
    assert outcomes == [("quit", "exited at quit"), ("stop", "exited at stop: already a customer")]
    shown = reconciler("status", "onboard", cwd=tmp_path).stdout
    assert "Ended runs: exited at quit 1 · exited at stop: already a customer 1" in shown, shown
    history = reconciler("contacts", "show", "old@example.com", cwd=tmp_path).stdout
    assert "workflow onboard exited: exited at stop: already a customer" in history, history
    tested = reconciler("test", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "PASS a-customer-exits (onboard, 2 lines)" in tested.stdout


def test_quiet_hours_hold_workflow_messages_until_morning_in_each_contacts_time_zone(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    workflow = """
        kind: Workflow
        name: nightly
        trigger: {event: visit}
        list: news
        steps:
          - {id: hi, send: mail/a, subject: Hi}
        ---
        kind: Workflow
        name: code
        trigger: {event: visit}
        category: transactional
        steps:
          - {id: code, send: mail/b, subject: Your code}
        """
    j = journey(tmp_path, server, workflow, settings='quiet_hours: {start: "21:00", end: "08:00"}')
    j.at("2026-03-02T08:00:00Z")
    j.person("warsaw@example.com", lists=("news",), at="2026-03-02T08:00:00Z", timezone="Europe/Warsaw")
    j.person("la@example.com", lists=("news",), at="2026-03-02T08:00:00Z", timezone="America/Los_Angeles")
    j.event("warsaw@example.com", "visit", at="2026-03-02T22:00:00Z")
    j.event("la@example.com", "visit", at="2026-03-02T22:00:00Z")
    j.at("2026-03-02T22:30:00Z")  # 23:30 in Warsaw (quiet), 14:30 in Los Angeles
    assert j.sent("la@example.com") == ["code/code", "nightly/hi"]
    assert j.sent("warsaw@example.com") == ["code/code"]  # the transactional one is not held
    held = j.db.conn.execute(
        "SELECT next_attempt_at, last_reply FROM ledger WHERE workflow = 'nightly' AND state = 'queued'"
    )
    until, why = held.fetchone()
    assert until == "2026-03-03T07:00:00Z" and "quiet hours" in why
    j.at("2026-03-03T06:59:00Z")
    assert j.sent("warsaw@example.com") == ["code/code"]
    j.at("2026-03-03T07:00:00Z")
    assert j.sent("warsaw@example.com") == ["code/code", "nightly/hi"]


# --- how a subscription starts a run -----------------------------------------------------------------------------

LETTERS = """
kind: List
name: letters
title: Letters
opt_in: double
"""
GREET = """
kind: Workflow
name: greet
trigger: {subscribed: letters}
steps:
  - {id: hello, send: mail/a, subject: Welcome to the letters}
---
kind: Workflow
name: welcome
trigger: {subscribed: news}
steps:
  - {id: hello, send: mail/b, subject: Welcome to the news}
"""


def with_letters(tmp_path: Path, server: tuple[Sink, int]) -> Journey:
    j = journey(tmp_path, server, GREET)
    (tmp_path / "spec/letters.yaml").write_text(LETTERS.lstrip())
    return j


def test_a_double_opt_in_subscription_through_the_form_starts_a_run_only_once_confirmed(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    j = with_letters(tmp_path, server)
    j.at("2030-03-04T08:00:00Z")  # later than the real time the web service records the form at
    with WebServer(tmp_path) as base, httpx.Client() as client:
        answer = client.post(f"{base}/subscribe", data={"email": "ann@example.com", "list": "letters"})
        assert answer.status_code == 200 and "Thank you" in answer.text
        j.at("2030-03-04T09:00:00Z")
        assert j.contact("ann@example.com")["lists"] == {"letters": "pending"}
        assert j.runs("ann@example.com") == [] and j.sent("ann@example.com") == []  # pending: no run yet
        (confirmation,) = [data for rcpt, data in server[0].messages if rcpt == "ann@example.com"]
        html = body(parse(confirmation))
        link = re.findall(r'href="([^"]*/confirm/[^"]*)"', html)[0].replace("&amp;", "&")
        local = link.replace("https://mail.example.com", base)
        assert "You are subscribed" in client.post(local).text
    j.at("2030-03-04T09:10:00Z")
    assert j.runs("ann@example.com") == [("greet", "", "completed", "")]
    assert j.sent("ann@example.com") == ["greet/hello"]
    assert ("ann@example.com", "Welcome to the letters") in j.received()
    j.at("2030-03-05T09:10:00Z")
    assert len(j.runs("ann@example.com")) == 1


def test_a_csv_import_into_a_list_starts_its_runs(tmp_path: Path, server: tuple[Sink, int]) -> None:
    j = with_letters(tmp_path, server)
    j.at("2030-03-04T08:00:00Z")
    people = tmp_path / "people.csv"
    people.write_text("email,first_name\nimp1@example.com,Ann\nimp2@example.com,Bo\n")
    news = reconciler("contacts", "import", str(people), "--list", "news", cwd=tmp_path)
    assert news.returncode == 0, news.stdout + news.stderr
    letters = tmp_path / "letters.csv"
    letters.write_text("email\nconfirmed@example.com\n")
    done = reconciler("contacts", "import", str(letters), "--list", "letters", "--preconfirmed", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    j.at("2030-03-04T08:05:00Z")
    assert j.sent("imp1@example.com") == ["welcome/hello"] and j.sent("imp2@example.com") == ["welcome/hello"]
    assert j.sent("confirmed@example.com") == ["greet/hello"]


# --- waits and branches -------------------------------------------------------------------------------------------

WAITS = """
kind: Segment
name: buyers
lists: [news]
where: {field: orders, gte: 1}
---
kind: Workflow
name: on-click
trigger: {event: go-click}
list: news
steps:
  - {id: offer, send: mail/a, subject: Offer}
  - {id: wait, wait_until: {clicked: offer}, timeout: 2d}
  - {id: next, tag: went-on}
---
kind: Workflow
name: on-event
trigger: {event: go-event}
list: news
steps:
  - {id: wait, wait_until: {event: purchase}, timeout: 2d}
  - {id: next, tag: went-on}
---
kind: Workflow
name: on-segment
trigger: {event: go-segment}
list: news
steps:
  - {id: wait, wait_until: {in_segment: buyers}, timeout: 2d}
  - {id: next, tag: went-on}
"""


def steps_at(j: Journey, email: str) -> list[tuple[str, str, str]]:
    """(step, when, result) of everything the contact's runs did, in order."""
    rows = j.db.conn.execute(
        "SELECT s.step, s.at, s.result FROM workflow_steps s JOIN workflow_runs r ON r.id = s.run_id "
        "JOIN contacts c ON c.id = r.contact_id WHERE c.email = ? ORDER BY s.id",
        (email,),
    )
    return [(str(a), str(b), str(c)) for a, b, c in rows]


@pytest.mark.parametrize("kind", ["click", "event", "segment"])
def test_wait_until_goes_on_when_its_condition_holds_or_at_its_timeout(
    tmp_path: Path, server: tuple[Sink, int], kind: str
) -> None:
    j = journey(tmp_path, server, WAITS)
    j.at("2026-03-02T08:00:00Z")
    people = ("yes@example.com", "no@example.com", "machine@example.com")
    for email in people:
        j.person(email, lists=("news",), at="2026-03-02T08:00:00Z", orders=0)
        j.event(email, f"go-{kind}", at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:00:00Z")
    if kind == "click":
        j.opens("yes@example.com", "offer", at="2026-03-03T09:00:00Z", action="clicked")
        j.opens("machine@example.com", "offer", at="2026-03-03T09:00:00Z", action="clicked", machine=True)
    elif kind == "event":
        j.event("yes@example.com", "purchase", at="2026-03-03T09:00:00Z")
    else:
        j.person("yes@example.com", at="2026-03-03T09:00:00Z", orders=2)
    j.at("2026-03-03T09:05:00Z")
    assert steps_at(j, "yes@example.com")[-2:] == [
        ("wait", "2026-03-03T09:05:00Z", "condition met"),
        ("next", "2026-03-03T09:05:00Z", "tagged went-on"),
    ]
    j.at("2026-03-04T08:59:59Z")
    for email in people[1:]:
        assert j.runs(email)[0][2:] == ("active", "wait")
    j.at("2026-03-04T09:00:00Z")  # two days after the runs reached the wait
    for email in people[1:]:  # a link scanner's click is not the person's
        assert steps_at(j, email)[-2:] == [
            ("wait", "2026-03-04T09:00:00Z", "timed out"),
            ("next", "2026-03-04T09:00:00Z", "tagged went-on"),
        ]


def test_if_on_a_field_and_on_a_tag_takes_each_branch(tmp_path: Path, server: tuple[Sink, int]) -> None:
    workflow = """
        kind: Workflow
        name: sort
        trigger: {event: sort}
        list: news
        steps:
          - id: by-orders
            if: {field: orders, gte: 1}
            then: [{id: buyer, tag: buyer}]
            else: [{id: browser, tag: browser}]
          - id: by-tag
            if: {tag: vip}
            then: [{id: vip-mail, send: mail/a, subject: For our VIPs}]
            else: [{id: plain-mail, send: mail/b, subject: For everyone}]
        """
    j = journey(tmp_path, server, workflow)
    j.at("2026-03-02T08:00:00Z")
    vip = j.person("vip@example.com", lists=("news",), at="2026-03-02T08:00:00Z", orders=3)
    with write(j.db):
        change_tag(j.db, vip, "vip", present=True, at="2026-03-02T08:00:00Z")
    j.person("new@example.com", lists=("news",), at="2026-03-02T08:00:00Z", orders=0)
    for email in ("vip@example.com", "new@example.com"):
        j.event(email, "sort", at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:01:00Z")
    assert j.history("vip@example.com") == [
        ("by-orders", "then"),
        ("buyer", "tagged buyer"),
        ("by-tag", "then"),
        ("vip-mail", "queued"),
    ]
    assert j.history("new@example.com") == [
        ("by-orders", "else"),
        ("browser", "tagged browser"),
        ("by-tag", "else"),
        ("plain-mail", "queued"),
    ]
    assert j.contact("vip@example.com")["tags"] == ["buyer", "vip"]
    assert j.contact("new@example.com")["tags"] == ["browser"]
    assert ("vip@example.com", "For our VIPs") in j.received()
    assert ("new@example.com", "For everyone") in j.received()


# --- rules of sending ---------------------------------------------------------------------------------------------


def test_a_workflows_list_id_and_unsubscribe_link_are_those_of_its_list(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    workflows = """
        kind: Workflow
        name: thanks
        trigger: {event: purchase}
        list: customers
        steps:
          - {id: thank, send: mail/a, subject: Thank you}
        ---
        kind: Workflow
        name: welcome
        trigger: {subscribed: news}
        steps:
          - {id: hello, send: mail/b, subject: Welcome}
        """
    j = journey(tmp_path, server, workflows)
    j.at("2026-03-02T08:00:00Z")
    j.person("ann@example.com", lists=("news", "customers"), at="2026-03-02T08:30:00Z")
    j.event("ann@example.com", "purchase", at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:01:00Z")
    messages = {str(parse(data)["Subject"]): parse(data) for _, data in server[0].messages}
    assert str(messages["Thank you"]["List-Id"]).startswith("Customers <customers.")
    assert str(messages["Welcome"]["List-Id"]).startswith("News <news.")
    header = str(messages["Thank you"]["List-Unsubscribe"])
    link = next(part.strip(" <>") for part in header.split(",") if "http" in part)
    with WebServer(tmp_path) as base, httpx.Client() as client:
        local = link.replace("https://mail.example.com", base)
        assert client.post(local, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert j.contact("ann@example.com")["lists"] == {"customers": "unsubscribed", "news": "subscribed"}


def test_quiet_hours_after_midnight_hold_messages_to_the_end_of_the_window_in_each_time_zone(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    workflow = """
        kind: Workflow
        name: nightly
        trigger: {event: visit}
        list: news
        steps:
          - {id: hi, send: mail/a, subject: Hi}
        """
    j = journey(tmp_path, server, workflow, settings='quiet_hours: {start: "21:00", end: "08:00"}')
    j.at("2026-03-02T08:00:00Z")
    j.person("tokyo@example.com", lists=("news",), at="2026-03-02T08:00:00Z", timezone="Asia/Tokyo")
    j.person("warsaw@example.com", lists=("news",), at="2026-03-02T08:00:00Z", timezone="Europe/Warsaw")
    j.person("owl@example.com", lists=("news",), at="2026-03-02T08:00:00Z", timezone="Europe/Warsaw")

    def held() -> dict[str, str]:
        rows = j.db.conn.execute(
            "SELECT c.email, l.next_attempt_at FROM ledger l JOIN contacts c ON c.id = l.contact_id "
            "WHERE l.state = 'queued' AND l.last_reply LIKE '%quiet hours%'"
        )
        return {str(email): str(until) for email, until in rows}

    j.event("tokyo@example.com", "visit", at="2026-03-02T17:30:00Z")
    j.event("warsaw@example.com", "visit", at="2026-03-02T17:30:00Z")
    j.at("2026-03-02T17:30:00Z")  # 02:30 on the 3rd in Tokyo (quiet), 18:30 in Warsaw
    assert j.sent("warsaw@example.com") == ["nightly/hi"] and j.sent("tokyo@example.com") == []
    assert held() == {"tokyo@example.com": "2026-03-02T23:00:00Z"}  # 08:00 in Tokyo, not 08:00 the next day
    j.at("2026-03-02T22:59:00Z")
    assert j.sent("tokyo@example.com") == []
    j.at("2026-03-02T23:00:00Z")
    assert j.sent("tokyo@example.com") == ["nightly/hi"]
    j.event("owl@example.com", "visit", at="2026-03-02T23:30:00Z")
    j.at("2026-03-02T23:30:00Z")  # 00:30 on the 3rd in Warsaw (quiet)
    assert held() == {"owl@example.com": "2026-03-03T07:00:00Z"}  # 08:00 in Warsaw, the same morning
    j.at("2026-03-03T06:59:00Z")
    assert j.sent("owl@example.com") == []
    j.at("2026-03-03T07:00:00Z")
    assert j.sent("owl@example.com") == ["nightly/hi"]


def test_the_contacts_own_frequency_choice_holds_a_workflow_message(tmp_path: Path, server: tuple[Sink, int]) -> None:
    workflows = """
        kind: Workflow
        name: pair
        trigger: {event: go}
        list: news
        steps:
          - {id: first, send: mail/a, subject: First}
          - {id: pause, wait: 1d}
          - {id: second, send: mail/b, subject: Second}
        """
    j = journey(tmp_path, server, workflows)
    j.at("2026-03-02T08:00:00Z")
    weekly = j.person("weekly@example.com", lists=("news",), at="2026-03-02T08:00:00Z")
    save_preferences(j.db, weekly, lists={"news": True}, frequency="weekly", at="2026-03-02T08:00:00Z", ip=None)
    j.person("every@example.com", lists=("news",), at="2026-03-02T08:00:00Z")
    for email in ("weekly@example.com", "every@example.com"):
        j.event(email, "go", at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:00:00Z")
    j.at("2026-03-03T09:00:00Z")
    assert j.sent("every@example.com") == ["pair/first", "pair/second"]
    assert j.sent("weekly@example.com") == ["pair/first"]
    until, why = j.db.conn.execute(
        "SELECT next_attempt_at, last_reply FROM ledger WHERE stage = 'second' AND state = 'queued'"
    ).fetchone()
    assert until == "2026-03-09T09:00:00Z" and "the contact chose at most one email a week" in why
    assert j.runs("weekly@example.com") == [("pair", "", "completed", "")]  # the run is done: the message waits
    j.at("2026-03-09T08:59:00Z")
    assert j.sent("weekly@example.com") == ["pair/first"]
    j.at("2026-03-09T09:00:00Z")
    assert j.sent("weekly@example.com") == ["pair/first", "pair/second"]


@pytest.mark.parametrize("limit", ["weekly", "cap"])
def test_a_receipt_counts_toward_no_marketing_limit(tmp_path: Path, server: tuple[Sink, int], limit: str) -> None:
    """The contact's own choice (at most one email a week) and the frequency cap are about marketing: a receipt
    sent an hour earlier holds back no marketing message."""
    workflows = """
        kind: Workflow
        name: receipt
        trigger: {event: buy}
        category: transactional
        steps:
          - {id: receipt, send: mail/b, subject: Your receipt}
        ---
        kind: Workflow
        name: tips
        trigger: {event: go}
        list: news
        steps:
          - {id: tip, send: mail/a, subject: A tip}
          - {id: more, send: mail/c, subject: Another tip}
        """
    settings = "frequency_cap: {max: 1, per: 7d}" if limit == "cap" else ""
    j = journey(tmp_path, server, workflows, settings=settings)
    j.at("2026-03-02T08:00:00Z")
    lu = j.person("lu@example.com", lists=("news",), at="2026-03-02T08:00:00Z")
    if limit == "weekly":
        save_preferences(j.db, lu, lists={"news": True}, frequency="weekly", at="2026-03-02T08:00:00Z", ip=None)
    j.event("lu@example.com", "buy", at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:00:00Z")
    assert j.sent("lu@example.com") == ["receipt/receipt"]
    j.event("lu@example.com", "go", at="2026-03-02T10:00:00Z")
    j.at("2026-03-02T10:00:00Z")
    sent = j.sent("lu@example.com")
    held = j.db.conn.execute("SELECT last_reply FROM ledger WHERE workflow = 'tips' AND state = 'queued'").fetchall()
    # one of the two tips goes out at once, the receipt an hour before notwithstanding; the other waits its turn
    assert len(sent) == 2 and sent[0] == "receipt/receipt" and sent[1].startswith("tips/"), held
    assert len(held) == 1 and str(held[0][0]).startswith("postponed: "), held


# --- what validate says -----------------------------------------------------------------------------------------


def problems(tmp_path: Path, workflows: str) -> list[str]:
    from reconciler.check import validate_workspace

    sink = Sink()
    Journey(tmp_path, sink, 25, workflows)  # the files only; nothing is sent
    _, found = validate_workspace(tmp_path)
    return [p.format() for p in found if p.severity == "error"]


def test_workflows_that_feed_each_other_in_a_loop_are_an_error_naming_the_path(tmp_path: Path) -> None:
    loop = """
        kind: Workflow
        name: onboard
        trigger: {subscribed: news}
        re_entry: always
        steps:
          - {id: to-vip, add_to_list: vip}
        ---
        kind: Workflow
        name: vip-care
        trigger: {subscribed: vip}
        re_entry: {after: 1d}
        steps:
          - {id: back, move_to_list: {from: vip, to: news}}
        """
    found = problems(tmp_path, loop)
    assert len(found) == 1, found
    assert (
        "spec/workflows.yaml:6:18: Workflow onboard: steps[0].add_to_list: workflows loop: onboard adds contacts to "
        "vip, which starts vip-care; vip-care adds contacts to news, which starts onboard; and each lets a contact "
        "in again (set `re_entry: never` on one of them" in found[0]
    )
    assert problems(tmp_path, loop.replace("re_entry: {after: 1d}", "re_entry: never")) == []


def test_a_marketing_workflow_without_a_list_and_bad_date_triggers_are_errors(tmp_path: Path) -> None:
    workflows = """
        kind: Workflow
        name: nolist
        trigger: {event: signup}
        steps:
          - {id: hi, send: mail/a, subject: Hi}
        ---
        kind: Workflow
        name: dates
        trigger: {date_field: stage, before: 1w, after: 36h}
        list: news
        steps:
          - {id: hi, send: mail/a, subject: Hi}
        ---
        kind: Workflow
        name: early
        trigger: {subscribed: news}
        steps:
          - {id: check, wait_until: {opened: later}, timeout: 1d}
          - {id: later, send: mail/a, subject: Hi}
        """
    found = "\n".join(problems(tmp_path, workflows))
    assert "Workflow nolist: trigger: a marketing workflow triggered by event needs `list:`" in found
    assert "Workflow dates: trigger.date_field: stage is not a date field" in found
    assert "Workflow dates: trigger.after: before and after both given" in found
    assert "Workflow dates: trigger.after: after: 36h is not a whole number of days" in found
    assert "Workflow early: steps[0].wait_until.opened: unknown send step id 'later'" in found


def test_a_workflow_that_brings_contacts_back_into_its_own_trigger_is_a_loop(tmp_path: Path) -> None:
    again = """
        kind: Workflow
        name: rejoin
        trigger: {subscribed: news}
        re_entry: always
        steps:
          - {id: out, remove_from_list: news}
          - {id: pause, wait: 1d}
          - {id: back, add_to_list: news}
        """
    found = problems(tmp_path, again)
    assert len(found) == 1, found
    assert (
        "spec/workflows.yaml:8:16: Workflow rejoin: steps[2].add_to_list: the workflow loops into itself: rejoin "
        "adds contacts to news, which starts rejoin, and it lets a contact in again (set `re_entry: never`, or stop "
        "adding contacts to the list that starts it)" in found[0]
    ), found
    assert problems(tmp_path, again.replace("re_entry: always", "re_entry: never")) == []


def test_validate_checks_what_a_workflow_test_names(tmp_path: Path) -> None:
    tests = (
        WELCOME
        + """
---
kind: WorkflowTest
name: wrong-workflow
workflow: welcom
expect: ["0 sent hello"]
---
kind: WorkflowTest
name: wrong-names
workflow: welcome
contact: {lists: [newz], fields: {ordres: 1}}
happens:
  - {at: 1d, opened: tip}
  - {at: 2d, clicked: pause}
  - {at: 3d, unsubscribed: newz}
expect: ["0 sent hello"]
"""
    )
    found = "\\n".join(problems(tmp_path, tests))
    assert "WorkflowTest wrong-workflow: workflow: unknown workflow 'welcom' (did you mean 'welcome'?)" in found
    assert "WorkflowTest wrong-names: happens[0].opened: unknown send step id 'tip' (did you mean 'tips'?" in found
    assert "WorkflowTest wrong-names: happens[1].clicked: unknown send step id 'pause'" in found  # not a send
    assert "WorkflowTest wrong-names: happens[2].unsubscribed: unknown list 'newz'" in found
    assert "WorkflowTest wrong-names: contact.lists[0]: unknown list 'newz'" in found
    assert "WorkflowTest wrong-names: contact.fields.ordres: unknown field 'ordres'" in found, found


def test_steps_after_an_unconditional_exit_are_unreachable(tmp_path: Path) -> None:
    workflows = """
        kind: Workflow
        name: stops
        trigger: {subscribed: news}
        steps:
          - {id: hello, send: mail/a, subject: Hi}
          - id: branch
            if: {tag: vip}
            then:
              - {id: bye, exit: true}
              - {id: never, tag: lost}
            else:
              - {id: regular, tag: regular}
          - id: both
            if: {tag: vip}
            then: [{id: out-a, exit: true, reason: vip}]
            else: [{id: out-b, exit: true}]
          - {id: after, send: mail/b, subject: Never}
          - {id: later, tag: never}
        """
    found = [line.removeprefix(f"{tmp_path}/") for line in problems(tmp_path, workflows)]
    assert found == [
        "spec/workflows.yaml:10:9: Workflow stops: steps[1].then[1]: step never is never reached: every run that "
        "gets here exits at step bye before it (remove it, or put the exit in a branch of an `if`)",
        "spec/workflows.yaml:17:5: Workflow stops: steps[3]: step after (and the 1 step after it) is never reached: "
        "every run that gets here exits at step both before it, in both branches (remove it, or put the exit in a "
        "branch of an `if`)",
    ], found
    fine = workflows.replace(" " * 14 + "- {id: never, tag: lost}\n", "").replace("else: [{id: out-b, exit: true}]", "")
    assert problems(tmp_path, fine) == []


# --- edits while runs are on their way ---------------------------------------------------------------------------

DRIP = """
kind: Workflow
name: drip
trigger: {subscribed: news}
steps:
  - {id: one, send: mail/a, subject: One}
  - {id: pause, wait: 3d}
  - {id: two, send: mail/b, subject: Two}
  - {id: rest, wait: 2d}
  - {id: three, send: mail/c, subject: Three}
"""


def test_a_shorter_wait_counts_from_when_the_run_reached_it(tmp_path: Path, server: tuple[Sink, int]) -> None:
    j = journey(tmp_path, server, DRIP)
    j.at("2026-03-02T08:00:00Z")
    j.person("fay@example.com", lists=("news",), at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:00:00Z")
    j.write_workflows(DRIP.replace("wait: 3d", "wait: 1d"))
    j.at("2026-03-03T08:59:00Z")
    assert j.sent("fay@example.com") == ["drip/one"]
    j.at("2026-03-03T09:00:00Z")  # a day after the run reached the wait, not a day after the edit
    assert j.sent("fay@example.com") == ["drip/one", "drip/two"]


def test_a_longer_wait_counts_from_when_the_run_reached_it(tmp_path: Path, server: tuple[Sink, int]) -> None:
    j = journey(tmp_path, server, DRIP)
    j.at("2026-03-02T08:00:00Z")
    j.person("fay@example.com", lists=("news",), at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:00:00Z")
    j.at("2026-03-04T09:00:00Z")  # two days into the three
    j.write_workflows(DRIP.replace("wait: 3d", "wait: 5d"))
    j.at("2026-03-05T09:00:00Z")  # the old wait would have ended here
    assert j.sent("fay@example.com") == ["drip/one"]
    j.at("2026-03-07T08:59:00Z")
    assert j.sent("fay@example.com") == ["drip/one"]
    j.at("2026-03-07T09:00:00Z")  # five days after the run reached the wait, not five days after the edit
    assert j.sent("fay@example.com") == ["drip/one", "drip/two"]


def test_removing_the_step_a_run_waits_on_ends_the_run_and_other_runs_go_on(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    j = journey(tmp_path, server, DRIP)
    j.at("2026-03-02T08:00:00Z")
    j.person("gus@example.com", lists=("news",), at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:00:00Z")
    j.person("hal@example.com", lists=("news",), at="2026-03-05T09:00:00Z")
    j.at("2026-03-05T09:00:00Z")  # gus reaches `rest`, hal waits in `pause`
    assert j.runs("gus@example.com")[0][3] == "rest" and j.runs("hal@example.com")[0][3] == "pause"
    shown = reconciler("status", cwd=tmp_path).stdout
    assert "Workflow drip: 2 active runs (pause 1, rest 1)" in shown
    j.write_workflows(DRIP.replace("  - {id: rest, wait: 2d}\n", ""))
    plan = reconciler("plan", "--now", "2026-03-08T09:00:00Z", cwd=tmp_path).stdout
    assert "1 active run on removed step rest will end; 1 active run stays on pause" in plan, plan
    j.at("2026-03-08T09:00:00Z")
    assert j.runs("gus@example.com") == [("drip", "", "ended", "rest")]
    outcome = j.db.conn.execute("SELECT outcome FROM workflow_runs WHERE step = 'rest'").fetchone()[0]
    assert outcome == "ended: step rest was removed from the workflow"
    assert j.sent("hal@example.com") == ["drip/one", "drip/two", "drip/three"]  # hal's run goes on without it


def test_plan_says_which_steps_the_runs_are_on_and_what_an_edit_or_a_removal_does_to_them(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    j = journey(tmp_path, server, DRIP)
    j.at("2026-03-02T08:00:00Z")
    j.person("gus@example.com", lists=("news",), at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:00:00Z")
    for email in ("hal@example.com", "ian@example.com"):
        j.person(email, lists=("news",), at="2026-03-05T09:00:00Z")
    j.at("2026-03-05T09:00:00Z")  # gus waits in `rest`, hal and ian in `pause`

    def plan() -> str:
        return reconciler("plan", "--now", "2026-03-05T10:00:00Z", cwd=tmp_path).stdout

    unchanged = plan()
    assert "Active runs of unchanged workflows:\n  drip  3 active runs: 2 on pause, 1 on rest\n" in unchanged, unchanged
    j.write_workflows(DRIP.replace("subject: Three", "subject: The third"))
    edited = plan()
    assert "steps or templates changed; 3 active runs stay on their steps: 2 on pause, 1 on rest" in edited, edited
    assert "unchanged workflows" not in edited
    j.write_workflows(DRIP.replace("  - {id: pause, wait: 3d}\n", ""))
    assert "2 active runs on removed step pause will end; 1 active run stays on rest" in plan()
    j.write_workflows("kind: List\nname: unused\ntitle: Unused\n")
    removed = plan()
    assert "removed from the spec; its 3 active runs will end (their history is kept): 2 on pause, 1 on rest" in removed


def test_pausing_holds_runs_and_their_messages_and_resuming_continues_them(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    j = journey(tmp_path, server, DRIP)
    j.at("2026-03-02T08:00:00Z")
    j.person("ida@example.com", lists=("news",), at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:00:00Z")
    j.write_workflows(DRIP.replace("name: drip", "name: drip\nstatus: paused"))
    j.at("2026-03-09T09:00:00Z")
    j.person("joe@example.com", lists=("news",), at="2026-03-09T10:00:00Z")  # no new runs while paused
    j.at("2026-03-09T10:00:00Z")
    assert j.sent("ida@example.com") == ["drip/one"] and j.runs("joe@example.com") == []
    j.write_workflows(DRIP)
    j.at("2026-03-09T11:00:00Z")
    assert j.sent("ida@example.com") == ["drip/one", "drip/two"]  # the wait is long over: on at once
    j.at("2026-03-11T11:00:00Z")
    assert j.sent("ida@example.com") == ["drip/one", "drip/two", "drip/three"]


def test_removing_a_workflow_ends_its_runs_skips_its_waiting_messages_and_keeps_the_history(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    workflows = (
        DRIP.replace("{id: two, send: mail/b, subject: Two}", "{id: two, send: mail/b, subject: Two}")
        + """
---
kind: Workflow
name: other
trigger: {event: ping}
list: news
steps:
  - {id: pong, send: mail/a, subject: Pong}
"""
    )
    j = journey(tmp_path, server, workflows)
    j.at("2026-03-02T08:00:00Z")
    j.person("kim@example.com", lists=("news",), at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:00:00Z")
    j.write_workflows(workflows.split("---")[1])
    j.at("2026-03-06T09:00:00Z")
    assert j.runs("kim@example.com") == [("drip", "", "ended", "pause")]
    assert j.sent("kim@example.com") == ["drip/one"]
    assert [step for step, _ in j.history("kim@example.com")] == ["one"]


def test_a_capped_message_goes_out_the_moment_the_window_ends(tmp_path: Path, server: tuple[Sink, int]) -> None:
    workflow = """
        kind: Workflow
        name: pair
        trigger: {event: go}
        list: news
        steps:
          - {id: first, send: mail/a, subject: First}
          - {id: second, send: mail/b, subject: Second}
        """
    j = journey(tmp_path, server, workflow, settings="frequency_cap: {max: 1, per: 1d}")
    j.at("2026-03-02T08:00:00Z")
    j.person("lu@example.com", lists=("news",), at="2026-03-02T08:00:00Z")
    j.event("lu@example.com", "go", at="2026-03-02T09:00:00Z")
    j.at("2026-03-02T09:00:00Z")
    assert j.sent("lu@example.com") == ["pair/first"]
    held = j.db.conn.execute("SELECT next_attempt_at FROM ledger WHERE stage = 'second'").fetchone()[0]
    assert held == "2026-03-03T09:00:00Z"
    j.at("2026-03-03T09:00:00Z")  # a message sent exactly a day ago is no longer within the last day
    assert j.sent("lu@example.com") == ["pair/first", "pair/second"]


# --- tests of marketing logic, in the workspace ------------------------------------------------------------------


def test_the_examples_workflow_tests_pass_and_a_wrong_timeline_prints_a_diff(example: Path) -> None:
    passed = reconciler("test", cwd=example)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "PASS welcome-reader (welcome, 6 lines)" in passed.stdout
    assert "PASS cart-bought-before-the-reminder (abandoned-cart, 1 line)\n" in passed.stdout
    for workflow in ("birthday", "win-back", "first-purchase-feedback"):  # every example workflow has tests
        assert f"({workflow}, " in passed.stdout, passed.stdout
    tests = example / "spec/workflow-tests.yaml"
    tests.write_text(tests.read_text().replace("  - 5d sent nudge\n", "  - 4d sent nudge\n"))
    failed = reconciler("test", cwd=example)
    assert failed.returncode == 1
    assert "FAIL welcome-skimmer (welcome) at spec/workflow-tests.yaml:" in failed.stdout
    assert "  -4d sent nudge" in failed.stdout and "  +5d sent nudge" in failed.stdout
    assert not (example / ".state").exists()  # nothing was written
    unknown = reconciler("test", "no-such-test", cwd=example)
    assert unknown.returncode == 2 and "no WorkflowTest named no-such-test" in unknown.stderr


def test_simulate_prints_a_timeline_with_quiet_hours_and_what_the_contact_does(example: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.yaml"
    events.write_text("- {at: 30m, event: purchase}\n")
    result = reconciler(
        "simulate",
        "abandoned-cart",
        "--fields",
        '{"first_name": "Ann", "timezone": "Asia/Tokyo"}',
        "--events",
        str(events),
        "--start",
        "2030-01-07T10:00:00Z",
        cwd=example,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Workflow abandoned-cart for test.contact@example.com, from 2030-01-07T10:00:00+00:00:",
        "  30m exited: purchase",
    ]
    night = reconciler(
        "simulate",
        "abandoned-cart",
        "--fields",
        '{"timezone": "Asia/Tokyo"}',
        "--start",
        "2030-01-07T14:00:00Z",
        cwd=example,
    )
    assert night.stdout.splitlines()[1] == "  9h sent reminder"  # 00:00 in Tokyo: held until 08:00
    bad = reconciler("simulate", "abandoned-cart", "--fields", "[1]", cwd=example)
    assert bad.returncode == 2 and "--fields: write a JSON object of fields" in bad.stderr


def test_simulate_a_real_contact_with_their_lists_for_a_number_of_days(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    j = journey(tmp_path, server, WELCOME)
    j.at("2026-03-02T08:00:00Z")
    j.person("ada@example.com", at="2026-03-02T08:00:00Z", first_name="Ada", timezone="Asia/Tokyo")
    j.person("reader@example.com", lists=("news",), at="2026-03-02T08:00:00Z", first_name="Reader")
    j.at("2026-03-02T08:01:00Z")
    before = j.db.conn.execute("SELECT (SELECT count(*) FROM workflow_runs), (SELECT count(*) FROM ledger)").fetchone()

    def simulate(email: str, *options: str) -> list[str]:
        done = reconciler(
            "simulate", "welcome", "--contact", email, "--start", "2030-01-07T10:00:00Z", *options, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    assert simulate("reader@example.com") == [
        "Workflow welcome for reader@example.com, from 2030-01-07T10:00:00+00:00:",
        "  0 sent hello",
        "  2d sent tips",
        "  5d else branch",
        "  5d sent nudge",
        "  5d added to customers",
        "  5d completed",
    ]
    assert simulate("reader@example.com", "--days", "3")[1:] == ["  0 sent hello", "  2d sent tips"]
    assert simulate("reader@example.com", "--days", "1")[1:] == ["  0 sent hello"]
    outside = simulate("ada@example.com", "--days", "1")  # as she is: not on the workflow's list
    assert outside[1].startswith("  0 not sent hello (skipped: ") and "news" in outside[1], outside
    unknown = reconciler("simulate", "welcome", "--contact", "nobody@example.com", cwd=tmp_path)
    assert unknown.returncode == 2 and "nobody@example.com is not a contact in the state database" in unknown.stderr
    after = j.db.conn.execute("SELECT (SELECT count(*) FROM workflow_runs), (SELECT count(*) FROM ledger)").fetchone()
    assert after == before  # nothing was written
