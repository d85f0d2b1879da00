"""The claim at the point of no return, on each engine: on PostgreSQL the usual claim is one statement (one round
trip, during which the dispatcher's event loop waits), and what stands in the way of a claim (an unsubscribe, a
suppression, a paused campaign, another's claim) is found out as before, with the previous outcome written once."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.check import validate_workspace
from reconciler.clock import iso
from reconciler.daemon import reconcile_once
from reconciler.imports import import_file
from reconciler.state import campaigns, ledger, subscribers
from reconciler.state.conditions import Reason
from reconciler.state.ledger import DueRow, Outcome, Source
from reconciler.state.suppressions import email_hash, suppress
from sending import workspace

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
AT = iso(NOW)


def _due(root: Path, db: Any, people: int) -> tuple[Source, list[DueRow]]:
    """`people` contacts on the list `news`, the workspace applied and its campaign started: its source and rows."""
    (root / "contacts.csv").write_text("email\n" + "".join(f"p{i}@example.net\n" for i in range(people)))
    desired, problems = validate_workspace(root)
    assert not [p for p in problems if p.severity == "error"], problems
    import_file(db, desired, root / "contacts.csv", lists=["news"], consent_text="t", now=NOW, preconfirmed=True)
    result = reconcile_once(root, db, now=NOW)
    assert result.valid and result.started, result.problems
    [source] = ledger.due_sources(db, now=AT)
    return source, ledger.due_rows(db, source, now=AT, after_id=0, limit=100)


def _claim(db: Any, row: DueRow, source: Source, previous: Outcome | None) -> str:
    return ledger.claim(
        db,
        row.id,
        source=source,
        dispatcher="d1",
        message_id=f"<{row.id}@x>",
        blocking=("bounced",),
        marketing=True,
        at=AT,
        previous=previous,
    )


def _sent(row: DueRow) -> Outcome:
    return Outcome(row.id, "sent", "250 ok", AT)


def _states(db: Any) -> dict[int, str]:
    return dict(db.conn.execute("SELECT id, state FROM ledger").fetchall())


@pytest.mark.postgresql
def test_a_claim_on_postgresql_is_one_statement_with_the_previous_outcome(tmp_path: Path, postgres_url: str) -> None:
    from reconciler.state.db import open_postgres

    db = open_postgres(postgres_url)
    try:
        source, (first, second) = _due(workspace(tmp_path, 25), db, 2)
        statements: list[str] = []
        execute = db.conn.execute

        def counted(sql: str, params: Any = None) -> Any:
            statements.append(sql)
            return execute(sql, params)

        db.conn.execute = counted  # type: ignore[method-assign]
        assert _claim(db, first, source, None) == "claimed"
        assert _claim(db, second, source, _sent(first)) == "claimed"
        assert len(statements) == 2, statements  # was BEGIN, outcome, campaign, row, claim, COMMIT each
        db.conn.execute = execute  # type: ignore[method-assign]
        assert _states(db) == {first.id: "sent", second.id: "sending"}
        claimed = db.conn.execute("SELECT claimed_by, attempts, reserved_by FROM ledger WHERE id = ?", (second.id,))
        assert claimed.fetchone() == ("d1", 1, None)
    finally:
        db.close()


def test_what_stands_in_the_way_of_a_claim_is_found_out_and_the_previous_outcome_written_once(
    tmp_path: Path, state_db: Any
) -> None:
    db = state_db
    source, rows = _due(workspace(tmp_path, 25), db, 5)
    claimed, unsubscribed, bounced, taken, late = rows
    target = subscribers.message_target(db, unsubscribed.id)
    assert target is not None
    subscribers.unsubscribe(db, target, at=AT, source="test", ip=None)
    suppress(db, email_hash(bounced.contact.email), "bounced", at=AT)

    assert _claim(db, claimed, source, None) == "claimed"
    assert _claim(db, unsubscribed, source, _sent(claimed)) == "skipped"
    assert _claim(db, bounced, source, None) == "skipped"
    assert _claim(db, claimed, source, None) == "taken"  # claimed already: no longer due
    campaigns.set_status(db, source.name, status="paused", reason=Reason.PAUSED, message="paused", at=AT)
    assert _claim(db, late, source, Outcome(taken.id, "sent", "250 ok", AT)) == "paused"

    assert _states(db) == {
        claimed.id: "sent",
        unsubscribed.id: "skipped",
        bounced.id: "skipped",
        taken.id: "sent",  # the previous outcome of the claim that found the campaign paused
        late.id: "queued",
    }
    skipped = dict(db.conn.execute("SELECT id, last_reply FROM ledger WHERE state = 'skipped'").fetchall())
    assert "unsubscribed" in skipped[unsubscribed.id] and "suppressed (bounced)" in skipped[bounced.id]
    attempts = Counter(dict(db.conn.execute("SELECT id, attempts FROM ledger").fetchall()))
    assert attempts[claimed.id] == 1 and attempts[late.id] == 0
