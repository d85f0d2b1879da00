"""Workflows that run: what starts a run, and each run's walk through its steps.

Each reconcile pass ends the runs of removed workflows, starts the runs that new facts trigger (subscriptions,
events, dates, segment entries), ends those whose exit event came, and advances every run that is due. Runs work
from their workflow's stored record (the last good revision), never from the files, and a paused workflow's runs
stay where they are.
"""

from __future__ import annotations

import logging
from datetime import datetime

from reconciler.clock import iso
from reconciler.state import workflows as runs
from reconciler.state.db import write
from reconciler.state.postgres import StateDatabase
from reconciler.workflow_runs.context import Pass, RunReport
from reconciler.workflow_runs.starts import from_dates, from_events, from_segments, from_subscriptions
from reconciler.workflow_runs.walk import advance_due

__all__ = ["RunReport", "run_workflows"]

log = logging.getLogger(__name__)


def run_workflows(db: StateDatabase, *, now: datetime) -> RunReport:
    """One pass of every workflow. Writes nothing when nothing happened (an idle daemon does not write)."""
    run_pass = Pass(db, now=now)
    if runs.has_removed_runs(db):
        with write(db):
            run_pass.report.finished["ended"] += runs.end_removed(db, at=iso(now))
    if not run_pass.stored:
        runs.forget_cursors(db)
        return run_pass.report
    from_subscriptions(run_pass)
    from_events(run_pass)
    from_dates(run_pass)
    from_segments(run_pass)
    advance_due(run_pass)
    if run_pass.report.busy:
        log.info("workflows: %s", run_pass.report.describe())
    return run_pass.report
