"""`reconciler run` killed with SIGKILL while its connections wait in MAIL/RCPT: only messages whose body went on
the wire may be `uncertain`; the others are sent after the restart, exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import reconciler, wait_for
from sending import import_contacts, query, workspace
from smtp_sink import Sink, SinkServer, free_port


def start_daemon(root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "NO_COLOR": "1", "RECONCILER_SECRET": "test-secret", "RECONCILER_RENDER_PROCESSES": "0"}
    env.pop("RECONCILER_STATE", None)
    command = [sys.executable, "-m", "reconciler", "run", "--interval", "60", "--port", str(free_port())]
    return subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def daemons() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def campaign_status(root: Path) -> str:
    result = reconciler("status", "--format", "json", cwd=root)
    campaigns = json.loads(result.stdout)["campaigns"] if result.returncode == 0 else []
    return str(campaigns[0]["status"]) if campaigns else ""


def test_rows_killed_before_their_body_went_out_are_sent_after_the_restart(
    tmp_path: Path, daemons: list[subprocess.Popen[str]]
) -> None:
    sink = Sink()
    original = sink.handle_RCPT

    async def slow_rcpt(*args: Any) -> str:
        await asyncio.sleep(0.3)  # connections spend most of their time before DATA: a kill finds them there
        return await original(*args)

    sink.handle_RCPT = slow_rcpt  # type: ignore[method-assign]
    connections = 4
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port, connections=connections)
        emails = import_contacts(root, 120)
        for kill in range(3):
            daemons.append(start_daemon(root))
            wait_for(lambda n=kill: len(sink.messages) >= 15 * (n + 1), "messages to arrive", 60)
            daemons[-1].send_signal(signal.SIGKILL)
            daemons[-1].wait()
        daemons.append(start_daemon(root))
        wait_for(lambda: campaign_status(root) == "sent", "the campaign to finish after the restarts", 120)
    received = sink.received()
    assert max(received.values()) == 1
    rows = query(
        root, "SELECT c.email FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE l.state = 'uncertain'"
    )
    uncertain = {str(row[0]) for row in rows}
    assert set(emails) == set(received) | uncertain
    # an uncertain row went past the point of no return; one killed in the instant between recording that point
    # and writing the body is the only kind that may be missing at the server
    assert len(uncertain - set(received)) <= 1, uncertain - set(received)
    assert len(uncertain) <= 3 * connections
