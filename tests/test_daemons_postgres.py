"""Three `reconciler run` processes on one PostgreSQL database send a 20,000-recipient campaign through a real SMTP
server while one that stands by is SIGKILLed, and then the one holding the lease: everyone gets exactly one message,
except rows the ledger reports uncertain (at most the transport's max_connections per kill, each one past DATA);
the campaign finishes; the survivor takes the lease over and applies the next revision."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import reconciler, wait_for
from daemon_process import WATCHING, Daemon
from sending import workspace
from smtp_sink import Sink, SinkServer

pytestmark = [pytest.mark.postgresql, pytest.mark.timeout(1800)]  # minutes of sending on a busy machine

RECIPIENTS = 20_000
CONNECTIONS = 4
"""The transport's max_connections: what each daemon may have on the wire, so at most this many uncertain per kill."""
DEADLINE = 600.0
"""Seconds for each stretch of sending: three daemons and PostgreSQL share two busy CPUs with the test's relay."""
HOLDS = "holds the lease"
APPLIED = "applied: "


class State:
    """The PostgreSQL state the daemons share, read with psycopg and through `reconciler status` as a user would."""

    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.env = {"RECONCILER_STATE": url, "RECONCILER_SECRET": "test-secret", "RECONCILER_RENDER_PROCESSES": "0"}

    def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return list(conn.execute(sql, params).fetchall())

    def ledger(self) -> Counter[str]:
        return Counter(dict(self.rows("SELECT state, count(*) FROM ledger GROUP BY state")))

    def emails_in(self, state: str) -> set[str]:
        sql = "SELECT c.email FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE l.state = %s"
        return {str(email) for (email,) in self.rows(sql, state)}

    def holder_pid(self) -> int | None:
        found = self.rows("SELECT pid FROM leases WHERE name = 'reconcile' AND holder IS NOT NULL")
        return int(found[0][0]) if found else None

    def status(self) -> dict[str, Any]:
        done = reconciler("status", "--format", "json", cwd=self.root, env=self.env)
        assert done.returncode == 0, done.stdout + done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    def import_contacts(self, count: int) -> set[str]:
        emails = [f"person{i}@example.net" for i in range(count)]
        rows = ["email,first_name,city"] + [f"{email},Pat{i},Łódź" for i, email in enumerate(emails)]
        (self.root / "contacts.csv").write_text("\n".join(rows) + "\n")
        done = reconciler(
            "contacts", "import", "contacts.csv", "--list", "news", "--preconfirmed", cwd=self.root, env=self.env
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return set(emails)


def test_three_daemons_send_once_each_through_two_kills_and_the_survivor_applies(
    tmp_path: Path, postgres_url: str, daemons: list[Daemon]
) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        state = State(workspace(tmp_path, port, connections=CONNECTIONS), postgres_url)
        emails = state.import_contacts(RECIPIENTS)
        daemons.extend(Daemon(state.root, "--interval", "60", env=state.env) for _ in range(3))  # each its own port
        for daemon in daemons:
            daemon.wait_for_output(WATCHING, timeout=120)
        faults = [_kill(state, sink, daemons, at=5_000, holder=False), _kill(state, sink, daemons, at=10_000)]
        [survivor] = [daemon for daemon in daemons if daemon.process.poll() is None]
        survivor.wait_for_output(HOLDS, timeout=60)  # the holder's pid is gone on this host: taken at the next beat
        wait_for(lambda: _finished(state), "the campaign to finish", DEADLINE, every=1)
        received = sink.received()
        _new_revision(state, survivor)
        survivor.stop()
    counts = state.ledger()
    sent, uncertain = state.emails_in("sent"), state.emails_in("uncertain")
    print(
        f"three daemons: {'; '.join(faults)}; ledger {dict(counts)}; {len(received):,} received; "
        f"{len(uncertain)} uncertain, {len(uncertain & set(received))} of them received"
    )
    assert max(received.values()) == 1, [e for e, n in received.items() if n > 1][:10]  # nobody got two
    assert len(sent) + len(uncertain) == RECIPIENTS and sent <= set(received), counts  # every row sent arrived
    assert emails - set(received) <= uncertain  # whoever got nothing is reported
    assert len(uncertain) <= CONNECTIONS * len(faults)
    assert all(sink.data_started[email] >= 1 for email in uncertain)  # each past DATA, none before it


def _kill(state: State, sink: Sink, daemons: list[Daemon], *, at: int, holder: bool = True) -> str:
    """Once `at` messages have arrived, SIGKILL the lease holder (or a running daemon that does not hold it)."""
    wait_for(lambda: len(sink.messages) >= at, f"{at:,} messages before a kill", DEADLINE, every=0.2)
    pid = state.holder_pid()
    assert pid is not None
    running = [daemon for daemon in daemons if daemon.process.poll() is None]
    assert {daemon.process.pid for daemon in running} >= {pid}, (pid, [d.process.pid for d in running])
    [victim, *_] = [daemon for daemon in running if (daemon.process.pid == pid) == holder]
    victim.kill()
    return f"{'holder' if holder else 'non-holder'} killed at {len(sink.messages):,} received"


def _finished(state: State) -> bool:
    """The campaign sent (its status says so) and nothing queued, deferred or on the wire."""
    [campaign] = state.status()["campaigns"]
    counts = state.ledger()
    return bool(campaign["status"] == "sent") and not any(counts[s] for s in ("queued", "deferred", "sending"))


def _new_revision(state: State, survivor: Daemon) -> None:
    """A new list in the files: the survivor, now the holder, applies it (nobody else is left to)."""
    applied = survivor.output.count(APPLIED)
    with (state.root / "spec/lists.yaml").open("a", encoding="utf-8") as lists:
        lists.write("---\nkind: List\nname: after-the-kills\ntitle: After the kills\ndescription: Applied late.\n")
    wait_for(lambda: survivor.output.count(APPLIED) > applied, "the survivor to apply the new list", 120)
    report = state.status()
    assert "after-the-kills" in report["lists"], report["lists"]
    [process] = report["processes"]
    assert process["pid"] == survivor.process.pid and process["holds_lease"], report["processes"]
    [(revision,)] = state.rows("SELECT revision FROM revisions ORDER BY id DESC LIMIT 1")
    assert report["revision"]["applied"] == revision
