"""`reconciler init` starts a workspace that names what the user must fill in, plans once it is filled in, sends
nothing from its draft, and never writes over a file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator

from conftest import REPO, reconciler
from reconciler.yamlnodes import parse_documents

PLACEHOLDERS = {
    # key as validate names it → (the placeholder line as init writes it, the line a user writes instead)
    "organization.name": ('  name: "FILL-IN: your organization\'s name"', "  name: Acme Tea"),
    "organization.postal_address": (
        '  postal_address: "FILL-IN: street, postal code, city, country"',
        '  postal_address: "Acme Tea Ltd, 1 Harbour Street, Bristol BS1 4XX, United Kingdom"',
    ),
    "public_url": ("public_url: https://FILL-IN.invalid", "public_url: https://mail.acme.example"),
    "senders.news.from": ('    from: "FILL-IN <news@FILL-IN.invalid>"', '    from: "Acme Tea <news@acme.example>"'),
}


def _init(tmp_path: Path, *args: str) -> Path:
    result = reconciler("init", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path / (args[0] if args else "")


def _fill_in(root: Path) -> None:
    settings = root / "spec" / "settings.yaml"
    text = settings.read_text()
    for placeholder, filled in PLACEHOLDERS.values():
        assert placeholder in text.splitlines()
        text = text.replace(placeholder, filled)
    settings.write_text(text)


def _digest(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.no_state
def test_init_lists_what_it_wrote_and_the_next_commands(tmp_path: Path) -> None:
    result = reconciler("init", "my-email", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Created a workspace in my-email:"
    written = {line.split()[0] for line in lines[1 : lines.index("")]}
    assert written == set(_digest(tmp_path / "my-email"))
    steps = [line.strip() for line in lines[lines.index("Next:") + 1 :]]
    assert steps[0] == "cd my-email"
    assert steps[1].startswith("reconciler validate ") and "FILL-IN" in steps[1]
    assert steps[2].startswith("reconciler plan ")


@pytest.mark.no_state
def test_validate_names_exactly_the_placeholders_until_they_are_filled_in(tmp_path: Path) -> None:
    root = _init(tmp_path, "my-email")
    before = reconciler("validate", cwd=root)
    assert before.returncode == 1
    problems = before.stdout.splitlines()
    named = [line.split(": ")[2] for line in problems]
    assert named == list(PLACEHOLDERS)
    lines = (root / "spec" / "settings.yaml").read_text().splitlines()
    for problem, (placeholder, _) in zip(problems, PLACEHOLDERS.values(), strict=True):
        path, line, _column, rest = problem.split(":", 3)
        assert path == "spec/settings.yaml" and lines[int(line) - 1] == placeholder
        assert "Settings default" in rest and "still the placeholder" in rest and "(write " in rest
    assert before.stderr.strip() == "4 errors, 0 warnings"

    _fill_in(root)
    after = reconciler("validate", cwd=root)
    assert (after.returncode, after.stdout, after.stderr.strip()) == (0, "", "The workspace is valid.")


def test_a_filled_in_workspace_plans_and_its_draft_sends_nothing(tmp_path: Path) -> None:
    root = _init(tmp_path, "my-email")
    _fill_in(root)
    people = "".join(f"reader.{number}@example.com,Reader\n" for number in range(20))
    (tmp_path / "people.csv").write_text("email,first_name\n" + people)
    imported = reconciler(
        "contacts", "import", "../people.csv", "--list", "newsletter", "--preconfirmed", "--consent", "test", cwd=root
    )
    assert imported.returncode == 0, imported.stderr

    plan = reconciler("plan", cwd=root)
    assert plan.returncode == 0, plan.stderr
    assert "+ List newsletter" in plan.stdout
    assert "+ Campaign first-newsletter  draft: not scheduled" in plan.stdout
    assert "→ 20 recipients" in plan.stdout

    tick = reconciler("tick", cwd=root)
    assert tick.returncode == 0, tick.stderr
    assert "sent" not in tick.stdout and "started" not in tick.stdout
    outbox = root / ".state" / "outbox"
    assert not outbox.exists() or not any(outbox.rglob("*.eml"))
    status = reconciler("status", "--format", "json", cwd=root)
    (campaign,) = json.loads(status.stdout)["campaigns"]
    assert (campaign["name"], campaign["status"]) == ("first-newsletter", "draft")


def test_the_draft_renders_with_the_filled_in_footer(tmp_path: Path) -> None:
    root = _init(tmp_path, "my-email")
    _fill_in(root)
    html = reconciler("render", "first-newsletter", cwd=root)
    assert html.returncode == 0, html.stderr
    assert "Acme Tea Ltd, 1 Harbour Street" in html.stdout and "Unsubscribe" in html.stdout


def _documents(root: Path) -> list[tuple[str, Any]]:
    found = []
    for path in sorted([*root.glob("spec/*.yaml"), *root.glob("campaigns/*.yaml")]):
        parsed, errors = parse_documents(path.read_text())
        assert errors == []
        found += [(path.name, document.value) for document in parsed]
    return found


@pytest.mark.no_state
def test_vs_code_is_pointed_at_the_schema_reconciler_prints(tmp_path: Path) -> None:
    root = _init(tmp_path, "my-email")
    settings = json.loads((root / ".vscode" / "settings.json").read_text())
    ((schema_path, globs),) = settings["yaml.schemas"].items()
    schema_file = root / schema_path
    assert schema_file.read_text() == reconciler("schema", cwd=root).stdout
    covered = {p.relative_to(root) for g in globs for p in root.glob(g)}
    assert covered == {p.relative_to(root) for p in [*root.glob("spec/*"), *root.glob("campaigns/*")]}
    validator = Draft7Validator(json.loads(schema_file.read_text()))
    for where, document in _documents(root):
        assert [e.message for e in validator.iter_errors(document)] == [], where


@pytest.mark.no_state
def test_init_in_the_current_folder_keeps_other_files_and_adds_state_to_gitignore(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / "README.md").write_text("# Our email\n")
    (tmp_path / ".gitignore").write_text("*.pyc")
    result = reconciler("init", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "cd " not in result.stdout
    assert "added .state/" in result.stdout
    assert (tmp_path / ".gitignore").read_text() == "*.pyc\n.state/\n"
    assert (tmp_path / "README.md").read_text() == "# Our email\n"
    assert (tmp_path / "spec" / "settings.yaml").is_file()


@pytest.mark.no_state
def test_init_never_writes_over_a_workspace(tmp_path: Path) -> None:
    root = _init(tmp_path, "my-email")
    _fill_in(root)
    before = _digest(root)
    again = reconciler("init", "my-email", cwd=tmp_path)
    assert again.returncode == 1
    assert again.stdout == ""
    assert again.stderr.startswith("Error: my-email already holds spec/, campaigns/, templates/, .vscode/")
    assert "never overwrites" in again.stderr
    assert _digest(root) == before


@pytest.mark.no_state
def test_init_refuses_when_one_file_it_would_write_exists(tmp_path: Path) -> None:
    (tmp_path / ".vscode").mkdir()
    (tmp_path / ".vscode" / "settings.json").write_text('{"editor.tabSize": 2}\n')
    result = reconciler("init", cwd=tmp_path)
    assert result.returncode == 1
    assert ".vscode/settings.json" in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == [".vscode", "settings.json"]


@pytest.mark.no_state
@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_init_does_not_follow_a_link_out_of_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "ws"
    root.mkdir()
    (root / "templates").symlink_to(outside)
    result = reconciler("init", "ws", cwd=tmp_path)
    assert result.returncode == 1 and "templates/" in result.stderr
    assert list(outside.iterdir()) == []


@pytest.mark.no_state
def test_init_refuses_a_folder_of_its_own_that_is_a_broken_link_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (root / ".vscode").symlink_to(tmp_path / "nowhere")  # it failed with FileExistsError, half written
    result = reconciler("init", "ws", cwd=tmp_path)
    assert result.returncode == 1 and ".vscode/ (a link)" in result.stderr and "unexpected" not in result.stderr
    assert sorted(p.name for p in root.iterdir()) == [".vscode"]


@pytest.mark.no_state
def test_init_on_a_file_says_it_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    result = reconciler("init", "notes.txt", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: notes.txt is a file, not a folder")


@pytest.mark.no_state
def test_the_skeleton_is_shipped_as_package_data() -> None:
    import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["reconciler"]
    package = REPO / "src" / "reconciler"
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    skeleton = {p for p in (package / "skeleton").rglob("*") if p.is_file()}
    assert skeleton and skeleton <= shipped
