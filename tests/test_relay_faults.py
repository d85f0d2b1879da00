"""Relays that change, close idle connections, or go away for a while, against a real SMTP server."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest

from conftest import reconciler, wait_for
from daemon_process import Daemon, sending_daemon
from reconciler.clock import FixedClock, parse_instant
from reconciler.daemon import reconcile_once
from reconciler.dispatch import Dispatcher
from sending import NOW, import_contacts, ledger, query, workspace
from smtp_sink import Sink, SinkServer, free_port
from state_helpers import open_state


def second_campaign(root: Path, name: str = "second") -> None:
    text = (root / "campaigns/hello.yaml").read_text().replace("name: hello", f"name: {name}")
    (root / f"campaigns/{name}.yaml").write_text(text)


def campaign_statuses(root: Path) -> dict[str, str]:
    return {str(name): str(status) for name, status in query(root, "SELECT name, status FROM campaigns")}


def test_a_running_daemon_sends_through_the_relay_the_settings_name_now(tmp_path: Path, daemons: list[Daemon]) -> None:
    old, new = Sink(), Sink()
    with SinkServer(old) as old_port, SinkServer(new) as new_port:
        root = workspace(tmp_path, old_port)
        import_contacts(root, 20)
        daemons.append(sending_daemon(root))
        wait_for(lambda: campaign_statuses(root).get("hello") == "sent", "the first campaign to be sent", 60)
        settings = root / "spec/settings.yaml"
        settings.write_text(settings.read_text().replace(f"port: {old_port}", f"port: {new_port}"))
        second_campaign(root)
        wait_for(lambda: campaign_statuses(root).get("second") == "sent", "the second campaign to be sent", 60)
        daemons[0].stop()
    assert len(old.messages) == 20 and len(new.messages) == 20


def test_connections_the_relay_closed_while_idle_are_replaced_without_deferring_anyone(tmp_path: Path) -> None:
    sink = Sink()
    clock = FixedClock(parse_instant(NOW))
    with SinkServer(sink, timeout=1) as port:  # the relay ends sessions idle for a second
        root = workspace(tmp_path, port, connections=4)
        import_contacts(root, 40)
        db = open_state(root)

        async def scenario() -> None:
            dispatcher = Dispatcher(db, root=root, clock=clock)
            try:
                reconcile_once(root, db, now=clock.now())
                await dispatcher.run_pass()
                opened = sink.sessions
                await asyncio.to_thread(wait_for, lambda: sink.closed >= opened, "the relay to close idle sessions")
                second_campaign(root)
                reconcile_once(root, db, now=clock.now())
                await dispatcher.run_pass()
            finally:
                await dispatcher.close()

        asyncio.run(scenario())
    assert len(sink.messages) == 80
    assert ledger(root) == {"sent": 80}
    assert query(root, "SELECT max(attempts) FROM ledger")[0][0] == 1


@pytest.mark.parametrize("how", ["421", "drop"])
def test_a_pooled_connection_the_relay_closes_as_it_is_reused_is_replaced_within_the_same_attempt(
    tmp_path: Path, how: str
) -> None:
    """The connection is still open when it is taken from the pool (so no check at that moment can tell), and the
    relay answers its MAIL FROM with 421 and closes it, or drops it without a word: only reconnecting within the
    same attempt saves the message from a deferral."""
    sink = Sink(close_reused=how)
    clock = FixedClock(parse_instant(NOW))
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port, connections=1)
        import_contacts(root, 5)
        db = open_state(root)

        async def scenario() -> None:
            dispatcher = Dispatcher(db, root=root, clock=clock)
            try:
                reconcile_once(root, db, now=clock.now())
                await dispatcher.run_pass()
            finally:
                await dispatcher.close()

        asyncio.run(scenario())
    assert ledger(root) == {"sent": 5}, "a message was deferred because its pooled connection was closed"
    assert query(root, "SELECT max(attempts) FROM ledger")[0][0] == 1
    assert len(sink.messages) == 5
    assert sink.closed_at_mail == 4  # every message after the first was tried on a pooled connection first


def test_a_relay_outage_stops_taking_rows_and_sending_resumes_when_it_answers(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    sink = Sink()
    port = free_port()
    connections = 4
    root = workspace(tmp_path, port, connections=connections)
    emails = import_contacts(root, 3000)
    with SinkServer(sink, port=port):
        daemons.append(sending_daemon(root))
        wait_for(lambda: len(sink.messages) >= 500, "sending to be under way", 60)
    down_at = len(sink.messages)  # the relay is gone
    wait_for(
        lambda: "cannot be reached" in reconciler("status", cwd=root).stdout, "status to say the relay is down", 30
    )
    attempted_while_down = query(root, "SELECT count(*) FROM ledger WHERE attempts > 0 AND state != 'sent'")[0][0]
    with SinkServer(sink, port=port):
        wait_for(lambda: campaign_statuses(root).get("hello") == "sent", "sending to resume and finish", 120)
        daemons[0].stop()
    assert down_at < 3000
    # messages on the wire when the relay vanished may be uncertain; nothing else was attempted while it was down
    assert isinstance(attempted_while_down, int) and attempted_while_down <= 2 * connections
    counts = ledger(root)
    assert counts["sent"] + counts["uncertain"] == 3000 and counts["uncertain"] <= connections
    received = sink.received()
    assert max(received.values()) == 1
    rows = query(
        root, "SELECT c.email FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE l.state = 'uncertain'"
    )
    uncertain = {str(row[0]) for row in rows}
    assert set(emails) - set(received) <= uncertain


def test_connections_greet_with_the_machines_name_looked_up_once(tmp_path: Path) -> None:
    sink = Sink()
    clock = FixedClock(parse_instant(NOW))
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port, connections=8)
        import_contacts(root, 80)
        db = open_state(root)

        async def scenario() -> set[str]:
            dispatcher = Dispatcher(db, root=root, clock=clock)
            try:
                reconcile_once(root, db, now=clock.now())
                await dispatcher.run_pass()
            finally:
                await dispatcher.close()
            return {thread.name for thread in threading.enumerate() if thread.name.startswith("asyncio_")}

        lookups = asyncio.run(scenario())
    assert ledger(root) == {"sent": 80} and sink.sessions >= 8
    assert set(sink.greetings) == {socket.getfqdn()}
    assert len(lookups) <= 1  # each connection once asked the resolver in a worker thread of its own
