"""Workspace files written to hurt: nesting that would crash the YAML composer, templates that would eat memory or
time, links out of the workspace. Each is a located `validate` problem, and the daemon refuses the revision
instead of dying or hanging."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, reconciler


@pytest.fixture
def base(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(Path(__file__).resolve().parent / "workspaces" / "base", root)
    return root


def _assert_refused(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    output = result.stdout + result.stderr
    for words in expected:
        assert words in output, output[-3000:]


@pytest.mark.parametrize(
    "where",
    [
        "[" * 50_000 + "]" * 50_000,
        "{a: " * 50_000 + "1" + "}" * 50_000,
        "\n" + "".join(" " * (level + 1) + "-\n" for level in range(3000)),
    ],
    ids=["flow-sequences", "flow-mappings", "block-sequences"],
)
def test_yaml_nested_too_deep_is_a_located_problem_not_a_crash(base: Path, where: str) -> None:
    deep = base / "spec" / "deep.yaml"
    deep.write_text("kind: Segment\nname: deep\nwhere: " + where + "\n")
    line = 3 if where.startswith(("[", "{")) else 67  # where the 65th level opens
    _assert_refused(reconciler("validate", cwd=base), f"spec/deep.yaml:{line}:", "nested deeper than 64 levels")
    _assert_refused(reconciler("tick", cwd=base), f"spec/deep.yaml:{line}:", "nested deeper than 64 levels")


def test_aliases_that_nest_deeper_than_the_limit_are_refused(base: Path) -> None:
    lines = ["a0: &a0 [1]"] + [f"a{n}: &a{n} [[[[[[[[[[*a{n - 1}]]]]]]]]]]" for n in range(1, 12)]
    (base / "spec" / "aliases.yaml").write_text("kind: Segment\nname: aliased\n" + "\n".join(lines) + "\n")
    _assert_refused(reconciler("validate", cwd=base), "spec/aliases.yaml:", "nested deeper than 64 levels")


def test_a_deep_but_reasonable_condition_still_validates(base: Path) -> None:
    condition = "{not: " * 30 + "{field: spend, gt: 1}" + "}" * 30
    (base / "spec" / "nested.yaml").write_text(f"kind: Segment\nname: nested\nwhere: {condition}\n")
    result = reconciler("validate", cwd=base)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_example_workspace_needs_no_more_than_the_limit() -> None:
    result = reconciler("validate", cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
