"""Records of lists, fields and workflows as applied, and of the revisions themselves."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlite_utils import Database

from reconciler.state.db import set_meta


def upsert_list(db: Database, name: str, spec: Mapping[str, Any]) -> None:
    db.conn.execute(
        "INSERT INTO lists(name, spec) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, removed_at = NULL",
        (name, json.dumps(spec)),
    )


def remove_list(db: Database, name: str, *, at: str) -> None:
    db.conn.execute("UPDATE lists SET removed_at = ? WHERE name = ?", (at, name))


def upsert_field(db: Database, name: str, type_: str) -> None:
    db.conn.execute(
        "INSERT INTO fields(name, type) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET type = excluded.type, removed_at = NULL",
        (name, type_),
    )


def remove_field(db: Database, name: str, *, at: str) -> None:
    db.conn.execute("UPDATE fields SET removed_at = ? WHERE name = ?", (at, name))


def upsert_workflow(db: Database, name: str, spec: Mapping[str, Any], content_hash: str) -> None:
    db.conn.execute(
        "INSERT INTO workflows(name, spec, content_hash) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
        "spec = excluded.spec, content_hash = excluded.content_hash, removed_at = NULL",
        (name, json.dumps(spec), content_hash),
    )


def remove_workflow(db: Database, name: str, *, at: str) -> None:
    db.conn.execute("UPDATE workflows SET removed_at = ? WHERE name = ?", (at, name))


def record_revision(db: Database, revision: str, *, git_commit: str | None, at: str, actions: int) -> None:
    db.conn.execute(
        "INSERT INTO revisions(revision, git_commit, applied_at, actions) VALUES (?, ?, ?, ?)",
        (revision, git_commit, at, actions),
    )
    set_meta(db, "last_applied_revision", revision)
    set_meta(db, "last_applied_commit", git_commit or "")
    set_meta(db, "last_applied_at", at)


def revisions(db: Database, *, limit: int = 10) -> list[dict[str, Any]]:
    return list(db.query("SELECT * FROM revisions ORDER BY id DESC LIMIT ?", [limit]))


def record_counts(db: Database, counts: Mapping[str, int], *, at: str) -> None:
    """Remember counts as of this apply (only those that changed), for "the change since the last apply"."""
    db.conn.executemany(
        "INSERT INTO plan_counts(subject, count, at) VALUES (?, ?, ?) ON CONFLICT(subject) DO UPDATE SET "
        "count = excluded.count, at = excluded.at WHERE count IS NOT excluded.count",
        [(subject, count, at) for subject, count in counts.items()],
    )


def list_specs(db: Database) -> dict[str, dict[str, Any]]:
    """Every list as last applied (removed ones too: a running campaign may still send to one)."""
    return {name: json.loads(spec) for name, spec in db.conn.execute("SELECT name, spec FROM lists")}


def list_categories(db: Database) -> dict[str, str]:
    return {name: spec.get("category", "marketing") for name, spec in list_specs(db).items()}


def field_types(db: Database) -> dict[str, str]:
    return dict(db.conn.execute("SELECT name, type FROM fields WHERE removed_at IS NULL").fetchall())
