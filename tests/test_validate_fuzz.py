"""Whatever a marketer types, `validate` answers with problems and an exit code, never a crash."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import EXAMPLE_FOLDERS, REPO
from reconciler.cli import main

pytestmark = pytest.mark.no_state  # the PostgreSQL pass of the suite leaves it out

YAML_PIECES = [
    ":",
    ": ",
    "-",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "&a ",
    "*a",
    "!!str ",
    "!!int ",
    "!custom ",
    "<<: *a",
    "on",
    "NO",
    "012",
    "0x1F",
    "1e3",
    "~",
    "null",
    "\t",
    "  ",
    "\n",
    '"',
    "'",
    "---",
    "...",
    "#",
    "|",
    ">",
    "?",
    "%",
    "@",
    "`",
    "kind: List",
    "name: x",
    "kind: Campaign",
    "2026-11-27T09:00:00",
    "30d",
    "{{",
    "}}",
    "{%",
    "%}",
    "é",
    "\x00",
]
TEMPLATE_PIECES = [
    "<mj-section>",
    "</mj-column>",
    "<mj-text>",
    "{{ contact.",
    "{% if x %}",
    "{% endif %}",
    "{% include 'partials/nope.mjml' %}",
    "{% extends 'x' %}",
    "{% block content %}",
    "<",
    ">",
    "&",
    "}}",
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    for folder in EXAMPLE_FOLDERS:
        shutil.copytree(REPO / folder, root / folder)
    return root


def editable_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".mjml", ".txt"))


@st.composite
def mutation(draw: st.DrawFn, text: str, pieces: list[str]) -> str:
    """One or a few edits of the kinds people make: deletions, insertions, duplicated or swapped lines."""
    for _ in range(draw(st.integers(1, 3))):
        lines = text.splitlines(keepends=True) or [""]
        choice = draw(st.sampled_from(["delete", "insert", "duplicate", "swap", "replace_value"]))
        if choice == "delete" and text:
            start = draw(st.integers(0, len(text) - 1))
            text = text[:start] + text[start + draw(st.integers(1, 40)) :]
        elif choice == "insert":
            at = draw(st.integers(0, len(text)))
            piece = draw(st.one_of(st.sampled_from(pieces), st.text(max_size=8)))
            text = text[:at] + piece + text[at:]
        elif choice == "duplicate":
            index = draw(st.integers(0, len(lines) - 1))
            lines.insert(index, lines[index])
            text = "".join(lines)
        elif choice == "swap" and len(lines) > 1:
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "".join(lines)
        elif choice == "replace_value":
            index = draw(st.integers(0, len(lines) - 1))
            key, sep, _ = lines[index].partition(":")
            if sep:
                values = [*pieces, "", "[]", "{}", "-1", "99999999999999999999"]
                lines[index] = f"{key}: {draw(st.sampled_from(values))}\n"
            text = "".join(lines)
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_validate_never_crashes_on_mutated_files(workspace: Path, data: st.DataObject) -> None:
    files = editable_files(workspace)
    target = data.draw(st.sampled_from(files), label="file")
    original = target.read_bytes()
    pieces = [*TEMPLATE_PIECES, *YAML_PIECES] if target.suffix == ".mjml" else YAML_PIECES
    mutated = data.draw(mutation(original.decode("utf-8"), pieces), label="mutated")
    fmt = data.draw(st.sampled_from(["text", "json", "github"]), label="format")
    try:
        target.write_bytes(mutated.encode("utf-8", errors="surrogatepass"))
        result = CliRunner().invoke(main, ["-C", str(workspace), "validate", "--format", fmt])
    finally:
        target.write_bytes(original)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (0, 1), result.output
    assert "Error: unexpected" not in result.output, result.output
