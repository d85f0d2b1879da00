"""Two `reconciler run` processes on one state database (a SQLite file here; the lease is the same row on
PostgreSQL): the first holds the lease and applies; the second stands by, serving and sending; `status` shows both
and the holder; when the holder is killed the second takes the lease over and applies the next revision."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from conftest import reconciler, wait_for
from daemon_process import WATCHING, Daemon

HOLDS = "holds the lease"
APPLIED = "applied: "
TOKEN = "metrics-token-of-the-test"
ENV = {"RECONCILER_API_TOKEN": TOKEN}


def _edit_subject(example: Path, subject: str) -> None:
    path = example / "campaigns" / "guji-harvest-2030.yaml"
    text = path.read_text()
    start = text.index("subject: ")
    end = text.index("\n", start)
    path.write_text(text[:start] + f'subject: "{subject}"' + text[end:])


def test_one_daemon_applies_and_another_takes_over_when_it_is_killed(example: Path) -> None:
    with Daemon(example, "--interval", "3600", env=ENV) as first:
        first.wait_for_output(APPLIED)
        with Daemon(example, "--interval", "3600", env=ENV) as second:
            _hand_over(example, first, second)
    shown = reconciler("status", cwd=example).stdout
    assert "Processes:" not in shown and "Daemon: stopped at" in shown, shown


def _hand_over(example: Path, first: Daemon, second: Daemon) -> None:
    second.wait_for_output(WATCHING)
    assert HOLDS in first.output and HOLDS not in second.output
    shown = reconciler("status", cwd=example).stdout
    assert "Processes: 2 daemons running" in shown, shown
    assert f"(pid {first.process.pid}, daemon): ok" in shown and f"(pid {second.process.pid}, daemon): ok" in shown
    holder = next(line for line in shown.splitlines() if "holds the lease" in line)
    assert f"pid {first.process.pid}," in holder
    for daemon, held in ((first, 1), (second, 0)):
        metrics = _metrics(daemon)
        assert "reconciler_daemons 2.0" in metrics and f"reconciler_lease_held {held}.0" in metrics, metrics
        holding = re.search(rf'reconciler_lease_holder{{host="[^"]+",pid="{first.process.pid}",[^}}]+}} 1\.0', metrics)
        assert holding is not None, metrics  # and each daemon says who holds it
    _edit_subject(example, "A new harvest")
    wait_for(lambda: first.output.count(APPLIED) == 2, "the holder to apply the edit")
    first.kill()  # its lease is not released: the second sees its pid gone on this host and takes over
    second.wait_for_output(HOLDS, timeout=30)
    _edit_subject(example, "The newest harvest")
    second.wait_for_output(APPLIED, timeout=30)
    assert APPLIED not in second.output.split(HOLDS)[0]  # nothing applied while it stood by
    shown = reconciler("status", cwd=example).stdout
    assert "Processes: 1 daemon running" in shown and f"pid {second.process.pid}, daemon): ok" in shown, shown
    second.stop()


def _metrics(daemon: Daemon) -> str:
    answer = httpx.get(f"http://127.0.0.1:{daemon.port}/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text
    return answer.text
