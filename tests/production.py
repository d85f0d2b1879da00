"""A production state and a pull request beside it: the example workspace applied with 500 made-up contacts (as the
README's tour does), and copies of its files to edit as a pull request would."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import EXAMPLE_FOLDERS, REPO, reconciler

APPLIED_AT = "2030-11-26T12:00:00Z"
"""When the production state was applied: the example is set in late November 2030."""
PLAN_TOKEN = "test-plan-token"
API_TOKEN = "test-api-token"


def copy_example(root: Path) -> Path:
    for folder in EXAMPLE_FOLDERS:
        shutil.copytree(REPO / folder, root / folder)
    return root


def production(root: Path) -> Path:
    """The example workspace at `root`, its state holding the sample contacts, applied at APPLIED_AT."""
    copy_example(root)
    sample = reconciler("contacts", "sample", "--count", "500", cwd=root)
    (root / "sample.csv").write_text(sample.stdout)
    lists = ("--list", "newsletter", "--list", "offers", "--preconfirmed", "--consent", "made-up sample data")
    for args in (("contacts", "import", "sample.csv", *lists), ("apply", "--now", APPLIED_AT)):
        done = reconciler(*args, cwd=root)
        assert done.returncode == 0, done.stdout + done.stderr
    (root / "sample.csv").unlink()
    return root


def pull_request(root: Path) -> Path:
    """A copy of the example's files at `root` in which the draft newsletter is scheduled."""
    copy_example(root)
    campaign = root / "campaigns/guji-harvest-2030.yaml"
    campaign.write_text(campaign.read_text().replace("status: draft", "status: scheduled"))
    return root
