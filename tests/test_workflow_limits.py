"""Workflows against the limits a marketer relies on: the frequency cap with many runs at once, exits that stop
mail already waiting, a person's own unsubscribe, one birthday a year, keys that must be there, durations that fit
in a calendar, and edits that must not flood a segment's members. Each was found by an adversarial trial.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import reconciler
from journeys import Journey
from smtp_sink import Sink, SinkServer


@pytest.fixture
def server() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    with SinkServer(sink) as port:
        yield sink, port


def journey(tmp_path: Path, server: tuple[Sink, int], workflows: str, *, settings: str = "") -> Journey:
    sink, port = server
    return Journey(tmp_path, sink, port, workflows, settings=settings)


CARTS = """
kind: Workflow
name: cart
trigger: {event: cart_abandoned, key: cart_id}
list: customers
re_entry: always
exit_when: {event: purchase}
steps:
  - {id: wait, wait: 1h}
  - {id: reminder, send: mail/a, subject: Your cart}
"""


def test_the_frequency_cap_holds_when_one_contact_has_many_runs_due_at_once(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    j = journey(tmp_path, server, CARTS, settings="frequency_cap: {max: 3, per: 7d}")
    j.at("2030-03-10T08:00:00Z")
    j.person("nine@example.com", lists=("customers",), at="2030-03-10T08:00:00Z")
    for cart in range(9):
        j.event("nine@example.com", "cart_abandoned", at="2030-03-10T10:00:00Z", cart_id=f"k{cart}")
    j.at("2030-03-10T10:00:00Z")
    j.at("2030-03-10T11:00:00Z")
    assert len(j.sent("nine@example.com")) == 3
    held = j.db.conn.execute("SELECT count(*) FROM ledger WHERE last_reply LIKE 'postponed: frequency cap%'")
    assert held.fetchone()[0] == 6


def test_an_exit_event_stops_a_message_that_was_waiting_for_the_morning(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    j = journey(tmp_path, server, CARTS, settings='quiet_hours: {start: "21:00", end: "08:00"}')
    j.at("2030-03-04T18:00:00Z")
    j.person("night@example.com", lists=("customers",), at="2030-03-04T18:00:00Z")
    j.event("night@example.com", "cart_abandoned", at="2030-03-04T20:00:00Z", cart_id="A")
    j.at("2030-03-04T20:00:00Z")
    j.at("2030-03-04T21:01:00Z")  # 22:01 in Warsaw: the reminder waits for 08:00
    assert j.sent("night@example.com") == []
    j.event("night@example.com", "purchase", at="2030-03-04T23:00:00Z")
    j.at("2030-03-04T23:00:00Z")
    j.at("2030-03-05T07:30:00Z")
    assert j.sent("night@example.com") == []
    reply = j.db.conn.execute("SELECT state, last_reply FROM ledger WHERE stage = 'reminder'").fetchone()
    assert reply == ("skipped", "not sent: the run exited (purchase) before the message went out")


FEEDBACK = """
kind: Workflow
name: feedback
trigger: {event: purchase}
list: customers
re_entry: always
steps:
  - {id: join, add_to_list: customers}
  - {id: ask, send: mail/a, subject: How was your order}
"""


def test_a_workflow_never_subscribes_again_someone_who_unsubscribed(tmp_path: Path, server: tuple[Sink, int]) -> None:
    j = journey(tmp_path, server, FEEDBACK)
    j.at("2030-03-02T08:00:00Z")
    j.person("left@example.com", lists=("customers",), at="2030-03-02T08:00:00Z")
    j.leave("left@example.com", "customers", at="2030-03-02T09:00:00Z")
    j.person("new@example.com", at="2030-03-02T09:00:00Z")
    for email in ("left@example.com", "new@example.com"):
        j.event(email, "purchase", at="2030-03-02T10:00:00Z")
    j.at("2030-03-02T10:01:00Z")
    assert j.contact("left@example.com")["lists"] == {"customers": "unsubscribed"}
    assert j.sent("left@example.com") == []
    assert j.contact("new@example.com")["lists"] == {"customers": "subscribed"}
    assert j.sent("new@example.com") == ["feedback/ask"]
    reply = j.db.conn.execute(
        "SELECT l.last_reply FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE c.email = 'left@example.com'"
    ).fetchone()[0]
    assert reply.startswith("not sent: the contact unsubscribed from the workflow's list (customers)")


def test_a_yearly_date_starts_one_run_per_year_whatever_the_re_entry_rule(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    workflow = """
        kind: Workflow
        name: birthday
        trigger: {date_field: birthday, at: "09:00"}
        list: news
        re_entry: always
        steps:
          - {id: gift, send: mail/a, subject: Happy birthday}
        """
    j = journey(tmp_path, server, workflow)
    j.at("2030-12-01T00:00:00Z")
    j.person("dec@example.com", lists=("news",), at="2030-12-01T00:00:00Z", birthday="1990-12-04")
    for moment in ("08:30", "09:00", "09:01", "10:00", "11:00", "23:00"):
        j.at(f"2030-12-04T{moment}:00Z")
    assert j.sent("dec@example.com") == ["birthday/gift"]
    assert [key for _, key, _, _ in j.runs("dec@example.com")] == ["2030"]


def test_an_event_without_the_key_starts_no_run_and_the_pass_says_so(
    tmp_path: Path, server: tuple[Sink, int], caplog: pytest.LogCaptureFixture
) -> None:
    j = journey(tmp_path, server, CARTS)
    j.at("2030-03-02T08:00:00Z")
    j.person("keys@example.com", lists=("customers",), at="2030-03-02T08:00:00Z")
    j.event("keys@example.com", "cart_abandoned", at="2030-03-02T09:00:00Z", cart_id="A")
    j.event("keys@example.com", "cart_abandoned", at="2030-03-02T09:00:00Z")
    j.event("keys@example.com", "cart_abandoned", at="2030-03-02T09:00:00Z", cart_id=None)
    j.event("keys@example.com", "cart_abandoned", at="2030-03-02T09:00:00Z", cart_id=7)
    j.event("keys@example.com", "cart_abandoned", at="2030-03-02T09:00:00Z", cart_id="x" * 250 + "1")
    j.event("keys@example.com", "cart_abandoned", at="2030-03-02T09:00:00Z", cart_id="x" * 250 + "2")
    with caplog.at_level("INFO", logger="reconciler"):
        result = j.at("2030-03-02T09:01:00Z")
    keys = sorted(key for _, key, _, _ in j.runs("keys@example.com"))
    assert len(keys) == 4 and keys[:2] == ["7", "A"] and keys[2] != keys[3]
    assert result.workflows.ignored == {"cart: events without cart_id": 2}
    assert "2 cart: events without cart_id" in caplog.text


def test_durations_longer_than_ten_years_are_refused_where_they_are_written(example: Path) -> None:
    workflow = """kind: Workflow
name: forever
trigger: {event: go}
category: transactional
steps:
  - {id: rest, wait: 500000w}
"""
    (example / "spec/forever.yaml").write_text(workflow)
    result = reconciler("validate", cwd=example)
    assert "spec/forever.yaml:6:" in result.stdout
    assert "Workflow forever: steps[0].wait: 500000w is longer than 10 years" in result.stdout


SEGMENT_WORKFLOW = """
kind: Segment
name: fans
where: {{field: orders, gte: {least}}}
---
kind: Workflow
name: welcome-fans
trigger: {{segment_entered: fans}}
list: news
steps:
  - {{id: hi, send: mail/a, subject: Hi fan}}
"""


def test_a_changed_segment_trigger_starts_again_without_flooding_its_members(
    tmp_path: Path, server: tuple[Sink, int]
) -> None:
    j = journey(tmp_path, server, SEGMENT_WORKFLOW.format(least=10))
    j.person("big@example.com", lists=("news",), at="2030-03-01T00:00:00Z", orders=20)
    j.person("small@example.com", lists=("news",), at="2030-03-01T00:00:00Z", orders=3)
    j.at("2030-03-02T08:00:00Z")
    assert j.sent("big@example.com") == [] and j.sent("small@example.com") == []
    j.write_workflows(SEGMENT_WORKFLOW.format(least=1))  # the segment now takes in the small buyer too
    j.at("2030-03-02T09:00:00Z")
    j.at("2030-03-02T09:01:00Z")
    assert j.sent("small@example.com") == []
    j.person("later@example.com", lists=("news",), at="2030-03-02T10:00:00Z", orders=1)
    j.at("2030-03-02T10:01:00Z")
    j.at("2030-03-02T10:02:00Z")
    assert j.sent("later@example.com") == ["welcome-fans/hi"]


def test_validate_refuses_what_would_override_a_persons_choice(example: Path) -> None:
    (example / "spec/push.yaml").write_text(
        """kind: Workflow
name: push
trigger: {event: go}
list: offers
steps:
  - {id: join, add_to_list: newsletter}
---
kind: Workflow
name: receipts
category: transactional
trigger: {subscribed: offers}
steps:
  - wait: 1d
  - {id: promo, tag: promo}
"""
    )
    out = reconciler("validate", cwd=example).stdout
    assert "spec/push.yaml:6:" in out
    assert "Workflow push: steps[0].add_to_list: newsletter is a double opt-in list" in out
    assert "Workflow receipts: trigger.subscribed: offers is a marketing list" in out
    assert "Workflow receipts: steps[0]: a step without an id" in out


def test_simulate_tells_a_contact_outside_the_list_from_a_subscriber_and_refuses_an_impossible_start(
    example: Path,
) -> None:
    monday = ("--start", "2030-01-07T10:00:00Z")
    outside = reconciler("simulate", "abandoned-cart", "--fields", '{"lists": []}', *monday, cwd=example)
    assert outside.returncode == 0, outside.stderr
    assert "1h not sent reminder (skipped: the contact is not subscribed to customers" in outside.stdout
    inside = reconciler("simulate", "abandoned-cart", *monday, cwd=example)
    assert "1h sent reminder" in inside.stdout
    for start in ("garbage", "9999-12-31T00:00:00Z"):
        bad = reconciler("simulate", "abandoned-cart", "--start", start, cwd=example)
        assert bad.returncode == 2 and f"--start {start}: " in bad.stderr and "unexpected" not in bad.stderr


def test_plan_says_a_pause_is_a_pause(tmp_path: Path, server: tuple[Sink, int]) -> None:
    j = journey(tmp_path, server, CARTS)
    j.at("2030-03-02T08:00:00Z")
    j.person("p@example.com", lists=("customers",), at="2030-03-02T08:00:00Z")
    j.event("p@example.com", "cart_abandoned", at="2030-03-02T08:00:00Z", cart_id="A")
    j.at("2030-03-02T08:01:00Z")
    j.write_workflows(CARTS.replace("name: cart\n", "name: cart\nstatus: paused\n"))
    paused = reconciler("plan", "--now", "2030-03-02T08:02:00Z", cwd=tmp_path)
    assert "paused: starts no runs until it is active again; 1 active run stays on wait (held" in paused.stdout
    j.at("2030-03-02T08:03:00Z")
    j.write_workflows(CARTS)
    assert "Workflow cart" in (again := reconciler("plan", "--now", "2030-03-02T08:04:00Z", cwd=tmp_path)).stdout
    assert "active again; 1 active run stays on wait" in again.stdout
