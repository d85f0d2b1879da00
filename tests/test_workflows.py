"""Workflows that run: each trigger, each step, both branches, exits, re-entry and keys, on a fixed clock.

Every test moves one workspace through simulated days with `Journey.at` (a daemon pass at that moment) and sends
to a real SMTP server on loopback; it asserts what a marketer would check: who got which message when, where each
run is, and what happened to the contact's lists, tags and fields.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import reconciler
from journeys import Journey
from reconciler.state.contacts import change_tag
from reconciler.state.db import write
from reconciler.state.subscribers import change_subscriptions
from smtp_sink import Sink, SinkServer

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
        "simulate", "abandoned-cart", "--fields", '{"first_name": "Ann", "timezone": "Asia/Tokyo"}',
        "--events", str(events), "--start", "2030-01-07T10:00:00Z", cwd=example,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Workflow abandoned-cart for test.contact@example.com, from 2030-01-07T10:00:00+00:00:",
        "  30m exited: purchase",
    ]
    night = reconciler(
        "simulate", "abandoned-cart", "--fields", '{"timezone": "Asia/Tokyo"}', "--start", "2030-01-07T14:00:00Z",
        cwd=example,
    )  # fmt: skip
    assert night.stdout.splitlines()[1] == "  9h sent reminder"  # 00:00 in Tokyo: held until 08:00
    bad = reconciler("simulate", "abandoned-cart", "--fields", "[1]", cwd=example)
    assert bad.returncode == 2 and "--fields: write a JSON object of fields" in bad.stderr
