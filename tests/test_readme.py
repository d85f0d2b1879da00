"""The README's console transcripts are true: run in order in a fresh git checkout of the example workspace, each
command prints what the README shows (ids and times aside; "..." stands for any lines)."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, wait_for
from daemon_process import WATCHING, Daemon
from transcripts import Command, console_blocks, fits, mismatch, normalise

README = (REPO / "README.md").read_text()
TOKEN = "readme-api-token"
DEFAULT_PORT = "8780"
# `reconciler` and `.venv/bin/reconciler` are the installed command; on a terminal curl shows no progress meter.
PRELUDE = f"""
reconciler() {{ {shlex.quote(sys.executable)} -m reconciler "$@"; }}
curl() {{ command curl --silent --show-error "$@"; }}
"""


def _environment() -> dict[str, str]:
    """The user's shell after `make run`: none of our variables set but the API token, no git state of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILER_", "GIT_"))}
    # unbuffered, as on a terminal, so stdout and the log on stderr interleave as the user sees them
    return {**env, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", "RECONCILER_API_TOKEN": TOKEN}


def _git_checkout(root: Path, env: dict[str, str]) -> None:
    """The workspace as a clone of the repository is: committed, so `git checkout campaigns/` restores it."""
    author = ["-c", "user.name=README", "-c", "user.email=readme@example.com"]
    for args in (["init", "--quiet"], ["add", "--all"], [*author, "commit", "--quiet", "--no-verify", "-m", "x"]):
        subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, timeout=60)


def _run(command: Command, root: Path, env: dict[str, str], port: int | None) -> str:
    text = command.text.replace(".venv/bin/reconciler", "reconciler")
    if port is not None:
        text = text.replace(f"localhost:{DEFAULT_PORT}", f"localhost:{port}")
    result = subprocess.run(
        ["bash", "-c", PRELUDE + text],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    return result.stdout


def _serving(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _run_block(block: list[Command], root: Path, env: dict[str, str]) -> list[str]:
    """The block's commands in order, with a daemon beside them if they talk to it; what differs from the README."""
    if not any(f":{DEFAULT_PORT}" in command.text for command in block):
        return _check(block, root, env, port=None)
    with Daemon(root, env=env) as daemon:
        daemon.wait_for_output(WATCHING)
        wait_for(lambda: _serving(daemon.port), "the daemon's web service", 60)
        failures = _check(block, root, env, port=daemon.port)
        daemon.stop()
    return failures


def _check(block: list[Command], root: Path, env: dict[str, str], *, port: int | None) -> list[str]:
    outputs = ((command, _run(command, root, env, port)) for command in block)
    return [failure for command, output in outputs if (failure := mismatch(command, output, where="README.md"))]


@pytest.mark.sqlite_only("the README's tour shows the default state, a SQLite file (`status` names a PostgreSQL one)")
def test_the_readme_console_transcripts_print_what_they_show(example: Path) -> None:
    env = _environment()
    _git_checkout(example, env)
    blocks = [[c for c in block if not c.text.startswith("make ")] for block in console_blocks(README)]
    assert sum(len(block) for block in blocks) >= 20, "the README's transcripts were not found"
    failures = [failure for block in blocks for failure in _run_block(block, example, env)]
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


@pytest.mark.no_state
def test_transcripts_are_read_and_compared_as_documented() -> None:
    markdown = "```console\n$ a \\\n    --b\nout 1\n  ...\nout 9\n$ c\n```\n```\n$ not a console block\n```\n"
    (block,) = console_blocks(markdown)
    assert block == [Command(2, "a \\\n    --b", ("out 1", "  ...", "out 9")), Command(7, "c", ())]
    shown = normalise(block[0].shown)
    assert fits(shown, ["out 1", "out 9"]) and fits(shown, ["out 1", "x", "y", "out 9"])
    assert not fits(shown, ["out 1", "x"]) and not fits(shown, ["out 0", "out 9"])
    assert normalise(["at 2030-11-26T12:05:00Z", "423573527c94+dirty ", "took 0.4 s", ""]) == [
        "at <time>",
        "<id>",
        "took <duration>",
    ]
    diff = "$ c\n--- X.md:7 (shown)\n+++ actual output\n@@ -0,0 +1 @@\n+surprise"
    assert mismatch(block[1], "surprise\n", where="X.md") == diff and mismatch(block[1], "\n", where="X.md") is None
