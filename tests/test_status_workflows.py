"""`reconciler status` shows what became of workflow messages, not only where the runs are: each workflow's messages
by outcome, one workflow in detail step by step, and the messages that were not sent with why (as for a campaign);
`contacts export` names a workflow message by its workflow and step, not by the run's id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import reconciler
from journeys import Journey
from smtp_sink import Sink, SinkServer

DRIP = """
kind: Workflow
name: drip
trigger: {event: visit}
list: news
steps:
  - {id: one, send: mail/a, subject: One}
  - {id: rest, wait: 1d}
  - {id: two, send: mail/b, subject: Two}
"""

QUIET = 'quiet_hours: {start: "21:00", end: "08:00"}'


def _script(rcpt: str, attempt: int, phase: str) -> str | None:
    if rcpt == "bad@example.com" and phase == "rcpt":
        return "550 5.1.1 no such mailbox here"
    if rcpt == "slow@example.com" and phase == "rcpt":
        return "451 4.3.0 try again later"
    if rcpt == "lost@example.com" and phase == "data":
        return "drop"
    return None


@pytest.fixture
def drip(tmp_path: Path) -> Iterator[Journey]:
    """One pass at 12:00 UTC in which drip's first message meets every fate: sent, refused for good, deferred for a
    retry, cut off after its body (uncertain), held for quiet hours in Tokyo (21:00 there), and skipped for a
    contact who is not on the workflow's list."""
    sink = Sink(script=_script)
    with SinkServer(sink) as port:
        j = Journey(tmp_path, sink, port, DRIP, settings=QUIET)
        j.at("2026-03-02T08:00:00Z")
        for name in ("ok", "bad", "slow", "lost"):
            j.person(f"{name}@example.com", lists=("news",), at="2026-03-02T08:00:00Z")
        j.person("night@example.com", lists=("news",), at="2026-03-02T08:00:00Z", timezone="Asia/Tokyo")
        j.person("left@example.com", at="2026-03-02T08:00:00Z")
        for name in ("ok", "bad", "slow", "lost", "night", "left"):
            j.event(f"{name}@example.com", "visit", at="2026-03-02T11:59:00Z")
        j.at("2026-03-02T12:00:00Z")
        yield j


OUTCOMES = "sent 1 · waiting 1 · postponed 1 · failed 1 · uncertain 1 · skipped 1"


def test_status_shows_each_workflows_messages_by_outcome_beside_its_runs(drip: Journey, tmp_path: Path) -> None:
    shown = reconciler("status", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    at = lines.index("Workflow drip: 6 active runs (rest 6)")
    assert lines[at + 1].startswith(f"    messages: {OUTCOMES}"), shown.stdout
    assert "reconciler status drip --failures" in lines[at + 1]

    report = json.loads(reconciler("status", "--format", "json", cwd=tmp_path).stdout)
    assert report["runs"] == {"drip": {"rest": 6}}
    assert report["workflow_messages"] == {
        "drip": {"sent": 1, "waiting": 1, "postponed": 1, "failed": 1, "uncertain": 1, "skipped": 1}
    }


def test_status_workflow_shows_its_runs_and_messages_step_by_step(drip: Journey, tmp_path: Path) -> None:
    shown = reconciler("status", "drip", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "Workflow drip: active, 6 active runs", shown.stdout
    rows = {line.split()[0]: line.split(None, 2)[1:] for line in lines[1:] if line and not line.startswith("(")}
    assert rows["STEP"] == ["RUNS", "MESSAGES"]
    assert rows["one"] == ["-", OUTCOMES]
    assert rows["rest"] == ["6", "-"]
    assert rows["two"] == ["-", "-"]
    assert list(rows) == ["STEP", "one", "rest", "two"]  # in the workflow's order

    data = json.loads(reconciler("status", "drip", "--format", "json", cwd=tmp_path).stdout)
    assert data["workflow"] == "drip" and data["status"] == "active" and data["removed"] is False
    assert [step["step"] for step in data["steps"]] == ["one", "rest", "two"]
    assert data["steps"][0]["messages"]["postponed"] == 1 and data["steps"][1]["runs"] == 6


def test_status_workflow_failures_lists_what_was_not_sent_with_why(drip: Journey, tmp_path: Path) -> None:
    shown = reconciler("status", "drip", "--failures", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].split() == ["ADDRESS", "STEP", "STATE", "ATTEMPTS", "WHEN", "REASON"], shown.stdout
    by_address = {line.split()[0]: line for line in lines[1:]}
    assert set(by_address) == {
        "bad@example.com",
        "slow@example.com",
        "lost@example.com",
        "night@example.com",
        "left@example.com",
    }
    assert by_address["bad@example.com"].split()[1:3] == ["one", "failed"]
    assert "550 5.1.1 no such mailbox here" in by_address["bad@example.com"]
    assert by_address["slow@example.com"].split()[2] == "deferred" and "451 4.3.0" in by_address["slow@example.com"]
    assert by_address["lost@example.com"].split()[2] == "uncertain"
    night = by_address["night@example.com"]
    assert night.split()[1:4] == ["one", "postponed", "0"]
    assert "quiet hours in the contact's time zone" in night and "until 2026-03-02T23:00:00Z" in night
    left = by_address["left@example.com"]
    assert left.split()[2] == "skipped" and "not subscribed" in left
    assert "ok@example.com" not in shown.stdout

    found = json.loads(reconciler("status", "drip", "--failures", "--format", "json", cwd=tmp_path).stdout)
    assert {(f["email"], f["step"], f["state"]) for f in found} >= {("night@example.com", "one", "postponed")}
    limited = reconciler("status", "drip", "--failures", "--limit", "2", cwd=tmp_path).stdout
    assert "(the latest 2; --limit N shows more)" in limited


def test_a_name_that_is_neither_a_campaign_nor_a_workflow_is_a_usage_error(drip: Journey, tmp_path: Path) -> None:
    wrong = reconciler("status", "dirp", "--failures", cwd=tmp_path)
    assert wrong.returncode == 2
    assert "no campaign or workflow 'dirp'" in wrong.stderr and "drip" in wrong.stderr
    bare = reconciler("status", "--failures", cwd=tmp_path)
    assert bare.returncode == 2 and "reconciler status NAME --failures" in bare.stderr


def test_a_workflow_without_failures_says_so(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        j = Journey(tmp_path, sink, port, DRIP)
        j.at("2026-03-02T08:00:00Z")
        j.person("ok@example.com", lists=("news",), at="2026-03-02T08:00:00Z")
        j.event("ok@example.com", "visit", at="2026-03-02T08:30:00Z")
        j.at("2026-03-02T09:00:00Z")
    shown = reconciler("status", cwd=tmp_path).stdout
    assert "Workflow drip: 1 active run (rest 1)\n    messages: sent 1\n" in shown, shown
    failures = reconciler("status", "drip", "--failures", cwd=tmp_path)
    assert failures.returncode == 0, failures.stderr
    assert failures.stdout.strip() == (
        "Workflow drip: no failed, uncertain, skipped, postponed or waiting-to-retry messages."
    )


def test_contacts_export_names_a_workflow_message_by_its_workflow_and_step(tmp_path: Path) -> None:
    welcome = """
        kind: Workflow
        name: welcome
        trigger: {subscribed: news}
        steps:
          - {id: hello, send: mail/a, subject: Welcome}
        """
    sink = Sink()
    with SinkServer(sink) as port:
        j = Journey(tmp_path, sink, port, welcome)
        j.at("2026-03-02T08:00:00Z")
        j.person("ann@example.com", lists=("news",), at="2026-03-02T09:00:00Z")
        j.at("2026-03-02T09:00:30Z")
        j.opens("ann@example.com", "hello", at="2026-03-02T10:00:00Z")
    exported = reconciler("contacts", "export", "ann@example.com", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    data = json.loads(exported.stdout)
    [message] = data["messages"]
    assert message["source_kind"] == "workflow" and message["source"] == "welcome" and message["step"] == "hello"
    assert message["state"] == "sent" and "stage" not in message
    [opened] = data["engagement"]
    assert opened["source"] == "welcome" and opened["step"] == "hello" and opened["action"] == "opened"
