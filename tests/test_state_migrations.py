"""A state database written by 0.3 opens with this version: its stored JSON is brought into the typed shapes, a
started campaign keeps sending, and planning the same files finds nothing to change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlite_utils import Database

from conftest import REPO, reconciler
from reconciler.state.schema import migrations

pytestmark = pytest.mark.sqlite_only("SQLite files of older versions, migrated in place")

OLD_SETTINGS = {
    "settings.timezone": "Europe/Warsaw",
    "settings.schedule_grace": "21600",
    "settings.public_url": "https://mail.kettleandcrow.example",
    "settings.signing_key_env": "RECONCILER_SECRET",
    "settings.transports": json.dumps({"outbox": {"type": "outbox", "path": ".state/outbox"}}),
    "settings.quiet_hours": "null",
    "settings.frequency_cap": "null",
    "settings.organization": json.dumps(
        {"name": "Old Name", "postal_address": "1 Old Street", "privacy_policy_url": None, "website": None}
    ),
    "settings.default_sender": json.dumps({"from": "Old <old@kettleandcrow.example>", "reply_to": None}),
    "settings.default_transport": "outbox",
    "settings.api_token_env": "RECONCILER_API_TOKEN",
    "last_error": json.dumps({"count": 1, "problems": ["campaigns/x.yaml:1:1: Campaign x: bad"]}),
    "last_error_revision": "abc123",
    "last_error_at": "2026-11-20T10:00:00Z",
}


def _old_database(path: Path) -> Database:
    """The schema of 0.3 (migrations up to 0005) with rows in the JSON shapes 0.3 wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = Database(path)
    migrations.apply(db, stop_before="0006_typed_records")
    db.table("meta").insert_all([{"key": k, "value": v} for k, v in OLD_SETTINGS.items()])
    db.table("lists").insert({"name": "newsletter", "spec": json.dumps({"name": "newsletter", "title": "The Letter"})})
    spec = {"name": "old-news", "audience": {"lists": ["newsletter"], "segments": ["espresso-people"]}}
    definitions = {"segments": {}, "fields": {}, "timezone": "Europe/Warsaw"}
    db.table("campaigns").insert(
        {
            "name": "old-news",
            "status": "draft",
            "reason": "Draft",
            "message": "draft",
            "path": "x.yaml",
            "spec": json.dumps(spec),
            "content": "{}",
            "content_hash": "0",
            "updated_at": "2026-11-20T10:00:00Z",
            "audience": json.dumps(definitions),
        }
    )
    return db


def test_a_0_3_state_database_is_migrated_to_the_typed_records(tmp_path: Path) -> None:
    db = _old_database(tmp_path / "state.db")
    migrations.apply(db)

    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    assert not [key for key in meta if key.startswith(("settings.", "last_error"))]
    settings = json.loads(meta["settings"])
    assert settings["organization"]["name"] == "Old Name" and settings["schedule_grace"] == "360m"
    assert settings["senders"]["default"]["from"] == "Old <old@kettleandcrow.example>"
    assert json.loads(meta["refused_revision"]) == {
        "revision": "abc123",
        "since": "2026-11-20T10:00:00Z",
        "count": 1,
        "problems": ["campaigns/x.yaml:1:1: Campaign x: bad"],
    }
    assert json.loads(db.execute("SELECT spec FROM lists").fetchone()[0])["kind"] == "List"
    audience = json.loads(db.execute("SELECT audience FROM campaigns").fetchone()[0])
    assert audience["lists"] == ["newsletter"] and audience["segments"] == ["espresso-people"]
    assert audience["definitions"]["timezone"] == "Europe/Warsaw"


def test_status_reads_a_migrated_database_and_a_new_apply_replaces_the_old_settings(tmp_path: Path) -> None:
    for folder in ("spec", "campaigns", "templates"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    _old_database(tmp_path / ".state" / "reconciler.db").close()

    status = json.loads(reconciler("status", "--format", "json", cwd=tmp_path).stdout)
    assert status["last_error"]["revision"] == "abc123"
    applied = reconciler("apply", "--now", "2026-11-24T12:00:00Z", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    again = reconciler("plan", "--now", "2026-11-24T12:01:00Z", cwd=tmp_path)
    assert again.returncode == 0 and "Plan: no changes." in again.stdout, again.stdout + again.stderr
    settings = json.loads(
        Database(tmp_path / ".state" / "reconciler.db")
        .execute("SELECT value FROM meta WHERE key = 'settings'")
        .fetchone()[0]
    )
    assert settings["organization"]["name"] == "Kettle & Crow Coffee Roasters"
    assert json.loads(reconciler("status", "--format", "json", cwd=tmp_path).stdout)["last_error"] is None


BIG_SPENDERS = """
---
kind: Segment
name: big-spenders
where:
  any:
    - {field: total_spend, gt: 100}
    - {event: purchase, sum: {property: amount, gte: 50}}
"""


def test_stored_json_that_is_not_valid_is_repaired_and_never_stops_planning_again(tmp_path: Path) -> None:
    import sqlite3

    for folder in ("spec", "campaigns", "templates"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    with (tmp_path / "spec/segments.yaml").open("a") as segments:
        segments.write(BIG_SPENDERS)
    path = tmp_path / ".state" / "reconciler.db"
    path.parent.mkdir()
    db = Database(path)
    migrations.apply(db, stop_before="0008_stored_json")  # what 0.3 could store through the API and imports
    contacts = [
        ("ok@example.com", '{"total_spend": 150}'),
        ("nan@example.com", '{"total_spend": NaN}'),
        ("repr@example.com", "{'total_spend': 1}"),
    ]
    for number, (email, fields) in enumerate(contacts):
        db.execute(
            "INSERT INTO contacts(email, email_hash, fields, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            [email, f"hash{number}", fields, "2026-11-01T00:00:00Z", "2026-11-01T00:00:00Z"],
        )
    for contact_id, properties in [(1, '{"amount": 60}'), (2, '{"amount": Infinity}'), (3, "garbage")]:
        db.execute(
            "INSERT INTO events(contact_id, type, occurred_at, properties) VALUES (?, 'purchase', ?, ?)",
            [contact_id, "2026-11-20T00:00:00Z", properties],
        )
    db.conn.commit()
    db.close()

    planned = reconciler("plan", "--now", "2026-11-24T12:00:00Z", cwd=tmp_path)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "big-spenders      1 member\n" in planned.stdout
    with sqlite3.connect(path) as conn:
        stored_fields = [json.loads(f) for (f,) in conn.execute("SELECT fields FROM contacts ORDER BY id")]
        stored_properties = [json.loads(p) for (p,) in conn.execute("SELECT properties FROM events ORDER BY id")]
        assert stored_fields == [{"total_spend": 150}, {"total_spend": None}, {}]
        assert stored_properties == [{"amount": 60}, {"amount": None}, {}]
        (detail,) = conn.execute("SELECT detail FROM audit WHERE action = 'repaired'").fetchone()
        assert "contact 3" in detail and "event 3" in detail
        with pytest.raises(sqlite3.IntegrityError, match="not valid JSON"):
            conn.execute("UPDATE events SET properties = '{\"a\": NaN}' WHERE id = 1")
