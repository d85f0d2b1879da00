"""plan, apply and tick on the example workspace, against a real state database: the documented actions."""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import reconciler
from reconciler.apply import apply_plan, observe_for
from reconciler.check import check
from reconciler.daemon import reconcile_once
from reconciler.imports import import_file
from reconciler.load import load_workspace
from reconciler.plan import Plan, as_json, as_markdown, as_text, make_plan
from reconciler.samples import sample_csv
from reconciler.spec import DesiredState
from reconciler.start import start_due
from reconciler.state import observe
from reconciler.state.observe import _histogram_by_names, audience_histogram
from reconciler.state.postgres import StateDatabase
from state_helpers import dump, open_state, recorded_statements, set_status, suppress_address

NOW = datetime(2030, 11, 26, 12, 0, tzinfo=UTC)


def _desired(root: Path) -> DesiredState:
    desired, problems = load_workspace(root)
    problems += check(desired)
    assert not [p for p in problems if p.severity == "error"], problems
    return desired


def _plan(root: Path, db: StateDatabase, now: datetime = NOW, *, confirm: Collection[str] = ()) -> Plan:
    desired = _desired(root)
    return make_plan(desired, observe_for(db, desired, now=now), now=now, confirm=confirm)


def _apply(root: Path, db: StateDatabase, now: datetime = NOW, *, confirm: Collection[str] = ()) -> Plan:
    plan = _plan(root, db, now, confirm=confirm)
    apply_plan(db, plan, _desired(root), now=now)
    return plan


def _ops(plan: Plan, kind: str = "Campaign") -> dict[str, str]:
    return {a.name: a.op for a in plan.actions if a.kind == kind}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture
def db(example: Path) -> StateDatabase:
    """The example's state with 300 made-up contacts on newsletter and offers, a few of them opted out."""
    (example / "contacts.csv").write_text("".join(sample_csv(300, seed=1)))
    database = open_state(example)
    import_file(
        database,
        _desired(example),
        example / "contacts.csv",
        lists=["newsletter", "offers"],
        consent_text="test",
        now=NOW,
        preconfirmed=True,
    )
    emails = [row[0] for row in database.conn.execute("SELECT email FROM contacts ORDER BY id LIMIT 8")]
    for email in emails[:3]:
        set_status(database, email, "newsletter", "unsubscribed", at="2030-11-26T11:00:00Z")
    for email in emails[3:5]:
        suppress_address(database, email, "bounced", at="2030-11-26T11:00:00Z")
    return database


def test_plan_of_the_example_on_an_empty_state_lists_each_campaign_with_its_count(example: Path) -> None:
    db = open_state(example)
    plan = _plan(example, db)
    assert _ops(plan) == {
        "black-friday-2030": "schedule",
        "guji-harvest-2030": "create",
        "holiday-gift-guide-2030": "schedule",
    }
    assert {name: count.recipients for name, count in plan.audiences.items()} == {
        "black-friday-2030": 0,
        "guji-harvest-2030": 0,
        "holiday-gift-guide-2030": 0,
    }
    text = as_text(plan)
    for name in plan.audiences:
        assert re.search(rf"\+ Campaign {name} .*\n.*→ 0 recipients", text), text
    assert "Plan: 17 to create, 2 to schedule." in text
    assert "Segments:\n  espresso-people   0 members\n" in text


def test_counts_exclude_unsubscribed_and_bounced_contacts(example: Path, db: StateDatabase) -> None:
    plan = _plan(example, db)
    total = db.conn.execute("SELECT count(*) FROM contacts").fetchone()[0]
    guji = plan.audiences["guji-harvest-2030"]  # newsletter only
    assert (guji.recipients, dict(guji.excluded)) == (total - 5, {"unsubscribed": 3, "bounced": 2})
    friday = plan.audiences["black-friday-2030"]  # offers or newsletter: the three are still on offers
    assert (friday.recipients, dict(friday.excluded)) == (total - 2, {"bounced": 2})
    assert f"→ {total - 5:,} recipients; excluded: unsubscribed 3, bounced 2" in as_text(plan)


def test_applying_twice_changes_nothing_the_second_time(example: Path, db: StateDatabase) -> None:
    first = _apply(example, db)
    assert first.has_changes
    before = dump(example)
    second = _apply(example, db, NOW + timedelta(minutes=5))
    assert not second.has_changes
    assert "No changes: the state matches the workspace." in as_text(second)
    assert dump(example) == before


def test_the_plan_formats_carry_the_same_actions(example: Path, db: StateDatabase) -> None:
    plan = _plan(example, db)
    data = json.loads(as_json(plan))
    assert [(a["kind"], a["name"], a["op"]) for a in data["actions"]] == [(a.kind, a.name, a.op) for a in plan.actions]
    assert data["audiences"]["guji-harvest-2030"]["excluded"] == {"unsubscribed": 3, "bounced": 2}
    markdown = as_markdown(plan)
    assert "| + | `Campaign black-friday-2030` | schedule for Fri 2030-11-29 08:00 +01:00 (07:00 UTC) |" in markdown


def test_editing_pausing_cancelling_and_deleting_campaign_files(example: Path, db: StateDatabase) -> None:
    _apply(example, db)
    friday = example / "campaigns" / "black-friday-2030.yaml"
    _edit(friday, "25% off everything until Sunday", "30% off everything until Sunday")
    _edit(friday, "send_at: 2030-11-29T08:00:00+01:00", "send_at: 2030-11-29T09:00:00+01:00")
    plan = _apply(example, db)
    [action] = [a for a in plan.actions if a.name == "black-friday-2030"]
    assert (action.op, action.changes) == ("update", ("send_at", "subject"))
    assert observe(db).campaigns["black-friday-2030"].start_at == "2030-11-29T08:00:00Z"

    _edit(friday, "status: scheduled", "status: paused")
    assert _ops(_apply(example, db)) == {"black-friday-2030": "pause"}
    _edit(friday, "status: paused", "status: cancelled")
    assert _ops(_apply(example, db)) == {"black-friday-2030": "cancel"}
    assert observe(db).campaigns["black-friday-2030"].status == "cancelled"

    (example / "campaigns" / "holiday-gift-guide-2030.yaml").unlink()
    plan = _apply(example, db)
    assert _ops(plan) == {"holiday-gift-guide-2030": "remove"}
    record = observe(db).campaigns["holiday-gift-guide-2030"]
    assert (record.status, record.reason, record.removed_at is not None) == ("cancelled", "Removed", True)
    assert not _apply(example, db).has_changes  # removing is done once; the record stays

    _edit(example / "campaigns" / "guji-harvest-2030.yaml", "status: draft", "status: scheduled")
    plan = _apply(example, db)
    assert _ops(plan) == {"guji-harvest-2030": "schedule"}
    assert "schedule for now" in as_text(plan)


def test_a_started_campaign_is_frozen_but_can_be_paused_resumed_and_cancelled(example: Path, db: StateDatabase) -> None:
    guji = example / "campaigns" / "guji-harvest-2030.yaml"
    _edit(guji, "status: draft", "status: scheduled")
    _apply(example, db)
    assert start_due(db, now=NOW) == ["guji-harvest-2030"]
    record = observe(db).campaigns["guji-harvest-2030"]
    total = db.conn.execute("SELECT count(*) FROM contacts").fetchone()[0]
    assert record.status == "sending" and record.recipients == total - 5 == record.progress["queued"]

    _edit(guji, "The Guji harvest has landed", "The Guji harvest is here")
    _edit(guji, "status: scheduled", "status: paused")
    plan = _apply(example, db)
    [error] = plan.errors
    assert (error.kind, error.name, error.field, error.line) == ("Campaign", "guji-harvest-2030", "subject", 5)
    assert "its content is frozen, but subject changed" in error.message
    assert _ops(plan) == {"guji-harvest-2030": "pause"}  # pause always applies
    record = observe(db).campaigns["guji-harvest-2030"]
    assert (record.status, record.ready, record.reason) == ("paused", False, "Stalled")
    assert json.loads(
        db.conn.execute("SELECT content FROM campaigns WHERE name = ?", ("guji-harvest-2030",)).fetchone()[0]
    )["subject"].startswith("The Guji harvest has landed")  # the content that goes out is still the one that started

    _edit(guji, "The Guji harvest is here", "The Guji harvest has landed")
    assert not _apply(example, db).has_changes
    record = observe(db).campaigns["guji-harvest-2030"]
    assert (record.status, record.ready, record.reason) == ("paused", True, "Paused")  # reverted: not stalled
    _edit(guji, "status: paused", "status: scheduled")
    plan = _apply(example, db)
    assert _ops(plan) == {"guji-harvest-2030": "resume"} and not plan.errors
    assert observe(db).campaigns["guji-harvest-2030"].status == "sending"
    _edit(guji, "status: scheduled", "status: cancelled")
    _apply(example, db)
    record = observe(db).campaigns["guji-harvest-2030"]
    assert record.status == "cancelled" and record.progress == {"skipped": total - 5}

    _edit(guji, "status: cancelled", "status: scheduled")  # cancelled while sending is history: not resumed
    plan = _apply(example, db)
    [warning] = plan.problems
    assert (warning.severity, warning.field) == ("warning", "status") and not plan.actions
    assert warning.message.startswith("not applied: cancelled while sending (started on 2030-11-26T12:00:00Z)")
    assert observe(db).campaigns["guji-harvest-2030"].status == "cancelled"


def test_a_schedule_past_the_grace_period_waits_for_confirmation(example: Path, db: StateDatabase) -> None:
    friday = example / "campaigns" / "black-friday-2030.yaml"
    _edit(friday, "  exclude: {segments: [recent-buyers]}\n", "")
    late = datetime(2030, 11, 30, 12, 0, tzinfo=UTC)  # a day after send_at
    plan = _apply(example, db, late)
    assert any("send_at is 1 day in the past" in p.message and p.severity == "warning" for p in plan.problems)
    assert start_due(db, now=late) == []
    record = observe(db).campaigns["black-friday-2030"]
    assert (record.ready, record.reason) == (False, "LateSchedule")
    assert "reconciler apply --confirm black-friday-2030" in record.message

    plan = _apply(example, db, late, confirm=["black-friday-2030"])
    assert _ops(plan) == {"black-friday-2030": "confirm"}
    assert start_due(db, now=late) == ["black-friday-2030"]


def test_a_schedule_within_the_grace_period_starts_and_local_times_are_per_contact(
    example: Path, db: StateDatabase
) -> None:
    gift = example / "campaigns" / "holiday-gift-guide-2030.yaml"
    _edit(gift, "  exclude: {segments: [recent-buyers]}\n", "")
    _apply(example, db)
    assert start_due(db, now=datetime(2030, 12, 15, 18, 0, tzinfo=UTC)) == []  # 09:00 in Kiribati is 19:00 UTC
    assert start_due(db, now=datetime(2030, 12, 15, 19, 0, tzinfo=UTC)) == ["holiday-gift-guide-2030"]
    due = dict(
        db.conn.execute(
            "SELECT c.timezone, min(l.due_at) FROM ledger l JOIN contacts c ON c.id = l.contact_id GROUP BY 1"
        ).fetchall()
    )
    assert due["Asia/Tokyo"] == "2030-12-16T00:00:00Z"
    assert due["Europe/Warsaw"] == "2030-12-16T08:00:00Z"
    assert due["America/Los_Angeles"] == "2030-12-16T17:00:00Z"


def test_segments_are_counted_in_the_plan_and_evaluated_when_the_campaign_starts(
    example: Path, db: StateDatabase
) -> None:
    buyers = [row[0] for row in db.conn.execute("SELECT id FROM contacts ORDER BY id DESC LIMIT 4")]
    for days_ago, contact in zip((1, 5, 13, 20), buyers, strict=True):  # recent-buyers: a purchase within 14 days
        db.conn.execute(
            "INSERT INTO events (contact_id, type, occurred_at) VALUES (?, 'purchase', ?)",
            (contact, f"2030-11-{29 - days_ago:02d}T06:00:00Z"),
        )
    total = db.conn.execute("SELECT count(*) FROM contacts").fetchone()[0]
    start = datetime(2030, 11, 29, 7, 0, tzinfo=UTC)
    plan = _apply(example, db, start - timedelta(hours=1))
    friday = plan.audiences["black-friday-2030"]
    assert (friday.recipients, dict(friday.excluded)) == (total - 2 - 3, {"bounced": 2, "excluded segment": 3})
    assert f"→ {total - 5:,} recipients; excluded: excluded segment 3, bounced 2" in as_text(plan)
    assert "recent-buyers     3 members" in as_text(plan)

    assert start_due(db, now=start) == ["black-friday-2030"]
    queued = {row[0] for row in db.conn.execute("SELECT contact_id FROM ledger WHERE source = 'black-friday-2030'")}
    assert len(queued) == friday.recipients
    assert set(buyers[:3]).isdisjoint(queued) and buyers[3] in queued  # 20 days ago is not recent


def test_a_changed_segment_updates_a_scheduled_campaign_but_not_a_started_one(example: Path, db: StateDatabase) -> None:
    _apply(example, db)
    segments = example / "spec" / "segments.yaml"
    _edit(segments, "within: 14d", "within: 10d")
    plan = _apply(example, db)
    assert {a.name: a.changes for a in plan.actions} == {
        "black-friday-2030": ("segment definitions",),
        "holiday-gift-guide-2030": ("segment definitions",),
    }
    assert start_due(db, now=datetime(2030, 11, 29, 7, 0, tzinfo=UTC)) == ["black-friday-2030"]
    _edit(segments, "within: 10d", "within: 7d")
    plan = _apply(example, db, datetime(2030, 11, 29, 8, 0, tzinfo=UTC))
    assert [a.name for a in plan.actions] == ["holiday-gift-guide-2030"] and not plan.errors


def test_a_revision_with_errors_leaves_the_last_good_one_in_force(example: Path, db: StateDatabase) -> None:
    guji = example / "campaigns" / "guji-harvest-2030.yaml"
    _edit(guji, "status: draft", "status: scheduled")
    _edit(guji, "\nsend_at: now", "\nsend_at: 2030-11-27T10:00:00Z")
    good = reconcile_once(example, db, now=NOW)
    assert good.valid and good.applied and good.applied.actions
    _edit(guji, "send_at: 2030-11-27T10:00:00Z", "send_at: 2030-11-27T10:00:00Z\nsubjcet: typo")
    bad = reconcile_once(example, db, now=NOW + timedelta(minutes=1))
    assert not bad.valid and bad.plan is None
    started = reconcile_once(example, db, now=datetime(2030, 11, 27, 10, 0, 1, tzinfo=UTC))
    assert started.started == ["guji-harvest-2030"]  # the good revision's schedule still holds
    status = reconciler("status", "--format", "json", cwd=example)
    report = json.loads(status.stdout)
    assert report["revision"]["applied"] == good.revision
    assert report["last_error"]["revision"] == bad.revision
    assert any("subjcet" in line for line in report["last_error"]["problems"])
    text = reconciler("status", cwd=example).stdout
    assert f"Last error: revision {bad.revision} has 1 error(s)" in text
    assert "guji-harvest-2030        sending" in text


def test_plan_exit_codes_follow_terraform(example: Path) -> None:
    changes = reconciler("plan", "--detailed-exitcode", cwd=example)
    assert changes.returncode == 2, changes.stderr
    assert not (example / ".state").exists()  # plan never creates the state
    assert reconciler("plan", cwd=example).returncode == 0
    applied = reconciler("apply", "--now", "2030-11-26T12:00:00Z", cwd=example)
    assert applied.returncode == 0 and "Applied 19 changes" in applied.stdout
    same = reconciler("plan", "--detailed-exitcode", "--now", "2030-11-26T12:00:00Z", cwd=example)
    assert same.returncode == 0, same.stdout
    _edit(example / "campaigns" / "guji-harvest-2030.yaml", "status: draft", "status: sideways")
    broken = reconciler("plan", "--detailed-exitcode", cwd=example)
    assert broken.returncode == 1 and "guji-harvest-2030.yaml:" in broken.stdout


def test_tick_applies_and_starts_what_is_due(example: Path) -> None:
    (example / "c.csv").write_text("email\nann@example.com\nbob@example.com\n")
    assert (
        reconciler("contacts", "import", "c.csv", "--list", "newsletter", "--preconfirmed", cwd=example).returncode == 0
    )
    _edit(example / "campaigns" / "guji-harvest-2030.yaml", "status: draft", "status: scheduled")
    result = reconciler("tick", "--now", "2030-11-26T12:00:00Z", cwd=example)
    assert result.returncode == 0, result.stderr
    assert "Campaign guji-harvest-2030: started" in result.stdout
    again = reconciler("tick", "--now", "2030-11-26T12:01:00Z", cwd=example)
    assert "Nothing to do." in again.stdout
    assert "2 recipients" in reconciler("status", cwd=example).stdout


def test_the_fast_signature_count_agrees_with_the_plain_one(db: StateDatabase) -> None:
    suppress_address(
        db, "nobody@example.com", "complained", at="2030-11-26T11:00:00Z"
    )  # a suppression without a contact
    email = db.conn.execute("SELECT email FROM contacts ORDER BY id LIMIT 1 OFFSET 9").fetchone()[0]
    set_status(db, email, "customers", "pending", at="2030-11-26T11:00:00Z")
    assert audience_histogram(db) == _histogram_by_names(db)


def test_two_ticks_at_once_start_a_campaign_once(example: Path) -> None:
    (example / "c.csv").write_text("email\n" + "".join(f"p{i}@example.com\n" for i in range(200)))
    assert (
        reconciler("contacts", "import", "c.csv", "--list", "newsletter", "--preconfirmed", cwd=example).returncode == 0
    )
    _edit(example / "campaigns" / "guji-harvest-2030.yaml", "status: draft", "status: scheduled")
    with ThreadPoolExecutor(3) as pool:  # three processes started together
        ticks = list(pool.map(lambda _: reconciler("tick", "--now", "2030-11-26T12:00:00Z", cwd=example), range(3)))
    assert [tick.returncode for tick in ticks] == [0, 0, 0], [tick.stdout + tick.stderr for tick in ticks]
    assert sum("guji-harvest-2030: started" in tick.stdout for tick in ticks) == 1
    db = open_state(example)
    assert db.conn.execute("SELECT count(*), count(DISTINCT contact_id) FROM ledger").fetchone() == (200, 200)
    assert db.conn.execute("SELECT count(*) FROM revisions").fetchone()[0] == 1


def test_the_plan_shows_segment_sizes_and_the_change_since_the_last_apply(example: Path, db: StateDatabase) -> None:
    _apply(example, db)
    before = _plan(example, db).segment_counts["espresso-people"]
    (example / "more.csv").write_text("email,brew_method\nnew1@example.com,espresso\nnew2@example.com,moka\n")
    import_file(
        db, _desired(example), example / "more.csv", lists=["newsletter"], consent_text=None, now=NOW, preconfirmed=True
    )
    plan = _plan(example, db)
    assert plan.segment_counts["espresso-people"] == before + 2
    text = as_text(plan)
    assert f"espresso-people   {before + 2:,} members (+2 since the last apply)" in text
    total = plan.audiences["guji-harvest-2030"].recipients
    assert (
        f"  guji-harvest-2030        → {total:,} recipients; excluded: unsubscribed 3, bounced 2 (+2 since the "
        "last apply)" in text
    )


def test_a_second_apply_shows_counts_it_did_not_make_as_not_counted(example: Path) -> None:
    (example / "c.csv").write_text("email,brew_method\nann@example.com,espresso\nbob@example.com,\n")
    imported = reconciler("contacts", "import", "c.csv", "--list", "newsletter", "--preconfirmed", cwd=example)
    assert imported.returncode == 0, imported.stderr
    assert reconciler("apply", "--now", "2030-11-26T12:00:00Z", cwd=example).returncode == 0
    again = reconciler("apply", "--now", "2030-11-26T12:00:00Z", cwd=example)
    assert again.returncode == 0, again.stderr
    friday = next(line for line in again.stdout.splitlines() if "black-friday-2030" in line)
    assert "not counted" in friday and "exclude segment recent-buyers" in friday, again.stdout
    assert "→ 0 recipients" not in again.stdout and "since the last apply" not in again.stdout, again.stdout
    planned = reconciler("plan", "--now", "2030-11-26T12:00:00Z", "--format", "json", cwd=example)
    audience = json.loads(planned.stdout)["audiences"]["black-friday-2030"]
    assert (audience["recipients"], audience["not_counted"]) == (2, []), planned.stdout


def test_a_daemon_pass_scans_the_memberships_only_for_a_campaign_counted_from_them(
    example: Path, db: StateDatabase
) -> None:
    """The list-membership histogram is a scan of every subscription (seconds at a million contacts): a daemon's
    pass reads it when a campaign whose audience is lists alone has an action, not on every pass."""

    def daemon_pass() -> tuple[Plan, bool]:
        seen, stop = recorded_statements(db)
        try:
            result = reconcile_once(example, db, now=NOW)
        finally:
            stop()
        scanned = any("FROM subscriptions" in sql and "GROUP BY contact_id" in sql for sql, _ in seen)
        assert result.plan is not None, result.problems
        return result.plan, scanned

    first, scanned = daemon_pass()
    assert _ops(first)["guji-harvest-2030"] == "create" and scanned  # lists alone: counted from the histogram
    assert first.audiences["guji-harvest-2030"].counted == 292  # 300 on newsletter, 3 unsubscribed, 2 bounced
    planned = _plan(example, db).audiences  # what `plan` counts, with every scan read
    assert first.audiences["black-friday-2030"] == planned["black-friday-2030"]  # segments: from the histogram too
    assert planned["black-friday-2030"].excluded == {"bounced": 2}
    unchanged, scanned = daemon_pass()
    assert not unchanged.actions and not scanned
    assert unchanged.audiences["guji-harvest-2030"].counted is None  # not counted, never shown as 0
    _edit(example / "campaigns" / "guji-harvest-2030.yaml", "status: draft", "status: paused")
    edited, scanned = daemon_pass()
    assert _ops(edited)["guji-harvest-2030"] == "pause" and scanned
    assert edited.audiences["guji-harvest-2030"].counted == first.audiences["guji-harvest-2030"].counted
