"""`reconciler run` sending to a real SMTP server: killed with SIGKILL mid-send, paused, edited and resumed."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from conftest import reconciler, wait_for
from daemon_process import Daemon
from sending import import_contacts, parse, query, workspace
from smtp_sink import Sink, SinkServer


def start_daemon(root: Path) -> Daemon:
    return Daemon(root, "--interval", "60", env={"RECONCILER_SECRET": "test-secret"})


def campaign(root: Path) -> dict[str, Any]:
    result = reconciler("status", "--format", "json", cwd=root)
    campaigns = json.loads(result.stdout)["campaigns"] if result.returncode == 0 else []
    return dict(campaigns[0]) if campaigns else {}


def on_the_wire(root: Path) -> int:
    """Messages claimed and not yet recorded: the sink has every message whose row left this state."""
    (count,) = query(root, "SELECT count(*) FROM ledger WHERE state = 'sending'")[0]
    assert isinstance(count, int)
    return count


def test_sigkill_mid_send_then_restart_sends_no_address_twice_and_skips_only_uncertain_rows(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    sink = Sink()
    connections = 4
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port, connections=connections)
        emails = import_contacts(root, 5000)
        daemons.append(start_daemon(root))
        wait_for(lambda: len(sink.messages) >= 1000, "the first thousand messages", 60)
        daemons[0].kill()
        at_kill = len(sink.messages)
        claimed = on_the_wire(root)
        assert claimed <= connections
        assert at_kill < 5000, "the kill came too late to test anything"

        daemons.append(start_daemon(root))
        # a bound for a stuck daemon, not a rate: 4,000 messages took over 60 s on a busy 2-CPU machine (load 9)
        wait_for(lambda: campaign(root).get("status") == "sent", "the campaign to finish after the restart", 300)
        output = daemons[1].stop()
    received = sink.received()
    assert max(received.values()) == 1, [e for e, n in received.items() if n > 1][:5]
    uncertain = {
        row[0]
        for row in query(
            root, "SELECT c.email FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE l.state = 'uncertain'"
        )
    }
    assert len(uncertain) == claimed <= connections  # rows are claimed at the point of no return
    assert set(emails) - set(received) <= uncertain
    assert len(received) >= 5000 - connections
    if uncertain:
        assert "marked uncertain" in output


class SlowSink(Sink):
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(0.005)  # ~400 messages a second over two connections: time to act mid-send
        return await super().handle_DATA(server, session, envelope)


def test_pause_stops_within_a_tick_edits_are_refused_and_resume_continues(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    sink = SlowSink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port, connections=2)
        emails = import_contacts(root, 3000)
        daemons.append(start_daemon(root))
        wait_for(lambda: len(sink.messages) >= 300, "sending to be under way")

        path = root / "campaigns/hello.yaml"
        text = path.read_text()
        path.write_text(text.replace("status: scheduled", "status: paused"))
        wait_for(lambda: campaign(root).get("status") == "paused", "the pause to be applied", timeout=20)
        wait_for(lambda: on_the_wire(root) == 0, "the messages already on the wire to finish")
        paused_at = len(sink.messages)
        time.sleep(1.5)  # nothing more may arrive: an absence needs a while to be seen
        assert len(sink.messages) == paused_at < 3000

        path.write_text(text.replace("status: scheduled", "status: paused").replace("Hello {{", "Hi again {{"))
        wait_for(lambda: campaign(root).get("reason") == "Stalled", "the edit to be refused", timeout=20)
        assert "frozen" in campaign(root)["message"]
        assert len(sink.messages) == paused_at

        path.write_text(text)  # the original content, scheduled again: resume
        # a bound for a stuck daemon, not a rate: 2,700 messages took over 60 s on PostgreSQL on a 2-CPU machine
        # with a load of 13
        wait_for(lambda: campaign(root).get("status") == "sent", "the campaign to finish after resuming", 300)
        daemons[0].stop()
    received = sink.received()
    assert set(received) == set(emails) and set(received.values()) == {1}
    subjects = {str(parse(data)["Subject"]).split()[0] for _, data in sink.messages}
    assert subjects == {"Hello"}
