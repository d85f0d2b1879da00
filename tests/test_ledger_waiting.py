"""Finding the next page of due rows costs the same after a million rows sent as at the first (migration
0016_ledger_waiting), on both engines (the `state_db` fixture): the page query reads the partial indexes of waiting
rows, in id order, instead of every row of the campaign or workflow step and a sort; and it still finds every
waiting row, in order, past the rows sent and those not due yet."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.check import validate_workspace
from reconciler.clock import iso
from reconciler.daemon import reconcile_once
from reconciler.imports import import_file
from reconciler.state import ledger
from reconciler.state.db import write
from reconciler.state.ledger import Source
from reconciler.state.portable import is_postgres
from reconciler.state.sharing import Reservation
from sending import workspace
from state_helpers import recorded_statements

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
AT = iso(NOW)
PEOPLE = 2_500
SENT = 1_000
"""The first rows of the campaign, marked sent: the history a page must not read again."""


def _port() -> int:
    """A port for the workspace's transport, which these tests never connect to."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _campaign(root: Path, db: Any) -> Source:
    """PEOPLE contacts on `news`, the campaign `hello` started, its first SENT rows sent and the one after them
    deferred until tomorrow: its source, with PEOPLE - SENT - 1 rows due."""
    workspace(root, _port())
    (root / "contacts.csv").write_text(
        "email,first_name\n" + "".join(f"p{i}@example.net,P{i}\n" for i in range(PEOPLE))
    )
    desired, problems = validate_workspace(root)
    assert not [p for p in problems if p.severity == "error"], problems
    import_file(db, desired, root / "contacts.csv", lists=["news"], consent_text="t", now=NOW, preconfirmed=True)
    result = reconcile_once(root, db, now=NOW)
    assert result.valid and result.started, result.problems
    first = _ids(db)[0]
    with write(db):
        db.conn.execute(
            "UPDATE ledger SET state = 'sent', attempts = 1, sent_at = ?, updated_at = ? WHERE id < ?",
            (AT, AT, first + SENT),
        )
        db.conn.execute(
            "UPDATE ledger SET state = 'deferred', attempts = 1, next_attempt_at = ? WHERE id = ?",
            (iso(NOW + timedelta(days=1)), first + SENT),
        )
    (source,) = ledger.due_sources(db, now=AT)
    assert source.due == PEOPLE - SENT - 1
    return source


def _ids(db: Any) -> list[int]:
    return [int(row_id) for (row_id,) in db.conn.execute("SELECT id FROM ledger ORDER BY id")]


def _pages(db: Any, source: Source, *, reserve: Reservation | None = None) -> list[list[int]]:
    pages, after = [], 0
    while rows := ledger.due_rows(db, source, now=AT, after_id=after, limit=64, reserve=reserve):
        pages.append([row.id for row in rows])
        after = rows[-1].id
    return pages


@pytest.mark.parametrize("reserved", [False, True], ids=["read", "reserved"])
def test_pages_find_every_waiting_row_in_order_past_those_sent(state_db: Any, tmp_path: Path, reserved: bool) -> None:
    source = _campaign(tmp_path, state_db)
    ids = _ids(state_db)
    reserve = Reservation("dispatcher-a", AT) if reserved else None

    pages = _pages(state_db, source, reserve=reserve)

    assert [row_id for page in pages for row_id in page] == ids[SENT + 1 :]  # not the sent ones, nor tomorrow's
    assert all(len(page) == 64 for page in pages[:-1])
    later = ledger.due_rows(state_db, source, now=iso(NOW + timedelta(days=2)), after_id=0, limit=1)
    assert [row.id for row in later] == [ids[SENT]]  # the deferred row, once it is due


def _plan(db: Any, sql: str, params: Any) -> str:
    """The plan of one statement as run, as text."""
    if is_postgres(db):
        db.conn.execute("ANALYZE ledger")
        return "\n".join(str(row[0]) for row in db.conn.execute("EXPLAIN " + sql, params))
    return "\n".join(str(row[-1]) for row in db.conn.execute("EXPLAIN QUERY PLAN " + sql))


def _page_plan(db: Any, source: Source, *, reserve: Reservation | None) -> str:
    seen, stop = recorded_statements(db)
    try:
        ledger.due_rows(db, source, now=AT, after_id=0, limit=64, reserve=reserve)
    finally:
        stop()
    (statement,) = [(sql, params) for sql, params in seen if "FROM ledger l" in sql]
    plan = _plan(db, *statement)
    if "CTE picked" in plan:  # a reserved page (PostgreSQL): how the rows are found, not how the 64 are returned
        plan = plan[plan.index("CTE picked") :].split("CTE mine")[0]
    return plan


@pytest.mark.parametrize("reserved", [False, True], ids=["read", "reserved"])
def test_a_campaign_page_reads_the_index_of_waiting_rows(state_db: Any, tmp_path: Path, reserved: bool) -> None:
    source = _campaign(tmp_path, state_db)
    reserve = Reservation("dispatcher-a", AT) if reserved else None

    plan = _page_plan(state_db, source, reserve=reserve)

    assert "ledger_waiting" in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # in id order from the index: no sort of the remainder (SQLite)
    assert "Sort" not in plan, plan  # (PostgreSQL)


def test_a_workflow_step_page_reads_the_index_of_its_waiting_rows(state_db: Any, tmp_path: Path) -> None:
    """A step's rows are one per run, found by their workflow: the step's page passes over every message the step
    ever sent without reading it, and finds its waiting rows in order."""
    campaign = _campaign(tmp_path, state_db)
    with write(state_db):  # the campaign's rows made into messages of step `s1` of workflow `welcome`, one per run
        state_db.conn.execute(
            "UPDATE ledger SET source_kind = 'workflow', source = 'run-' || id, workflow = 'welcome', stage = 's1'"
        )
    step = Source("workflow", "welcome", "s1", campaign.content, campaign.lists, campaign.due)

    assert [row_id for page in _pages(state_db, step) for row_id in page] == _ids(state_db)[SENT + 1 :]
    plan = _page_plan(state_db, step, reserve=None)
    assert "ledger_waiting_steps" in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
