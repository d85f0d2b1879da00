"""The `reconciler` command as a user runs it: real processes, real files, exit codes and output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, WriteFiles, reconciler

pytestmark = pytest.mark.no_state  # the PostgreSQL pass of the suite leaves it out


def test_the_example_workspace_is_valid() -> None:
    result = reconciler("validate", cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert "valid" in result.stderr


def test_github_format_prints_annotations_and_exits_1(example: Path) -> None:
    campaign = next((example / "campaigns").glob("*.yaml"))
    text = campaign.read_text()
    campaign.write_text(text.replace("subject:", "subjct:", 1))
    result = reconciler("validate", "--format", "github", cwd=example)
    assert result.returncode == 1
    relative = campaign.relative_to(example).as_posix()
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith("subject:"))
    assert f"::error file={relative},line={line},col=1,title=Campaign " in result.stdout
    assert "unknown key 'subjct'" in result.stdout
    assert "did you mean 'subject'?" in result.stdout


def test_json_format_is_machine_readable(example: Path) -> None:
    (example / "campaigns" / "extra.yaml").write_text("kind: Campaign\nname: extra\n")
    result = reconciler("validate", "--format", "json", cwd=example)
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert report["ok"] is False
    missing = {p["message"] for p in report["problems"] if p["file"] == "campaigns/extra.yaml"}
    assert {"missing required key 'subject'", "missing required key 'template'"} <= missing


def test_validating_one_file_shows_only_its_problems(example: Path) -> None:
    (example / "campaigns" / "a.yaml").write_text("kind: Campaign\nname: a\n")
    (example / "campaigns" / "b.yaml").write_text("kind: Campaign\nname: b\n")
    result = reconciler("validate", "campaigns/a.yaml", cwd=example)
    assert result.returncode == 1
    assert "campaigns/a.yaml" in result.stdout
    assert "campaigns/b.yaml" not in result.stdout


def test_a_clean_file_is_not_called_a_valid_workspace_when_other_files_have_errors(example: Path) -> None:
    (example / "campaigns" / "b.yaml").write_text("kind: Campaign\nname: b\n")
    result = reconciler("validate", "spec/lists.yaml", cwd=example)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert "The workspace is valid" not in result.stderr
    assert result.stderr == (
        "No problems in spec/lists.yaml; the workspace's other files have 3 errors, 0 warnings "
        "(reconciler validate lists them).\n"
    )
    (example / "campaigns" / "b.yaml").unlink()
    result = reconciler("validate", "spec/lists.yaml", cwd=example)
    assert result.stderr == "No problems in spec/lists.yaml; the rest of the workspace is valid too.\n"
    (example / "campaigns" / "draft.yml.bak").write_text("kind: Campaign\nsubjct: x\n")  # not read by the loader
    backup = reconciler("validate", "campaigns/draft.yml.bak", cwd=example)
    assert "campaigns/draft.yml.bak:1:1: warning: not a file of the workspace: not checked" in backup.stdout
    assert "0 errors, 1 warning in campaigns/draft.yml.bak" in backup.stderr


def test_debug_is_accepted_after_the_command_too(write_files: WriteFiles) -> None:
    root = write_files({"spec/settings.yaml": "kind: Settings\nname: default\n"})
    before = reconciler("--debug", "validate", cwd=root)
    after = reconciler("validate", "--debug", cwd=root)
    assert after.returncode == before.returncode == 1
    assert "No such option" not in after.stderr
    assert after.stdout == before.stdout


def test_workspace_option_validates_another_folder(example: Path, tmp_path: Path) -> None:
    result = reconciler("-C", str(example), "validate", cwd=REPO / "src")
    assert result.returncode == 0, result.stdout


def test_a_path_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    result = reconciler("validate", "nowhere", cwd=tmp_path)
    assert result.returncode == 2
    assert "nowhere does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_folder_that_is_no_workspace_is_a_usage_error(tmp_path: Path) -> None:
    result = reconciler("validate", cwd=tmp_path)
    assert result.returncode == 2
    assert "not in a workspace" in result.stderr


def test_problems_never_print_a_traceback_and_debug_does(write_files: WriteFiles) -> None:
    root = write_files({"spec/settings.yaml": "kind: Settings\nname: default\n  broken: [\n"})
    result = reconciler("validate", cwd=root)
    assert result.returncode == 1
    assert "spec/settings.yaml:3" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_version_and_module_entry_point() -> None:
    result = reconciler("--version", cwd=REPO)
    assert result.returncode == 0
    assert result.stdout.startswith("reconciler, version ")


def test_schema_is_printed_as_json() -> None:
    result = reconciler("schema", cwd=REPO)
    assert result.returncode == 0
    assert json.loads(result.stdout)["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_a_typo_is_matched_with_the_keys_of_its_own_place(example: Path) -> None:
    """`audience: {limt: 3}` was told "did you mean 'limit'?", a key of segments, then refused 'limit' in turn."""
    campaign = example / "campaigns/holiday-gift-guide-2030.yaml"
    text = campaign.read_text()
    start = text.index("audience:")
    end = text.index("send_at:")
    campaign.write_text(text[:start] + "audience: {lists: [newsletter], limt: 3}\n" + text[end:])
    result = reconciler("validate", cwd=example)
    assert "audience.limt: unknown key 'limt'" in result.stdout and "did you mean 'limit'" not in result.stdout
    campaign.write_text(text[:start] + "audience: {lists: [newsletter], exclud: {lists: [offers]}}\n" + text[end:])
    result = reconciler("validate", cwd=example)
    assert "unknown key 'exclud' (did you mean 'exclude'?)" in result.stdout, result.stdout
