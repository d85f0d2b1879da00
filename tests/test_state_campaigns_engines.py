"""Campaigns on both engines (the `state_db` fixture: SQLite, then PostgreSQL), through the product's own paths on
the example workspace: an import, the plan's counts (lists, segments, audiences), apply and apply again, edits of
campaign files, the start that snapshots the audience into the ledger, and claims and outcomes of its rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.apply import apply_plan, observe_for
from reconciler.check import check
from reconciler.imports import import_file
from reconciler.load import load_workspace
from reconciler.plan import Plan, make_plan
from reconciler.samples import sample_csv
from reconciler.spec import DesiredState
from reconciler.start import start_due
from reconciler.state import campaigns, dispatchers, ledger, observe
from reconciler.state.campaigns import finish, skip_unsent
from reconciler.state.db import open_db, open_postgres, write
from reconciler.state.subscribers import message_target
from reconciler.state.suppressions import email_hash, suppress

NOW = datetime(2030, 11, 26, 12, 0, tzinfo=UTC)
AT = "2030-11-26T11:00:00Z"
GUJI = "guji-harvest-2030"


def _desired(root: Path) -> DesiredState:
    desired, problems = load_workspace(root)
    problems += check(desired)
    assert not [p for p in problems if p.severity == "error"], problems
    return desired


def _plan(root: Path, db: Any, now: datetime = NOW) -> Plan:
    desired = _desired(root)
    return make_plan(desired, observe_for(db, desired, now=now), now=now)


def _apply(root: Path, db: Any, now: datetime = NOW) -> Plan:
    plan = _plan(root, db, now)
    apply_plan(db, plan, _desired(root), now=now)
    return plan


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _people(example: Path, db: Any) -> int:
    """The example's 300 made-up contacts on newsletter and offers; three unsubscribed from newsletter (by an
    import's status column) and two bounced. Returns how many contacts there are."""
    (example / "contacts.csv").write_text("".join(sample_csv(300, seed=1)))
    desired = _desired(example)
    import_file(
        db,
        desired,
        example / "contacts.csv",
        lists=["newsletter", "offers"],
        consent_text="t",
        now=NOW,
        preconfirmed=True,
    )
    emails = [row[0] for row in db.conn.execute("SELECT email FROM contacts ORDER BY id LIMIT 5")]
    (example / "left.csv").write_text("email,status\n" + "".join(f"{e},unsubscribed\n" for e in emails[:3]))
    import_file(db, desired, example / "left.csv", lists=["newsletter"], consent_text=None, now=NOW, preconfirmed=True)
    with write(db):
        for email in emails[3:5]:
            suppress(db, email_hash(email), "bounced", at=AT)
    return int(db.conn.execute("SELECT count(*) FROM contacts").fetchone()[0])


@pytest.fixture
def people(example: Path, state_db: Any) -> int:
    return _people(example, state_db)


def test_the_plan_counts_lists_segments_and_audiences(example: Path, state_db: Any, people: int) -> None:
    plan = _plan(example, state_db)
    guji = plan.audiences[GUJI]  # newsletter only
    assert (guji.recipients, dict(guji.excluded)) == (people - 5, {"unsubscribed": 3, "bounced": 2})
    friday = plan.audiences["black-friday-2030"]  # offers or newsletter: the three are still on offers
    assert (friday.recipients, dict(friday.excluded)) == (people - 2, {"bounced": 2})
    assert set(plan.segment_counts) >= {"espresso-people"} and plan.segment_counts["espresso-people"] > 0


def test_apply_then_apply_again_changes_nothing_and_edits_apply(example: Path, state_db: Any, people: int) -> None:
    assert _apply(example, state_db).has_changes
    assert not _apply(example, state_db, NOW + timedelta(minutes=5)).has_changes
    friday = example / "campaigns" / "black-friday-2030.yaml"
    _edit(friday, "send_at: 2030-11-29T08:00:00+01:00", "send_at: 2030-11-29T09:00:00+01:00")
    plan = _apply(example, state_db)
    assert [(a.op, a.changes) for a in plan.actions if a.name == "black-friday-2030"] == [("update", ("send_at",))]
    assert observe(state_db).campaigns["black-friday-2030"].start_at == "2030-11-29T08:00:00Z"
    _edit(friday, "status: scheduled", "status: paused")
    assert {a.name: a.op for a in _apply(example, state_db).actions} == {"black-friday-2030": "pause"}
    (example / "campaigns" / "holiday-gift-guide-2030.yaml").unlink()
    assert {a.name: a.op for a in _apply(example, state_db).actions} == {"holiday-gift-guide-2030": "remove"}
    record = observe(state_db).campaigns["holiday-gift-guide-2030"]
    assert (record.status, record.reason, record.removed_at is not None) == ("cancelled", "Removed", True)
    assert not _apply(example, state_db).has_changes


def _start_guji(example: Path, db: Any) -> None:
    _edit(example / "campaigns" / f"{GUJI}.yaml", "status: draft", "status: scheduled")
    _apply(example, db)
    assert start_due(db, now=NOW) == [GUJI]


def test_the_start_snapshots_the_audience_into_the_ledger(example: Path, state_db: Any, people: int) -> None:
    _start_guji(example, state_db)
    record = observe(state_db).campaigns[GUJI]
    assert record.status == "sending" and record.recipients == people - 5 == record.progress["queued"]
    assert start_due(state_db, now=NOW) == []
    assert skip_unsent(state_db, GUJI, why="cancelled", at=AT) == people - 5


def test_rows_are_claimed_once_and_their_outcomes_finish_the_campaign(
    example: Path, state_db: Any, people: int
) -> None:
    _start_guji(example, state_db)
    now = "2030-11-26T12:00:00Z"
    [source] = ledger.due_sources(state_db, now=now)
    assert (source.name, source.stage, source.due, source.lists) == (GUJI, "", people - 5, ("newsletter",))
    rows = ledger.due_rows(state_db, source, now=now, after_id=0, limit=1000)
    assert len(rows) == people - 5 and rows[0].contact.email
    first, second = rows[0], rows[1]
    target = message_target(state_db, first.id)  # what its unsubscribe link leaves
    assert target is not None and (target.source, target.lists) == (GUJI, ("newsletter",))
    claim: dict[str, Any] = {"source": source, "dispatcher": "d1", "blocking": ("bounced", "unsubscribed"), "at": now}
    claim["marketing"] = True
    assert ledger.claim(state_db, first.id, message_id="<m1@x>", **claim) == "claimed"
    assert ledger.claim(state_db, first.id, message_id="<m1@x>", **claim) == "taken"
    with write(state_db):
        suppress(state_db, email_hash(second.contact.email), "bounced", at=now)
    sent = ledger.Outcome(first.id, "sent", "250 ok", now)
    assert ledger.claim(state_db, second.id, message_id="<m2@x>", previous=sent, **claim) == "skipped"
    bounced = ledger.Outcome(rows[2].id, "failed", "550 5.1.1 no such user", now, suppress=True)
    assert ledger.claim(state_db, rows[2].id, message_id="<m3@x>", **claim) == "claimed"
    ledger.record(state_db, bounced, source=source)
    progress = observe(state_db).campaigns[GUJI].progress
    assert (progress["sent"], progress["skipped"], progress["failed"]) == (1, 1, 1)
    assert ledger.next_due(state_db) == now
    assert finish(state_db, GUJI, at=now) is None  # rows still queued
    for row in rows[3:]:
        assert ledger.claim(state_db, row.id, message_id=f"<{row.id}@x>", **claim) == "claimed"
        ledger.record(state_db, ledger.Outcome(row.id, "sent", "250 ok", now), source=source)
    counts = finish(state_db, GUJI, at=now)
    assert counts == {"sent": people - 7, "skipped": 1, "failed": 1}
    assert observe(state_db).campaigns[GUJI].status == "sent"


@pytest.mark.postgresql
def test_both_engines_count_every_segment_and_audience_alike(example: Path, postgres_url: str) -> None:
    """The example's plan on PostgreSQL counts what it counts on SQLite, segment by segment."""
    engines: list[Any] = [open_db(example / "state.db"), open_postgres(postgres_url)]
    try:
        for db in engines:
            _people(example, db)
        plans = [_plan(example, db) for db in engines]
        assert plans[0].audiences == plans[1].audiences
        assert plans[0].segment_counts == plans[1].segment_counts
    finally:
        for db in engines:
            db.close()


def test_rows_a_stopped_dispatcher_left_sending_are_settled(example: Path, state_db: Any, people: int) -> None:
    _start_guji(example, state_db)
    now = "2030-11-26T12:00:00Z"
    [source] = ledger.due_sources(state_db, now=now)
    rows = ledger.due_rows(state_db, source, now=now, after_id=0, limit=2)
    dispatchers.register(state_db, "d1", host="h", pid=1, at=now)
    dispatchers.register(state_db, "d2", host="h", pid=2, at=now)
    for row, ident in zip(rows, ("d1", "d2"), strict=True):
        claimed = ledger.claim(
            state_db,
            row.id,
            source=source,
            dispatcher=ident,
            message_id=f"<{row.id}@x>",
            blocking=(),
            at=now,
            marketing=True,
        )
        assert claimed == "claimed"
    found = dispatchers.interrupted(state_db, host="h", alive=lambda pid: pid == 2, stale_before=AT, own="d3")
    assert ([row.row_id for row in found.rows], found.gone) == ([rows[0].id], {"d1"})
    assert found.rows[0].transport
    dispatchers.settle_interrupted(state_db, uncertain=[rows[0].id], resend=[], forget=found.gone, at=now)
    progress = observe(state_db).campaigns[GUJI].progress
    assert (progress["uncertain"], progress["sending"]) == (1, 1)
    assert [row[0] for row in state_db.conn.execute("SELECT id FROM dispatchers ORDER BY id")] == ["d2"]


def test_a_stage_two_dispatchers_start_at_once_is_started_once(example: Path, state_db: Any, people: int) -> None:
    """Every daemon's dispatcher starts due stages; the second to get there finds it started (no duplicate row)."""
    _start_guji(example, state_db)
    [row] = state_db.conn.execute("SELECT id FROM ledger ORDER BY id LIMIT 1").fetchall()
    state_db.conn.execute("UPDATE ledger SET state = 'sent' WHERE id = ?", (row[0],))
    stage: dict[str, Any] = {"only": None, "blocking": (), "content_hash": "h", "revision": "r", "at": AT}
    assert campaigns.start_stage(state_db, GUJI, "reminder", **stage) == 1
    assert campaigns.start_stage(state_db, GUJI, "reminder", **stage) is None
    assert campaigns.started_stages(state_db, GUJI) == {"reminder": AT}


class _Meanwhile:
    """A connection on which `then` runs (another process's work) right after the first statement."""

    def __init__(self, db: Any, then: Any) -> None:
        self.db, self.then, self.statements = db, then, 0

    def execute(self, sql: str, params: Any = ()) -> Any:
        cursor = self.db.conn.execute(sql, params)
        self.statements += 1
        if self.statements == 1:
            cursor = _Read(cursor.fetchall())
            self.then()
        return cursor


class _Read(list[Any]):
    def fetchall(self) -> list[Any]:
        return list(self)


def test_recovery_never_takes_a_row_another_dispatcher_claims_while_it_looks(
    example: Path, state_db: Any, people: int
) -> None:
    """Several daemons recover while the others send: a dispatcher that registers and claims between the recovery's
    reads is not taken for gone (its row on the wire is not made uncertain)."""
    _start_guji(example, state_db)
    now = "2030-11-26T12:00:00Z"
    [source] = ledger.due_sources(state_db, now=now)
    [row] = ledger.due_rows(state_db, source, now=now, after_id=0, limit=1)

    def another_dispatcher_starts_sending() -> None:
        dispatchers.register(state_db, "d2", host="h", pid=2, at=now)
        claimed = ledger.claim(
            state_db, row.id, source=source, dispatcher="d2", message_id="<m@x>", blocking=(), at=now, marketing=True
        )
        assert claimed == "claimed"

    looking = type("Db", (), {"conn": _Meanwhile(state_db, another_dispatcher_starts_sending)})()
    found = dispatchers.interrupted(looking, host="h", alive=lambda pid: True, stale_before=AT, own="d1")
    assert (found.rows, found.gone) == ([], set())
