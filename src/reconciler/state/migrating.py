"""How a migration is declared: one declaration registers it for both engines, in one order (`STEPS`), and a
script of DDL runs statement by statement. The migrations themselves are in `state/schema.py` and, after its own,
`state/schema_continued.py`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from sqlite_utils.migrations import Migrations

from reconciler.state.postgres import StateDatabase

migrations = Migrations("reconciler")
"""The history as sqlite-utils applies it to SQLite databases."""
Step = Callable[[StateDatabase], None]
STEPS: list[tuple[str, Step]] = []
"""The same history, in the same order, as `postgres_schema.apply` applies it to PostgreSQL databases."""


def migration(name: str) -> Callable[[Step], Step]:
    """Register a migration under `name` for both engines (one declaration, one list of names)."""

    def register(step: Step) -> Step:
        migrations(name=name)(step)
        STEPS.append((name, step))
        return step

    return register


def run_script(db: StateDatabase, script: str) -> None:
    """Statement by statement: `executescript` would commit the migration's transaction half-way."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in a migration: {statement.strip()[:60]}")
