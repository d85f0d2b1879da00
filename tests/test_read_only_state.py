"""A state database on a read-only mount (a backup, a replica, a container's read-only volume): the commands that
only read still work, the ones that write say which path cannot be written and what to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import reconciler


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    return probe.returncode == 0


pytestmark = [
    pytest.mark.skipif(
        not _unshare_works(), reason="needs root and unshare -m for a read-only bind mount (CI runs as root)"
    ),
    pytest.mark.sqlite_only("a state file on a read-only mount"),
]


def read_only(folder: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`reconciler ARGS` in a mount namespace of its own where `folder` is mounted read-only."""
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    environment = {**os.environ, "NO_COLOR": "1"}
    environment.pop("RECONCILER_STATE", None)
    command = ["unshare", "-m", "sh", "-c", script, str(folder), sys.executable, "-m", "reconciler", *args]
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=120)


def test_read_commands_work_on_a_read_only_mount_and_write_commands_say_why_not(example: Path) -> None:
    (example / "c.csv").write_text("email,first_name,brew_method\nann@example.com,Ann,espresso\n")
    imported = reconciler("contacts", "import", "c.csv", "--list", "offers", cwd=example)
    assert imported.returncode == 0, imported.stderr
    assert reconciler("apply", cwd=example).returncode == 0
    state = example / ".state"
    assert not (state / "reconciler.db-wal").exists()  # closed cleanly, as a backup or a stopped daemon leaves it

    status = read_only(state, "status", "--format", "json", cwd=example)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["campaigns"]
    exported = read_only(state, "contacts", "export", "ann@example.com", cwd=example)
    assert exported.returncode == 0 and json.loads(exported.stdout)["contact"]["first_name"] == "Ann"
    shown = read_only(state, "segments", "show", "espresso-people", "--contact", "ann@example.com", cwd=example)
    assert shown.returncode == 0 and "ann@example.com is IN" in shown.stdout, shown.stdout + shown.stderr
    planned = read_only(state, "plan", cwd=example)
    assert planned.returncode == 0 and "Plan: no changes" in planned.stdout, planned.stdout + planned.stderr

    for args in (
        ("apply",),
        ("tick",),
        ("contacts", "import", "c.csv"),
        ("contacts", "erase", "a@example.com", "--yes"),
    ):
        refused = read_only(state, *args, cwd=example)
        assert refused.returncode == 1, (args, refused.stdout, refused.stderr)
        assert "reconciler.db: the state database cannot be written here" in refused.stderr, refused.stderr
        assert "unexpected" not in refused.stderr


def test_a_read_only_workspace_without_a_state_folder_says_so(example: Path) -> None:
    refused = read_only(example, "apply", cwd=example)
    assert refused.returncode == 1
    assert ".state: cannot create the state folder" in refused.stderr, refused.stderr
    assert "unexpected" not in refused.stderr
