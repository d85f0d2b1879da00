"""`reconciler run` as a real process: it watches the files, keeps the last good revision, stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import reconciler, wait_for


@pytest.fixture
def daemon(example: Path) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("RECONCILER_STATE", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run", "--interval", "60"],
        cwd=example,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def _status(example: Path) -> dict[str, object]:
    result = reconciler("status", "--format", "json", cwd=example)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def test_the_daemon_applies_changes_keeps_the_last_good_revision_and_stops_on_sigterm(
    example: Path, daemon: subprocess.Popen[str]
) -> None:
    wait_for(lambda: bool(_status(example).get("revision", {}).get("applied")), "the first revision")  # type: ignore[union-attr]
    first = _status(example)["revision"]["applied"]  # type: ignore[index]

    guji = example / "campaigns" / "guji-harvest-2026.yaml"
    guji.write_text(guji.read_text().replace("status: draft", "status: paused"))
    wait_for(lambda: _status(example)["revision"]["applied"] != first, "the edit to be applied")  # type: ignore[index]
    campaigns = {c["name"]: c for c in _status(example)["campaigns"]}  # type: ignore[attr-defined]
    assert campaigns["guji-harvest-2026"]["status"] == "paused"
    good = _status(example)["revision"]["applied"]  # type: ignore[index]

    guji.write_text(guji.read_text().replace("status: paused", "status: gone"))
    wait_for(lambda: _status(example)["last_error"] is not None, "the error to be reported")
    report = _status(example)
    assert report["revision"]["applied"] == good  # type: ignore[index]
    assert any("guji-harvest-2026.yaml" in line and "status" in line for line in report["last_error"]["problems"])  # type: ignore[index]
    assert {c["name"]: c["status"] for c in report["campaigns"]}["guji-harvest-2026"] == "paused"  # type: ignore[attr-defined]
    assert daemon.poll() is None  # still running

    guji.write_text(guji.read_text().replace("status: gone", "status: cancelled"))
    wait_for(lambda: _status(example)["last_error"] is None, "the error to clear")
    assert {c["name"]: c["status"] for c in _status(example)["campaigns"]}["guji-harvest-2026"] == "cancelled"  # type: ignore[attr-defined]

    daemon.send_signal(signal.SIGTERM)
    output, _ = daemon.communicate(timeout=15)
    assert daemon.returncode == 0, output
    assert "revision" in output and "has 1 error(s); the last good revision stays in force" in output
    assert "reconciler: stopped" in output
