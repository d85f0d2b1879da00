"""The pre-commit hook this repository offers: its definition is one pre-commit accepts, it runs for the files of a
workspace and no others, and its entry stops a commit that breaks the workspace, wherever the break shows."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, reconciler
from reconciler.yamlnodes import parse_documents

pytestmark = pytest.mark.no_state  # the PostgreSQL pass of the suite leaves it out

MANIFEST = REPO / ".pre-commit-hooks.yaml"
AUTHOR = ["-c", "user.name=Hook Test", "-c", "user.email=hook@example.com"]
OFFLINE = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "No matching distribution found",
    "Could not find a version that satisfies",
)


def _hook() -> dict[str, Any]:
    (document,), errors = parse_documents(MANIFEST.read_text())
    assert errors == []
    hooks = document.value
    assert isinstance(hooks, list)
    (hook,) = (h for h in hooks if h["id"] == "reconciler-validate")
    assert isinstance(hook, dict)
    return hook


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=60)
    return done.stdout


def _repository(root: Path) -> Path:
    """A git repository holding a workspace made by `reconciler init`, filled in and committed."""
    assert reconciler("init", root.name, cwd=root.parent).returncode == 0
    settings = root / "spec" / "settings.yaml"
    text = settings.read_text().replace("FILL-IN: your organization's name", "Acme Tea")
    text = text.replace("FILL-IN: street, postal code, city, country", "Acme Tea, 1 Main Street, Springfield")
    text = text.replace("FILL-IN <news@FILL-IN.invalid>", "Acme <news@acme.example>")
    settings.write_text(text.replace("https://FILL-IN.invalid", "https://mail.acme.example"))
    _git(root, "init", "--quiet")
    _git(root, "add", "--all")
    _git(root, *AUTHOR, "commit", "--quiet", "--no-verify", "-m", "workspace")
    return root


def _rename_list(root: Path) -> None:
    """A change to one file that breaks another: the campaign still names the old list."""
    lists = root / "spec" / "lists.yaml"
    lists.write_text(lists.read_text().replace("name: newsletter", "name: news"))
    _git(root, "add", "--all")


def _run_as_pre_commit(root: Path, hook: dict[str, Any]) -> subprocess.CompletedProcess[str] | None:
    """What pre-commit does at `git commit`: run the entry (with its args, and the staged files only if the hook
    asks for them) in the repository's top folder, when a staged file matches `files`; None when none does."""
    staged = _git(root, "diff", "--staged", "--name-only", "--diff-filter=ACMRTUXB").split()
    matching = [path for path in staged if re.search(hook["files"], path)]
    if not matching:
        return None
    program, *arguments = shlex.split(hook["entry"])
    installed = Path(sys.executable).parent / program
    command = [str(installed)] if installed.exists() else [sys.executable, "-m", "reconciler"]
    command += [*arguments, *hook.get("args", []), *(matching if hook.get("pass_filenames", True) else [])]
    environment = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(command, cwd=root, env=environment, capture_output=True, text=True, timeout=120)


def test_the_hook_is_defined_as_pre_commit_reads_it() -> None:
    hook = _hook()
    assert (hook["language"], hook["entry"], hook["pass_filenames"]) == ("python", "reconciler validate", False)
    try:
        from pre_commit.clientlib import load_manifest
    except ImportError:
        return  # the definition's keys are checked above; pre-commit's own schema when it is installed
    (loaded,) = (h for h in load_manifest(str(MANIFEST)) if h["id"] == "reconciler-validate")
    assert loaded["files"] == hook["files"]


@pytest.mark.parametrize(
    ("path", "runs"),
    [
        ("spec/lists.yaml", True),
        ("spec/settings.yml", True),
        ("campaigns/black-friday.yaml", True),
        ("templates/offers/sale.mjml", True),
        ("templates/welcome/hello.txt", True),
        ("templates/pages/preferences.html", True),
        ("email/campaigns/launch.yaml", True),
        ("README.md", False),
        (".github/workflows/email.yml", False),
        ("contacts.csv", False),
        ("specs/x.yaml", False),
    ],
)
def test_the_hook_runs_for_the_files_of_a_workspace_only(path: str, runs: bool) -> None:
    assert (re.search(_hook()["files"], path) is not None) == runs


def test_the_entry_stops_a_commit_that_breaks_another_file_of_the_workspace(tmp_path: Path) -> None:
    root = _repository(tmp_path / "shop")
    hook = _hook()
    _rename_list(root)
    result = _run_as_pre_commit(root, hook)
    assert result is not None and result.returncode == 1
    assert result.stdout.splitlines() == [
        "campaigns/first-newsletter.yaml:8:11: Campaign first-newsletter: audience.lists[0]: unknown list "
        "'newsletter' (known: news)"
    ]
    campaign = root / "campaigns" / "first-newsletter.yaml"
    campaign.write_text(campaign.read_text().replace("lists: [newsletter]", "lists: [news]"))
    _git(root, "add", "--all")
    fixed = _run_as_pre_commit(root, hook)
    assert fixed is not None and (fixed.returncode, fixed.stderr.strip()) == (0, "The workspace is valid.")


def test_the_entry_checks_a_workspace_in_a_folder_named_in_args(tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    repository.mkdir()
    _git(repository, "init", "--quiet")
    root = _repository(tmp_path / "workspace")
    shutil.rmtree(root / ".git")
    shutil.move(root, repository / "email")
    _rename_list(repository / "email")
    result = _run_as_pre_commit(repository, {**_hook(), "args": ["email"]})
    assert result is not None and result.returncode == 1
    assert result.stdout.startswith("email/campaigns/first-newsletter.yaml:8:11: ")
    _git(repository, *AUTHOR, "commit", "--quiet", "--no-verify", "-m", "x")
    (repository / "README.md").write_text("# Our email\n")
    _git(repository, "add", "README.md")
    assert _run_as_pre_commit(repository, _hook()) is None  # nothing of the workspace staged: the hook is skipped


def test_pre_commit_try_repo_runs_the_hook_from_this_checkout(tmp_path: Path) -> None:
    """The real thing: pre-commit installs this checkout into an environment of its own and runs the hook."""
    pytest.importorskip("pre_commit", reason="pre-commit is not installed (pip install pre-commit)")
    if not (REPO / ".git").exists():
        pytest.skip("this checkout is not a git repository: pre-commit installs hooks from one")
    root = _repository(tmp_path / "shop")
    _rename_list(root)
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environment |= {"PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"), "NO_COLOR": "1", "PRE_COMMIT_COLOR": "never"}
    command = [sys.executable, "-m", "pre_commit", "try-repo", str(REPO), "reconciler-validate", "--color", "never"]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=root, env=environment, capture_output=True, text=True, timeout=900)

    broken = run()
    if broken.returncode != 0 and any(sign in broken.stdout + broken.stderr for sign in OFFLINE):
        pytest.skip("pre-commit could not install the hook's environment: no package index reachable")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "reconciler validate....." in broken.stdout and "Failed" in broken.stdout
    assert "Campaign first-newsletter: audience.lists[0]: unknown list 'newsletter'" in broken.stdout
    campaign = root / "campaigns" / "first-newsletter.yaml"
    campaign.write_text(campaign.read_text().replace("lists: [newsletter]", "lists: [news]"))
    _git(root, "add", "--all")
    fixed = run()
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert re.search(r"reconciler validate\.+Passed", fixed.stdout)
