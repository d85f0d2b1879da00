"""Workflows on both engines (the `state_db` fixture: SQLite, then PostgreSQL), driven by the runner itself: a
journey applies the workspace and runs the workflows pass by pass on a fixed clock (`Journey.reconcile`: what the
daemon does before it sends), on the database it is given. Every trigger (a subscription, an event with a key and
a property condition, a date a week ahead on each contact's clock, a segment entry), waits, `wait_until` and `if`
on engagement, events and segments, tags, lists and fields, queued messages, exits, pauses and removal; then the
state functions' answers one by one, with the same assertions on each engine. Messages are only queued here (the
sending of workflow messages is tested in test_workflows.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pg_cluster
from journeys import Journey
from reconciler.clock import parse_instant
from reconciler.load import load_workspace
from reconciler.segment_show import show
from reconciler.state import workflow_reads, workflows
from reconciler.state.contacts import change_tag
from reconciler.state.db import open_postgres, write
from reconciler.state.postgres import connect
from reconciler.state.subscribers import change_subscriptions
from smtp_sink import Sink
from test_postgres_state import migrate, sqlite_state
from test_workflows import CART, WAITS, WELCOME, WINBACK


def journey(root: Path, db: Any, text: str, *, settings: str = "") -> Journey:
    return Journey(root, Sink(), 1, text, settings=settings, db=db)  # nothing is sent: no server behind port 1


def test_a_welcome_drip_waits_branches_on_a_persons_open_and_acts(tmp_path: Path, state_db: Any) -> None:
    j = journey(tmp_path, state_db, WELCOME)
    j.reconcile("2026-03-02T08:00:00Z")  # applied before anyone subscribes
    j.person("reader@example.com", lists=("news",), at="2026-03-02T09:00:00Z")
    j.person("skimmer@example.com", lists=("news",), at="2026-03-02T09:00:00Z")
    report = j.reconcile("2026-03-02T09:00:30Z").workflows
    assert report is not None and (report.started, report.advanced, report.queued) == (2, 2, 2)
    assert j.runs("reader@example.com") == [("welcome", "", "active", "pause")]
    assert workflows.next_due(state_db) == parse_instant("2026-03-04T09:00:30Z")
    j.reconcile("2026-03-04T09:00:00Z")  # the wait is not over
    assert j.queued("reader@example.com") == [("welcome/hello", "queued")]
    j.reconcile("2026-03-04T09:00:31Z")
    assert j.queued("reader@example.com") == [("welcome/hello", "queued"), ("welcome/tips", "queued")]
    assert workflows.active_by_step(state_db) == {"welcome": {"wait-for-tips": 2}}
    j.opens("reader@example.com", "tips", at="2026-03-04T12:00:00Z")
    j.opens("skimmer@example.com", "tips", at="2026-03-04T12:00:00Z", machine=True)  # a privacy proxy
    j.reconcile("2026-03-04T12:05:00Z")  # the open is seen within the poll of the wait_until
    assert j.history("reader@example.com") == [
        ("hello", "queued"),
        ("pause", "waited"),
        ("tips", "queued"),
        ("wait-for-tips", "condition met"),
        ("branch", "then"),
        ("more", "queued"),
        ("reader", "tagged reader"),
        ("done", "added to customers"),
    ]
    reader = j.contact("reader@example.com")
    assert reader["tags"] == ["reader"] and reader["lists"] == {"customers": "subscribed", "news": "subscribed"}
    assert j.runs("reader@example.com") == [("welcome", "", "completed", "")]
    assert j.runs("skimmer@example.com") == [("welcome", "", "active", "wait-for-tips")]
    j.reconcile("2026-03-07T09:00:31Z")  # the timeout: the machine's open was no person's
    assert j.history("skimmer@example.com")[-3:] == [
        ("branch", "else"),
        ("nudge", "queued"),
        ("done", "added to customers"),
    ]
    assert j.contact("skimmer@example.com")["tags"] == []
    assert workflow_reads.ended_runs(state_db, "welcome") == {"completed": 2}
    assert workflow_reads.messages_by_step(state_db, "welcome") == {
        step: {"sent": 0, "waiting": n, "postponed": 0, "failed": 0, "uncertain": 0, "skipped": 0}
        for step, n in {"hello": 2, "tips": 2, "more": 1, "nudge": 1}.items()
    }
    assert workflows.next_due(state_db) is None


def test_an_abandoned_cart_keys_runs_filters_by_total_and_a_purchase_exits_and_skips(
    tmp_path: Path, state_db: Any
) -> None:
    j = journey(tmp_path, state_db, CART)
    j.reconcile("2026-03-02T08:00:00Z")
    j.person("ann@example.com", lists=("customers",), at="2026-03-02T08:00:00Z")
    j.event("ann@example.com", "cart_abandoned", at="2026-03-02T09:00:00Z", cart_id="A", total=50)
    j.event("ann@example.com", "cart_abandoned", at="2026-03-02T09:01:00Z", cart_id="A", total=55)  # same cart
    j.event("ann@example.com", "cart_abandoned", at="2026-03-02T09:02:00Z", cart_id="B", total=80)
    j.event("ann@example.com", "cart_abandoned", at="2026-03-02T09:03:00Z", cart_id="C", total=5)  # too small
    j.event("ann@example.com", "cart_abandoned", at="2026-03-02T09:04:00Z", total=90)  # no key: ignored
    report = j.reconcile("2026-03-02T09:05:00Z").workflows
    assert report is not None and dict(report.ignored) == {"cart: events without cart_id": 1}
    assert [(key, state) for _, key, state, _ in j.runs("ann@example.com")] == [("A", "active"), ("B", "active")]
    j.reconcile("2026-03-02T10:06:00Z")
    assert j.queued("ann@example.com") == [("cart/reminder", "queued"), ("cart/reminder", "queued")]
    j.event("ann@example.com", "purchase", at="2026-03-02T11:00:00Z", order="1")
    report = j.reconcile("2026-03-02T11:01:00Z").workflows
    assert report is not None and report.finished == {"exited": 2}
    assert [(state, step) for _, _, state, step in j.runs("ann@example.com")] == [("exited", "later")] * 2
    assert j.queued("ann@example.com") == [("cart/reminder", "skipped"), ("cart/reminder", "skipped")]
    reply = "not sent: the run exited (purchase) before the message went out"
    failures = workflow_reads.workflow_failures(state_db, "cart", limit=5)
    assert [(f.email, f.stage, f.state, f.attempts, f.reply) for f in failures] == [
        ("ann@example.com", "reminder", "skipped", 0, reply)
    ] * 2
    assert workflow_reads.messages_by_workflow(state_db)["cart"]["skipped"] == 2
    assert workflow_reads.ended_runs(state_db, "cart") == {"exited: purchase": 2}


@pytest.mark.parametrize(("rule", "expected"), [("never", 1), ("{after: 10d}", 1), ("{after: 2d}", 2)])
def test_re_entry_rules(tmp_path: Path, state_db: Any, rule: str, expected: int) -> None:
    j = journey(
        tmp_path,
        state_db,
        f"""
        kind: Workflow
        name: thanks
        trigger: {{event: purchase}}
        list: customers
        re_entry: {rule}
        steps:
          - {{id: thank, send: mail/a, subject: Thank you}}
        """,
    )
    j.reconcile("2026-03-02T08:00:00Z")
    j.person("cy@example.com", lists=("customers",), at="2026-03-02T08:00:00Z")
    j.event("cy@example.com", "purchase", at="2026-03-02T09:00:00Z")
    j.reconcile("2026-03-02T09:01:00Z")
    j.event("cy@example.com", "purchase", at="2026-03-05T09:00:00Z")
    j.reconcile("2026-03-05T09:01:00Z")
    assert len(j.queued("cy@example.com")) == expected


def test_a_birthday_a_week_ahead_at_nine_on_each_contacts_own_clock(tmp_path: Path, state_db: Any) -> None:
    j = journey(
        tmp_path,
        state_db,
        """
        kind: Workflow
        name: birthday
        trigger: {date_field: birthday, at: "09:00", before: 1w}
        list: news
        steps:
          - {id: gift, send: mail/a, subject: A gift for your birthday}
        """,
    )
    j.reconcile("2026-03-01T00:00:00Z")
    at = "2026-03-01T00:00:00Z"
    j.person("tokyo@example.com", lists=("news",), at=at, timezone="Asia/Tokyo", birthday="1990-03-16")
    j.person("nyc@example.com", lists=("news",), at=at, timezone="America/New_York", birthday="1985-03-16")
    j.person("leap@example.com", lists=("news",), at=at, birthday="2000-02-29")
    j.person("odd@example.com", lists=("news",), at=at, birthday=19900316)  # not a date: never celebrated
    assert workflows.date_candidates(state_db, "birthday", ["03-16"]) == [
        (1, "1990-03-16", "Asia/Tokyo"),
        (2, "1985-03-16", "America/New_York"),
    ]
    j.reconcile("2026-03-08T23:59:00Z")  # 08:59 on the 9th in Tokyo: not yet
    assert j.queued("tokyo@example.com") == []
    j.reconcile("2026-03-09T00:01:00Z")  # 09:01 in Tokyo
    assert j.queued("tokyo@example.com") == [("birthday/gift", "queued")] and j.queued("nyc@example.com") == []
    j.reconcile("2026-03-09T13:01:00Z")  # 09:01 in New York (daylight saving time began on the 8th)
    j.reconcile("2026-03-09T20:00:00Z")
    assert j.queued("nyc@example.com") == j.queued("tokyo@example.com") == [("birthday/gift", "queued")]
    assert [key for _, key, _, _ in j.runs("tokyo@example.com")] == ["2026"]
    j.reconcile("2027-02-21T09:00:00Z")  # 29 February is celebrated on the 28th in 2027: a week before is the 21st
    assert j.queued("leap@example.com") == [("birthday/gift", "queued")] and j.runs("odd@example.com") == []
    triggers = state_db.conn.execute("SELECT trigger FROM workflow_runs ORDER BY id").fetchall()
    assert [t for (t,) in triggers] == [
        "date birthday 2026-03-16",
        "date birthday 2026-03-16",
        "date birthday 2027-02-28",
    ]


@pytest.mark.parametrize("backfill", [False, True])
def test_segment_entered_starts_runs_for_those_who_enter(tmp_path: Path, state_db: Any, backfill: bool) -> None:
    trigger = "trigger: {segment_entered: lapsed, backfill: true}" if backfill else "trigger: {segment_entered: lapsed}"
    j = journey(tmp_path, state_db, WINBACK.replace("trigger: {segment_entered: lapsed}", trigger))
    j.person("already@example.com", lists=("news",), at="2026-03-01T00:00:00Z", orders=0)
    j.person("buyer@example.com", lists=("news",), at="2026-03-01T00:00:00Z", orders=3)
    j.reconcile("2026-03-02T08:00:00Z")
    assert j.queued("already@example.com") == ([("winback/miss-you", "queued")] if backfill else [])
    j.person("buyer@example.com", at="2026-03-03T00:00:00Z", orders=0)
    j.reconcile("2026-03-03T08:00:00Z")
    assert j.queued("buyer@example.com") == [("winback/miss-you", "queued")]
    assert j.contact("buyer@example.com")["fields"] == {"orders": 0, "stage": "winback"}
    j.reconcile("2026-03-04T08:00:00Z")  # still in: not entered again
    assert len(j.runs("buyer@example.com")) == 1
    members = state_db.conn.execute("SELECT contact_id FROM workflow_segment_members ORDER BY contact_id")
    assert [row[0] for row in members] == [1, 2]


@pytest.mark.parametrize("kind", ["click", "event", "segment"])
def test_wait_until_goes_on_when_its_condition_holds_or_at_its_timeout(
    tmp_path: Path, state_db: Any, kind: str
) -> None:
    j = journey(tmp_path, state_db, WAITS)
    j.reconcile("2026-03-02T08:00:00Z")
    people = ("yes@example.com", "no@example.com", "machine@example.com")
    for email in people:
        j.person(email, lists=("news",), at="2026-03-02T08:00:00Z", orders=0)
        j.event(email, f"go-{kind}", at="2026-03-02T09:00:00Z")
    j.reconcile("2026-03-02T09:00:00Z")
    if kind == "click":
        j.opens("yes@example.com", "offer", at="2026-03-03T09:00:00Z", action="clicked")
        j.opens("machine@example.com", "offer", at="2026-03-03T09:00:00Z", action="clicked", machine=True)
    elif kind == "event":
        j.event("yes@example.com", "purchase", at="2026-03-03T09:00:00Z")
    else:
        j.person("yes@example.com", at="2026-03-03T09:00:00Z", orders=2)
    j.reconcile("2026-03-03T09:05:00Z")
    assert j.history("yes@example.com")[-2:] == [("wait", "condition met"), ("next", "tagged went-on")]
    j.reconcile("2026-03-04T08:59:59Z")
    for email in people[1:]:
        assert j.runs(email)[0][2:] == ("active", "wait")
    j.reconcile("2026-03-04T09:00:00Z")  # two days after the runs reached the wait
    for email in people[1:]:
        assert j.history(email)[-2:] == [("wait", "timed out"), ("next", "tagged went-on")]
        assert j.contact(email)["tags"] == ["went-on"]


def test_branches_on_a_field_and_a_tag_and_the_list_tag_and_field_actions(tmp_path: Path, state_db: Any) -> None:
    j = journey(
        tmp_path,
        state_db,
        """
        kind: Workflow
        name: sort
        trigger: {event: sort}
        category: transactional
        steps:
          - id: by-orders
            if: {field: orders, gte: 1}
            then: [{id: buyer, tag: buyer}]
            else: [{id: browser, tag: browser}]
          - id: by-tag
            if: {tag: vip}
            then: [{id: vip-mail, send: mail/a, subject: For our VIPs}]
            else: [{id: plain-mail, send: mail/b, subject: For everyone}]
          - {id: add, add_to_list: vip}
          - {id: move, move_to_list: {from: news, to: customers}}
          - {id: drop, remove_from_list: vip}
          - {id: t2, tag: temp}
          - {id: t3, untag: temp}
          - {id: f1, set_field: {field: orders, value: 7}}
          - {id: f2, set_field: {field: stage, value: null}}
        """,
    )
    j.reconcile("2026-03-02T08:00:00Z")
    vip = j.person("vip@example.com", lists=("news",), at="2026-03-02T08:00:00Z", orders=3, stage="new")
    with write(j.db):
        change_tag(j.db, vip, "vip", present=True, at="2026-03-02T08:00:00Z")
    j.person("new@example.com", lists=("news",), at="2026-03-02T08:00:00Z", orders=0)
    for email in ("vip@example.com", "new@example.com"):
        j.event(email, "sort", at="2026-03-02T09:00:00Z")
    j.reconcile("2026-03-02T09:01:00Z")
    assert [step for step, _ in j.history("vip@example.com")][:4] == ["by-orders", "buyer", "by-tag", "vip-mail"]
    assert j.history("new@example.com")[:4] == [
        ("by-orders", "else"),
        ("browser", "tagged browser"),
        ("by-tag", "else"),
        ("plain-mail", "queued"),
    ]
    assert j.history("new@example.com")[4:6] == [("add", "added to vip"), ("move", "moved from news to customers")]
    vip_now = j.contact("vip@example.com")
    assert vip_now["tags"] == ["buyer", "vip"] and vip_now["fields"] == {"orders": 7}
    assert vip_now["lists"] == {"customers": "subscribed", "news": "unsubscribed", "vip": "unsubscribed"}
    assert j.contact("new@example.com")["tags"] == ["browser"]
    sources = j.db.conn.execute("SELECT DISTINCT source FROM consent WHERE source LIKE 'workflow%'").fetchall()
    assert sources == [("workflow sort",)]


DRIP = """
kind: Workflow
name: drip
trigger: {subscribed: news}
steps:
  - {id: one, send: mail/a, subject: One}
  - {id: pause, wait: 3d}
  - {id: two, send: mail/b, subject: Two}
"""


def test_a_paused_workflow_holds_its_runs_and_a_removed_one_ends_them_and_skips_its_messages(
    tmp_path: Path, state_db: Any
) -> None:
    j = journey(tmp_path, state_db, DRIP)
    j.reconcile("2026-03-02T08:00:00Z")
    j.person("ida@example.com", lists=("news",), at="2026-03-02T09:00:00Z")
    j.reconcile("2026-03-02T09:00:00Z")
    j.write_workflows(DRIP.replace("name: drip", "name: drip\nstatus: paused"))
    j.reconcile("2026-03-06T09:00:00Z")
    j.person("joe@example.com", lists=("news",), at="2026-03-06T10:00:00Z")  # no new runs while paused
    j.reconcile("2026-03-06T10:00:00Z")
    assert j.runs("ida@example.com") == [("drip", "", "active", "pause")] and j.runs("joe@example.com") == []
    assert workflows.next_due(state_db) is None  # a paused workflow's runs wake nobody
    assert workflow_reads.workflow_info(state_db, "drip") == workflow_reads.WorkflowInfo(
        "drip", "paused", False, ("one", "pause", "two")
    )
    j.write_workflows(DRIP)
    j.reconcile("2026-03-06T11:00:00Z")  # the wait is long over: on at once
    assert j.queued("ida@example.com") == [("drip/one", "queued"), ("drip/two", "queued")]
    j.person("kim@example.com", lists=("news",), at="2026-03-06T12:00:00Z")
    j.reconcile("2026-03-06T12:00:00Z")
    j.write_workflows("kind: List\nname: unused\ntitle: Unused\n")
    report = j.reconcile("2026-03-07T09:00:00Z").workflows
    assert report is not None and report.finished == {"ended": 1}
    assert j.runs("kim@example.com") == [("drip", "", "ended", "pause")]
    assert j.queued("kim@example.com") == [("drip/one", "skipped")]  # never sent: skipped with its workflow
    assert j.queued("ida@example.com") == [("drip/one", "skipped"), ("drip/two", "skipped")]
    assert j.history("kim@example.com") == [("one", "queued")]  # the history stays
    assert workflow_reads.workflow_info(state_db, "drip").removed  # type: ignore[union-attr]
    assert workflows.load_workflows(state_db) == {} and not workflows.has_removed_runs(state_db)


# --- the state functions, one by one ------------------------------------------------------------------------------

AT = "2026-03-02T09:00:00Z"


def test_runs_start_once_per_key_and_are_read_back_with_the_same_types(tmp_path: Path, state_db: Any) -> None:
    j = journey(tmp_path, state_db, CART)
    j.reconcile("2026-03-02T08:00:00Z")
    ann = j.person("ann@example.com", lists=("customers",), at=AT)
    kwargs: dict[str, Any] = {"list_name": "customers", "step": "wait", "revision": "r1", "trigger": "test"}
    with write(state_db):
        first = workflows.start_run(state_db, "cart", ann, key="A", at=AT, **kwargs)
        again = workflows.start_run(state_db, "cart", ann, key="A", at=AT, **kwargs)  # one active run per key
        other = workflows.start_run(state_db, "cart", ann, key="B", at="2026-03-02T09:30:00Z", **kwargs)
    assert isinstance(first, int) and isinstance(other, int) and again is None and other > first
    assert workflows.last_run(state_db, "cart", ann, "A") == ("active", AT)
    assert workflows.last_run(state_db, "cart", ann, "C") is None
    assert workflows.due_run_ids(state_db, ["cart", "other"], now="2026-03-02T09:10:00Z") == [first]
    assert workflows.due_run_ids(state_db, ["cart"], now="2026-03-02T09:30:00Z") == [first, other]
    due = workflows.runs_by_id(state_db, [other, first, 999], now="2026-03-02T09:30:00Z")
    assert due == [
        workflows.Run(first, "cart", ann, "A", "customers", "wait", AT, AT),
        workflows.Run(other, "cart", ann, "B", "customers", "wait", "2026-03-02T09:30:00Z", "2026-03-02T09:30:00Z"),
    ]
    assert [type(value) for value in due[0]] == [int, str, int, str, str, str, str, str]
    with write(state_db):
        writes = workflows.StepWrites(state_db)
        writes.queue_send(due[0], "reminder", content_hash="h", revision="r1", at=AT)
        writes.log_step(first, "wait", at=AT, result="waited")
        writes.log_step(first, "reminder", at=AT, result="queued")  # at the same moment: the order written counts
        writes.finish(first, step="", state="completed", outcome="completed", at=AT)
        writes.flush()
    story = workflow_reads.run_story(state_db, first)
    assert story.history == [("wait", AT, "waited"), ("reminder", AT, "queued")]
    assert story.sends == {"reminder": ("queued", None, None)} and (story.ended_at, story.outcome) == (AT, "completed")
    assert workflow_reads.last_sent(state_db, "reminder") is None
    (message,) = state_db.conn.execute("UPDATE ledger SET state = 'sent', sent_at = ? RETURNING id", (AT,))
    assert workflow_reads.last_sent(state_db, "reminder") == message[0]
    assert not workflows.engaged(state_db, first, "reminder", "opened")
    assert workflows.stored_list(state_db, "cart") == "customers" and workflows.stored_list(state_db, "none") is None


def test_the_cursors_read_new_subscriptions_and_events_from_where_they_stopped(tmp_path: Path, state_db: Any) -> None:
    j = journey(tmp_path, state_db, WELCOME)
    j.person("early@example.com", lists=("news",), at=AT)
    with write(state_db):
        start = workflows.cursor(state_db, "consent", "consent")  # the first time: the end
    assert start == workflows.last_id(state_db, "consent") == 1 and not workflows.has_after(state_db, "consent", 1)
    ann = j.person("ann@example.com", lists=("news", "customers"), at=AT)
    with write(state_db):
        change_subscriptions(state_db, ann, {"customers": "unsubscribed"}, at=AT, source="test")
    found, last, done = workflows.new_subscriptions(state_db, after=start, limit=10)
    assert [(f.contact_id, f.list_name) for f in found] == [(ann, "news")] and (last, done) == (4, True)
    j.event("ann@example.com", "purchase", at=AT, total=12.5, items=["a"])
    (event,) = workflows.new_events(state_db, after=0, limit=10)
    assert (event.contact_id, event.type, event.occurred_at, event.properties) == (
        ann,
        "purchase",
        AT,
        {"total": 12.5, "items": ["a"]},
    )
    assert workflows.had_event(state_db, ann, "purchase", since=AT)
    assert not workflows.had_event(state_db, ann, "purchase", since="2026-03-02T09:00:01Z")
    with write(state_db):
        workflows.set_cursor(state_db, "events", event.id)
    workflows.forget_cursors(state_db)
    assert state_db.conn.execute("SELECT count(*) FROM meta WHERE key LIKE 'workflows.%'").fetchone()[0] == 0


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_a_history_written_before_steps_had_ids_keeps_its_order(request: pytest.FixtureRequest, engine: str) -> None:
    """Migration 0014 gives each step an id in the order the steps were written (SQLite: its rowid, gaps and all),
    so the history of runs from before it reads as it did."""
    db: Any = (
        sqlite_state()
        if engine == "sqlite"
        else connect(request.getfixturevalue("postgres_url"), lock_timeout_ms=30_000)
    )
    try:
        migrate(db, before="0014_workflow_step_ids")
        db.conn.execute(
            "INSERT INTO contacts(email, email_hash, created_at, updated_at) VALUES ('a@example.com', 'h', ?, ?)",
            (AT, AT),
        )
        db.conn.execute(
            "INSERT INTO workflow_runs(workflow, contact_id, state, entered_at, started_at, revision, trigger) "
            "VALUES ('drip', 1, 'active', ?, ?, 'r', 'test')",
            (AT, AT),
        )
        for step in ("one", "gone", "two", "three"):  # the same moment: only the order written tells them apart
            db.conn.execute("INSERT INTO workflow_steps(run_id, step, at, result) VALUES (1, ?, ?, 'done')", (step, AT))
        db.conn.execute("DELETE FROM workflow_steps WHERE step = 'gone'")
        migrate(db)
        with write(db):
            writes = workflows.StepWrites(db)  # as the runner writes a step
            writes.log_step(1, "four", at=AT, result="done")
            writes.flush()
        assert [step for step, _, _ in workflow_reads.run_story(db, 1).history] == ["one", "two", "three", "four"]
        ids = [row[0] for row in db.conn.execute("SELECT id FROM workflow_steps ORDER BY id")]
        assert ids == ([1, 3, 4, 5] if engine == "sqlite" else [1, 2, 3, 4])
    finally:
        db.close()


@pytest.fixture
def language_ordered(postgres_cluster: pg_cluster.Cluster) -> Iterator[Any]:
    """A PostgreSQL state whose database collates text as English does, punctuation ignored (ICU), where
    'a' < 'B' and 'dripa' < 'drip-z'; the session's databases collate as C, as bytes."""
    name = "t_icu_" + uuid.uuid4().hex[:12]
    url = postgres_cluster.url(name)
    with psycopg.connect(postgres_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} LOCALE_PROVIDER icu ICU_LOCALE 'en-US-u-ka-shifted' TEMPLATE template0")
    db = open_postgres(url)
    try:
        yield db
    finally:
        db.close()
        postgres_cluster.drop(url)


@pytest.mark.postgresql
def test_names_and_outcomes_are_ordered_byte_by_byte_as_on_sqlite(tmp_path: Path, language_ordered: Any) -> None:
    db = language_ordered
    unordered = "SELECT x FROM (VALUES ('drip-z'), ('B'), ('dripa'), ('a')) AS v(x) ORDER BY x"
    assert db.execute(unordered).fetchall() == [("a",), ("B",), ("dripa",), ("drip-z",)]
    j = journey(tmp_path, db, DRIP.replace("name: drip", "name: dripa") + "---\n" + DRIP.replace("drip", "drip-z"))
    j.reconcile("2026-03-02T08:00:00Z")
    assert list(workflows.load_workflows(db)) == workflow_reads.workflow_names(db) == ["drip-z", "dripa"]
    contact = j.person("ann@example.com", at=AT)
    for n, outcome in enumerate(["exited: b", "exited: B", "exited: a"]):
        db.conn.execute(
            "INSERT INTO workflow_runs(workflow, contact_id, key, state, entered_at, started_at, revision, trigger, "
            "outcome) VALUES ('dripa', ?, ?, 'exited', ?, ?, 'r', 'test', ?)",
            (contact, str(n), AT, AT, outcome),
        )
    assert list(workflow_reads.ended_runs(db, "dripa")) == ["exited: B", "exited: a", "exited: b"]


def test_segments_show_answers_the_same_on_both_engines(tmp_path: Path, state_db: Any) -> None:
    segment = """
kind: Segment
name: top-buyers
lists: [news]
where: {any: [{field: orders, gte: 2}, {tag: vip}]}
order_by: {field: orders, direction: desc}
limit: 2
"""
    j = journey(tmp_path, state_db, segment)
    j.reconcile("2026-03-02T08:00:00Z")
    for n, orders in enumerate([5, 1, 3, 8]):
        j.person(f"p{n}@example.com", lists=("news",), at=AT, orders=orders)
    desired, _ = load_workspace(tmp_path)
    now = parse_instant(AT)
    shown = show(state_db, desired, "top-buyers", now=now, explain=True)
    assert shown.splitlines() == [
        "Segment top-buyers: 2 members (subscribed to any of: news)",
        "Contacts meeting each condition (within the lists):",
        "          3  any of:",
        "            3  field: orders, gte: 2",
        "            0  tag: vip",
        "",
        "First 2 members:",
        "  p3@example.com  orders=8",
        "  p0@example.com  orders=5",
    ]
    why = show(state_db, desired, "top-buyers", now=now, contact="p2@example.com")
    assert why.splitlines()[1:] == [
        "p2@example.com is OUT:",
        "  ✓ subscribed to any of: news",
        "  ✓ any of:",
        "    ✓ field: orders, gte: 2",
        "    ✗ tag: vip",
        "  ✗ outside the top 2 by orders (desc)",
    ]
