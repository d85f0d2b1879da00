"""One small broken workspace per mistake class: `validate` must name the file, the line and the mistake.

Each folder under workspaces/broken/ is an overlay on workspaces/base/ (a valid workspace): its files replace or
add to the base, `remove.txt` lists base files to delete, and `expect.txt` lists the problems that must be
reported, one `FILE:LINE: key words` per line.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from reconciler.cli import main

pytestmark = pytest.mark.no_state  # the PostgreSQL pass of the suite leaves it out

HERE = Path(__file__).resolve().parent / "workspaces"
CASES = sorted(p for p in (HERE / "broken").iterdir() if p.is_dir())
META = ("expect.txt", "remove.txt")


@dataclass(frozen=True)
class Expected:
    file: str
    line: int
    words: str


def expectations(case: Path) -> list[Expected]:
    found = []
    for row in (case / "expect.txt").read_text().splitlines():
        if row.strip():
            location, words = row.split(": ", 1)
            file, line = location.rsplit(":", 1)
            found.append(Expected(file, int(line), words.strip()))
    return found


def build(case: Path | None, root: Path) -> Path:
    """A fresh copy of the base workspace with the case laid over it."""
    workspace = root / "ws"
    shutil.copytree(HERE / "base", workspace)
    if case is None:
        return workspace
    removals = case / "remove.txt"
    for relative in removals.read_text().split() if removals.exists() else []:
        (workspace / relative).unlink()
    for path in case.rglob("*"):
        if path.is_file() and path.name not in META:
            target = workspace / path.relative_to(case)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return workspace


def validate(workspace: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    monkeypatch.chdir(workspace)
    result = CliRunner().invoke(main, ["validate", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_the_base_workspace_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = validate(build(None, tmp_path), monkeypatch)
    assert (code, output) == (0, "The workspace is valid.\n")


def test_the_corpus_covers_at_least_thirty_mistake_classes() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broken_workspace_is_reported_at_its_line(case: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = validate(build(case, tmp_path), monkeypatch)
    assert code == 1, output
    assert "Traceback" not in output
    lines = output.splitlines()
    for expected in expectations(case):
        prefix = f"{expected.file}:{expected.line}:"
        matching = [line for line in lines if line.startswith(prefix)]
        assert any(expected.words.lower() in line.lower() for line in matching), (
            f"expected {prefix} ... {expected.words!r}, got:\n{output}"
        )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broken_workspace_is_annotated_for_github(case: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = validate(build(case, tmp_path), monkeypatch, "--format", "github")
    assert code == 1
    for expected in expectations(case):
        assert f"::error file={expected.file},line={expected.line}," in output, output


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_broken_workspace_is_reported_in_json(case: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = validate(build(case, tmp_path), monkeypatch, "--format", "json")
    report = json.loads(output)
    assert code == 1 and report["ok"] is False
    located = {(p["file"], p["line"]) for p in report["problems"]}
    for expected in expectations(case):
        assert (expected.file, expected.line) in located


def test_a_pasted_secret_is_never_echoed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("secret-password-in-yaml", "secret-in-env-name"):
        _, output = validate(build(HERE / "broken" / name, tmp_path / name), monkeypatch)
        assert "hunter2" not in output
