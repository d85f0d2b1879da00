"""Chaos: a 20,000-recipient campaign through three SIGKILLs of the daemon, a 3 s relay outage and a relay that
closes sessions idle for a second. Everyone gets exactly one message, except rows the ledger reports uncertain:
at most `max_connections` per fault, and each one a message whose body the relay had been told was coming."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import wait_for
from daemon_process import Daemon, sending_daemon
from sending import import_contacts, ledger, query, workspace
from smtp_sink import Sink, SinkServer, free_port

RECIPIENTS = 20_000
CONNECTIONS = 4


def test_twenty_thousand_recipients_through_kills_an_outage_and_idle_closes(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    sink = Sink()
    port = free_port()
    root = workspace(tmp_path, port, connections=CONNECTIONS)
    emails = import_contacts(root, RECIPIENTS)

    def relay() -> SinkServer:
        return SinkServer(sink, port=port, timeout=1)  # sessions idle for a second are closed by the relay

    def sent_past(count: int, what: str) -> None:
        wait_for(lambda: len(sink.messages) >= count, what, 300)

    faults = []
    with relay():
        daemons.append(sending_daemon(root))
        for kill in range(1, 4):
            sent_past(kill * 4000, f"4,000 more messages before kill {kill}")
            daemons[-1].kill()
            faults.append(f"kill {kill} at {len(sink.messages):,} received")
            daemons.append(sending_daemon(root))
        sent_past(15_000, "15,000 messages before the outage")
    faults.append(f"relay down at {len(sink.messages):,} received")
    time.sleep(3)  # the outage itself: the relay answers nobody for 3 s
    with relay():
        wait_for(lambda: ledger(root).get("queued", 0) + ledger(root).get("deferred", 0) == 0, "the rest", 300)
        daemons[-1].stop()
    counts = ledger(root)
    received = sink.received()
    sent, uncertain = (emails_in(root, state) for state in ("sent", "uncertain"))
    arrived = len(uncertain & set(received))
    print(
        f"chaos: {'; '.join(faults)}; ledger {dict(counts)}; {len(received):,} received; {len(uncertain)} uncertain, "
        f"{arrived} of them received"
    )
    assert max(received.values()) == 1  # nobody got two
    assert len(sent) + len(uncertain) == RECIPIENTS and sent <= set(received), counts  # every row sent arrived
    assert set(emails) - set(received) <= uncertain  # whoever got nothing is reported
    assert len(uncertain) <= CONNECTIONS * len(faults)
    assert all(sink.data_started[email] >= 1 for email in uncertain)  # each past DATA, none before it


def emails_in(root: Path, state: str) -> set[str]:
    sql = "SELECT c.email FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE l.state = ?"
    return {str(row[0]) for row in query(root, sql, state)}
