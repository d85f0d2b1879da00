"""`reconciler run` killed with SIGKILL while its connections wait in MAIL/RCPT: only messages whose body went on
the wire may be `uncertain`; the others are sent after the restart, exactly once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from conftest import reconciler, wait_for
from daemon_process import Daemon, sending_daemon
from sending import import_contacts, query, workspace
from smtp_sink import Sink, SinkServer


class SlowRcptSink(Sink):
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        await asyncio.sleep(0.3)  # connections spend most of their time before DATA: a kill finds them there
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


def campaign_status(root: Path) -> str:
    result = reconciler("status", "--format", "json", cwd=root)
    campaigns = json.loads(result.stdout)["campaigns"] if result.returncode == 0 else []
    return str(campaigns[0]["status"]) if campaigns else ""


def test_rows_killed_before_their_body_went_out_are_sent_after_the_restart(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    sink = SlowRcptSink()
    connections = 4
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port, connections=connections)
        emails = import_contacts(root, 120)
        for kill in range(1, 4):
            daemons.append(sending_daemon(root))
            wait_for(lambda: len(sink.messages) >= 15 * kill, "messages to arrive", 60)  # noqa: B023
            daemons[-1].kill()
        daemons.append(sending_daemon(root))
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
