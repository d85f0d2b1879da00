"""A state whose facts were counted by hand, for the report tests: five people get a launch with a reminder
stage, a later campaign and a welcome workflow; what each one does is written beside them."""

from __future__ import annotations

from pathlib import Path

from journeys import Journey
from reconciler.state import engagement
from reconciler.state.db import write
from reconciler.state.subscribers import message_target, provider_event, unsubscribe
from smtp_sink import Sink

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


def seed(tmp_path: Path, sink: Sink, port: int, *, public_url: str | None = None, settings: str = "") -> Journey:
    """The workspace at `tmp_path`, its state seeded; `public_url` for a web server that serves it; `settings`:
    more top-level Settings."""
    j = Journey(tmp_path, sink, port, WELCOME, settings=settings)
    if public_url:
        written = tmp_path / "spec/settings.yaml"
        written.write_text(written.read_text().replace("https://mail.example.com", public_url))
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
