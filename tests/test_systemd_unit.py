"""deploy/reconciler.service is a unit systemd reads as written: no comment glued to a value (systemd takes only
whole lines starting with # or ; as comments, so "WorkingDirectory=/srv/email  # the checkout" names a folder
with "# the checkout" in it), no key systemd does not know, and the unit the docs show is the file."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.no_state  # the PostgreSQL pass of the suite leaves it out

UNIT = REPO / "deploy" / "reconciler.service"
SECTION = re.compile(r"^\[[A-Za-z]+\]$")


def assignments(text: str) -> list[tuple[int, str, str]]:
    """(line, key, value) of every assignment; comments and blank lines skipped, as systemd skips them."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")) or SECTION.match(stripped):
            continue
        key, equals, value = stripped.partition("=")
        assert equals, f"{UNIT.name}:{number}: neither a section, a comment nor Key=value: {line!r}"
        found.append((number, key.strip(), value.strip()))
    return found


def test_no_value_carries_a_comment() -> None:
    glued = [f"{UNIT.name}:{n}: {key}={value}" for n, key, value in assignments(UNIT.read_text()) if "#" in value]
    assert not glued, "systemd reads these comments as part of the value; put them on a line of their own:\n" + (
        "\n".join(glued)
    )


def test_the_parser_finds_a_comment_glued_to_a_value() -> None:
    """The check above is not vacuous: the README's unit of 0.4 had exactly this mistake."""
    old = "[Service]\nWorkingDirectory=/srv/email            # the workspace checkout\n"
    assert assignments(old) == [(2, "WorkingDirectory", "/srv/email            # the workspace checkout")]


def test_the_unit_runs_the_daemon_with_its_state_outside_the_workspace() -> None:
    values = {key: value for _, key, value in assignments(UNIT.read_text())}
    assert values["ExecStart"].split()[1:] == ["run"]
    assert values["StateDirectory"] == "reconciler"
    assert "RECONCILER_STATE=/var/lib/reconciler/reconciler.db" in values["Environment"]
    # the daemon needs up to about 15 s to let messages on the wire finish after SIGTERM
    assert values["KillSignal"] == "SIGTERM" and int(values["TimeoutStopSec"]) >= 30


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    """`systemd-analyze verify` also checks that ExecStart's program exists: here reconciler is installed beside
    the Python that runs the tests, not in /opt/reconciler, so the copy verified names that one."""
    installed = Path(sys.executable).parent / "reconciler"
    assert installed.exists(), installed
    unit = tmp_path / "reconciler.service"
    unit.write_text(UNIT.read_text().replace("/opt/reconciler/bin/reconciler", str(installed)))
    assert str(installed) in unit.read_text()
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 on settings it ignores (an unknown key, a value it cannot parse) but says so on stderr
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_docs_show_the_unit_file_as_it_is() -> None:
    deploy = (REPO / "docs" / "deploy.md").read_text()
    shown = re.search(r"```ini\n# deploy/reconciler\.service\n(.*?)```", deploy, re.DOTALL)
    assert shown, "docs/deploy.md shows deploy/reconciler.service in an ```ini block starting with its name"
    assert shown.group(1) == UNIT.read_text()
    assert "deploy/reconciler.service" in (REPO / "README.md").read_text()
