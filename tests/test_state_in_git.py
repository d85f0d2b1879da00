"""The state database holds personal data: a plain `git add -A` never commits it, and validate says when git has it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import reconciler

pytestmark = pytest.mark.sqlite_only("the state file kept out of git")


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=60)
    return done.stdout


def _import(root: Path) -> None:
    (root / "c.csv").write_text("email\nann@example.com\n")
    imported = reconciler("contacts", "import", "c.csv", "--list", "newsletter", "--preconfirmed", cwd=root)
    assert imported.returncode == 0, imported.stderr


def test_a_new_state_database_keeps_itself_out_of_git(example: Path) -> None:
    _git(example, "init", "-q")
    _import(example)  # creates .state/reconciler.db (with its WAL and shared-memory files while open)
    assert (example / ".state" / ".gitignore").read_text() == "*\n"
    _git(example, "add", "-A")
    tracked = _git(example, "ls-files").splitlines()
    assert "c.csv" in tracked and not [path for path in tracked if path.startswith(".state")], tracked
    validated = reconciler("validate", cwd=example)
    assert validated.returncode == 0 and "tracked by git" not in validated.stdout, validated.stdout


def test_validate_warns_when_git_tracks_the_state(example: Path) -> None:
    _git(example, "init", "-q")
    _import(example)
    _git(example, "add", "-f", ".state/reconciler.db")  # committed before .state/.gitignore existed
    validated = reconciler("validate", cwd=example)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert validated.stdout.startswith(
        ".state/reconciler.db:1:1: warning: the state database (contacts, consent: personal data) is tracked by git"
    ), validated.stdout
    assert "git rm -r --cached .state" in validated.stdout
    assert "0 errors, 1 warning" in validated.stderr


def test_without_git_there_is_no_warning(example: Path) -> None:
    _import(example)
    validated = reconciler("validate", cwd=example)
    assert (validated.returncode, validated.stdout) == (0, ""), validated.stdout
