"""`reconciler status` tells the truth: progress counts what was delivered, a campaign whose messages mostly fail is
not Ready, and the failures can be read with their replies."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import reconciler
from sending import import_contacts, tick, workspace
from smtp_sink import Sink, SinkServer


def test_a_campaign_whose_messages_all_fail_is_not_ready_and_its_failures_can_be_read(tmp_path: Path) -> None:
    def script(rcpt: str, attempt: int, phase: str) -> str | None:
        if phase == "rcpt" and rcpt != "person0@example.net":
            return "550 5.1.1 no such mailbox here"
        return None

    with SinkServer(Sink(script=script)) as port:
        root = workspace(tmp_path, port)
        import_contacts(root, 5)
        tick(root)
    text = reconciler("status", cwd=root).stdout
    line = next(row for row in text.splitlines() if row.startswith("hello"))
    assert "1/5 sent" in line, text
    campaign = json.loads(reconciler("status", "--format", "json", cwd=root).stdout)["campaigns"][0]
    assert campaign["status"] == "sent" and campaign["ready"] is False and campaign["reason"] == "DeliveryFailed"
    assert "4 of 5" in campaign["message"]

    one = reconciler("status", "hello", cwd=root)  # the campaign alone: its line, and where its failures are
    assert one.returncode == 0 and "1/5 sent" in one.stdout and "reconciler status hello --failures" in one.stdout
    assert json.loads(reconciler("status", "hello", "--format", "json", cwd=root).stdout) == campaign

    failures = reconciler("status", "hello", "--failures", cwd=root)
    assert failures.returncode == 0, failures.stderr
    assert "person1@example.net" in failures.stdout and "550 5.1.1 no such mailbox here" in failures.stdout
    assert "person0@example.net" not in failures.stdout
    rows = [r for r in failures.stdout.splitlines() if "@example.net" in r]
    assert len(rows) == 4 and all(" 1 " in f" {r} " for r in rows)  # one attempt each, shown
