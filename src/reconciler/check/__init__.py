"""Checks across documents: references, cycles, field types, templates and compliance.

`check(desired)` is pure (templates compile in memory) and returns every problem it finds; `validate` is
`load` followed by `check`. Each problem points at the key that is wrong, so the fix is one click away in CI.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from reconciler.check.checker import Checker
from reconciler.check.messages import check_field_reads, check_templates, sample_context, uses
from reconciler.check.pages import check_confirmation, check_languages, check_pages
from reconciler.check.references import (
    check_campaign,
    check_fields,
    check_segment,
    check_segment_cycles,
    check_settings,
)
from reconciler.check.workflows import check_workflow, check_workflow_loops, check_workflow_test
from reconciler.errors import Problem
from reconciler.load import load_workspace
from reconciler.spec import DesiredState

__all__ = ["check", "sample_context", "uses", "validate_workspace"]


def validate_workspace(
    root: Path, *, checked: MutableMapping[str, list[Problem]] | None = None
) -> tuple[DesiredState, list[Problem]]:
    """Load the workspace and check it: the desired state and every problem, sorted, each once.

    `checked` remembers the problems of the last revision checked: the revision is a hash of every file, so an
    unchanged workspace is not compiled and rendered again (the daemon's periodic passes)."""
    desired, problems = load_workspace(root)
    key = desired.revision + _files_read_beside(desired)
    if checked is not None and key in checked:
        return desired, checked[key]
    problems = sorted(set(problems + check(desired)))
    if checked is not None:
        checked.clear()
        checked[key] = problems
    return desired, problems


def _files_read_beside(desired: DesiredState) -> str:
    """What the checks read besides the workspace's own files (the revision): the GeoIP database's size and time,
    so that adding the missing file, or replacing a broken one, is checked again."""
    settings = desired.settings
    if settings is None or not settings.tracking.geoip_database:
        return ""
    try:
        found = (Path(desired.root) / settings.tracking.geoip_database).stat()
    except OSError:
        return "|geoip missing"
    return f"|geoip {found.st_size} {found.st_mtime_ns}"


def check(desired: DesiredState) -> list[Problem]:
    """Every problem that spans documents; assumes each document on its own already parsed."""
    checker = Checker(desired)
    if desired.settings is None:
        if any(kind == "Settings" for kind, _ in desired.invalid):
            return checker.problems  # its errors are reported; the rest cannot be checked without it
        path = os.path.normpath(os.path.join(desired.root, "spec", "settings.yaml"))
        message = "the workspace has no Settings document"
        hint = "add spec/settings.yaml with kind: Settings (organization, public_url, senders, defaults)"
        checker.problems.append(Problem(path, 1, 1, "Settings", "", "", message, hint))
        return checker.problems
    check_settings(checker)
    check_fields(checker)
    for segment in desired.segments.values():
        check_segment(checker, segment)
    check_segment_cycles(checker)
    for campaign in desired.campaigns.values():
        check_campaign(checker, campaign)
    for workflow in desired.workflows.values():
        check_workflow(checker, workflow)
    check_workflow_loops(checker)
    for test in desired.workflow_tests.values():
        check_workflow_test(checker, test)
    check_templates(checker)
    check_field_reads(checker)
    check_pages(checker)
    check_confirmation(checker)
    check_languages(checker)
    return checker.problems
