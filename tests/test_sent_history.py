"""A campaign that was sent is history: an edit to its file is a warning everywhere and never stops the rest."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import reconciler

NOW = "2030-11-26T12:00:00Z"
LATER = "2030-11-26T12:10:00Z"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _sent_guji(example: Path) -> None:
    """The example with two contacts and its newsletter sent to them (into the outbox)."""
    (example / "c.csv").write_text("email\nann@example.com\nbob@example.com\n")
    imported = reconciler("contacts", "import", "c.csv", "--list", "newsletter", "--preconfirmed", cwd=example)
    assert imported.returncode == 0, imported.stderr
    _edit(example / "campaigns" / "guji-harvest-2030.yaml", "status: draft", "status: scheduled")
    sent = reconciler("tick", "--now", NOW, cwd=example)
    assert "Campaign guji-harvest-2030: finished" in sent.stdout, sent.stdout + sent.stderr


def test_an_edit_to_a_sent_campaign_is_a_warning_that_blocks_nothing(example: Path) -> None:
    _sent_guji(example)
    _edit(example / "campaigns" / "guji-harvest-2030.yaml", "The Guji harvest has landed", "The Guji harvest is here")
    friday = example / "campaigns" / "black-friday-2030.yaml"
    _edit(friday, "subject: ", "subject: Last call - ")  # the same revision changes a campaign not yet started

    validated = reconciler("validate", cwd=example)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    warning = (
        "campaigns/guji-harvest-2030.yaml:5:1: warning: Campaign guji-harvest-2030: subject: not applied: sent on "
        "2030-11-26T12:00:00Z"
    )
    assert warning in validated.stdout, validated.stdout

    planned = reconciler("plan", "--now", LATER, cwd=example)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert warning in planned.stdout and "~ Campaign black-friday-2030" in planned.stdout, planned.stdout
    assert "error" not in planned.stdout, planned.stdout

    ticked = reconciler("tick", "--now", LATER, cwd=example)  # one daemon pass
    assert ticked.returncode == 0, ticked.stdout + ticked.stderr
    assert "Campaign black-friday-2030: update (subject)" in ticked.stdout
    assert "not applied: sent on 2030-11-26T12:00:00Z" in ticked.stderr

    status = json.loads(reconciler("status", "--format", "json", cwd=example).stdout)
    guji = next(c for c in status["campaigns"] if c["name"] == "guji-harvest-2030")
    assert (guji["status"], guji["ready"], guji["reason"]) == ("sent", True, "Sent")
    assert guji["not_applied"].startswith("subject: not applied: sent on 2030-11-26T12:00:00Z"), guji
    assert status["problems"] == []
    text = reconciler("status", cwd=example).stdout
    assert (
        "    finished: sent 2\n    warning: subject: not applied: sent on 2030-11-26T12:00:00Z; subject changed "
        "(campaigns/guji-harvest-2030.yaml:5)\n" in text
    ), text

    applied = reconciler("apply", "--now", LATER, cwd=example)
    assert applied.returncode == 0 and warning in applied.stdout, applied.stdout

    _edit(example / "campaigns" / "guji-harvest-2030.yaml", "The Guji harvest is here", "The Guji harvest has landed")
    assert reconciler("apply", "--now", LATER, cwd=example).returncode == 0
    status = json.loads(reconciler("status", "--format", "json", cwd=example).stdout)
    guji = next(c for c in status["campaigns"] if c["name"] == "guji-harvest-2030")
    assert guji["not_applied"] is None  # the file agrees with what was sent again
