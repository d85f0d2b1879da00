"""`reconciler run` as a real process: it watches the files, keeps the last good revision, stops on SIGTERM."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import reconciler, wait_for
from daemon_process import WATCHING, Daemon


@pytest.fixture
def daemon(example: Path) -> Iterator[Daemon]:
    # Nothing is scheduled (a start time due or past wakes the daemon up) and the periodic pass comes once an hour:
    # every edit below must reach the daemon through the file watcher, in place once the daemon says it watches.
    for path in (example / "campaigns").glob("*.yaml"):
        path.write_text(path.read_text().replace("status: scheduled", "status: draft"))
    with Daemon(example, "--interval", "3600") as daemon:
        daemon.wait_for_output(WATCHING)
        yield daemon


def _status(example: Path) -> dict[str, Any]:
    result = reconciler("status", "--format", "json", cwd=example)
    report: dict[str, Any] = json.loads(result.stdout) if result.returncode == 0 else {}
    return report


def _applied(example: Path) -> str | None:
    revision = _status(example).get("revision") or {}
    return str(revision["applied"]) if revision.get("applied") else None


def _statuses(report: dict[str, Any]) -> dict[str, str]:
    return {campaign["name"]: campaign["status"] for campaign in report["campaigns"]}


def test_the_daemon_applies_changes_keeps_the_last_good_revision_and_stops_on_sigterm(
    example: Path, daemon: Daemon
) -> None:
    wait_for(lambda: _applied(example) is not None, "the first revision")
    first = _applied(example)

    guji = example / "campaigns" / "guji-harvest-2030.yaml"
    guji.write_text(guji.read_text().replace("status: draft", "status: paused"))
    wait_for(lambda: _applied(example) != first, "the edit to be applied")
    assert _statuses(_status(example))["guji-harvest-2030"] == "paused"
    good = _applied(example)

    guji.write_text(guji.read_text().replace("status: paused", "status: gone"))
    wait_for(lambda: _status(example).get("last_error") is not None, "the error to be reported")
    report = _status(example)
    assert report["revision"]["applied"] == good
    assert any("guji-harvest-2030.yaml" in line and "status" in line for line in report["last_error"]["problems"])
    assert _statuses(report)["guji-harvest-2030"] == "paused"
    assert daemon.process.poll() is None  # still running
    health = httpx.get(f"http://127.0.0.1:{daemon.port}/healthz", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "degraded"
    assert any(
        "was refused" in problem and "guji-harvest-2030.yaml" in problem for problem in health.json()["problems"]
    )
    shown = reconciler("status", cwd=example).stdout
    assert "Daemon: degraded" in shown and "Last error:" in shown  # not "ok" while a revision is refused

    guji.write_text(guji.read_text().replace("status: gone", "status: cancelled"))
    wait_for(lambda: _status(example).get("last_error", "unknown") is None, "the error to clear")
    assert _statuses(_status(example))["guji-harvest-2030"] == "cancelled"

    output = daemon.stop()
    assert "revision" in output and "has 1 error(s); the last good revision stays in force" in output
    assert "reconciler: stopped" in output


def test_a_busy_port_is_one_clear_line_and_nothing_starts(example: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = reconciler("run", "--port", str(port), cwd=example)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: cannot listen on http://127.0.0.1:{port}: Address already in use; another process may be using it "
        "(choose another port with --port or RECONCILER_PORT)"
    ]
    assert "serving" not in result.stdout + result.stderr
    assert not (example / ".state").exists() or _applied(example) is None  # nothing was applied


MAIL_CATCHER_PORTS = {
    1025: "the SMTP port of Mailpit, MailHog, MailCatcher and MailDev",
    8025: "the web UI of Mailpit and MailHog",
    1080: "the web UI of MailCatcher and MailDev",
    2500: "Inbucket's SMTP port",
    9000: "Inbucket's web UI",
    5000: "smtp4dev's web UI",
    3025: "GreenMail's SMTP port",
    8080: "the web UI of GreenMail and Papercut",
}
"""Ports that the mail catchers people run beside reconciler while trying it out listen on by default."""


def test_the_default_port_is_free_of_the_mail_catchers_run_beside_it(example: Path) -> None:
    result = reconciler("run", "--help", cwd=example)
    found = re.search(r"--port\b.*?\[default:\s+\(?(\d+)", result.stdout, re.S)
    assert found is not None, result.stdout
    default = int(found.group(1))
    assert default not in MAIL_CATCHER_PORTS, f"{default} is {MAIL_CATCHER_PORTS.get(default)}"


def test_a_busy_ipv6_port_is_named_as_a_browser_writes_it(example: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with socket.socket(socket.AF_INET6) as taken:
        try:
            taken.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback on this machine")
        taken.listen()
        port = taken.getsockname()[1]
        result = reconciler("run", "--host", "::1", "--port", str(port), cwd=example)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: cannot listen on http://[::1]:{port}: ")


def test_status_says_when_the_daemon_stopped_or_died_instead_of_its_last_ok(example: Path) -> None:
    with Daemon(example, "--interval", "3600") as first:
        first.wait_for_output(WATCHING)
        wait_for(lambda: "Daemon: ok" in reconciler("status", cwd=example).stdout, "the daemon's first record")
        first.stop()
    assert "Daemon: stopped at" in reconciler("status", cwd=example).stdout
    with Daemon(example, "--interval", "3600") as second:
        second.wait_for_output(WATCHING)
        wait_for(lambda: "Daemon: ok" in reconciler("status", cwd=example).stdout, "the daemon's record")
        second.kill()
    shown = reconciler("status", cwd=example).stdout
    assert f"Daemon: not running (pid {second.process.pid} on this host has exited" in shown, shown
