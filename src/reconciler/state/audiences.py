"""Running compiled segment queries: counts, members, one contact's conditions, and campaign audience counts."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any

from reconciler.segments import Sql
from reconciler.state.portable import json_integers
from reconciler.state.postgres import StateDatabase


def count(db: StateDatabase, members: Sql) -> int:
    return int(db.conn.execute(f"SELECT count(*) FROM ({members.text}) AS m", members.params).fetchone()[0])


def member_ids(db: StateDatabase, members: Sql) -> list[int]:
    return [row[0] for row in db.conn.execute(members.text, members.params)]


def sample(db: StateDatabase, members: Sql, *, limit: int, columns: Iterable[Sql] = ()) -> list[tuple[Any, ...]]:
    """The first `limit` members in the segment's order, with their email and the given values."""
    extra = list(columns)
    selected = "".join(f", {column.text}" for column in extra)
    params = tuple(p for column in extra for p in column.params)
    return db.conn.execute(
        f"SELECT c.email{selected} FROM (SELECT id, row_number() OVER () AS position FROM ({members.text}) AS s) AS m "
        "JOIN contacts c ON c.id = m.id ORDER BY m.position LIMIT ?",
        (*params, *members.params, limit),
    ).fetchall()


def holds(db: StateDatabase, condition: Sql, contact_id: int) -> bool:
    """Whether one contact meets one compiled condition."""
    row = db.conn.execute(f"SELECT {condition.text} FROM contacts c WHERE c.id = ?", (*condition.params, contact_id))
    found = row.fetchone()
    return bool(found and found[0])


def contact_id(db: StateDatabase, email: str) -> int | None:
    row = db.conn.execute("SELECT id FROM contacts WHERE email = ?", (email,)).fetchone()
    return None if row is None else int(row[0])


def lacking(db: StateDatabase, test: Sql, among: Collection[int] | None = None) -> list[int]:
    """The contacts that meet `test` (that they lack a field): every one of them, or those of `among`."""
    if among is None:
        rows = db.conn.execute(f"SELECT c.id FROM contacts c WHERE {test.text}", test.params)
    else:
        chosen = f"c.id IN ({json_integers(db, '?')}) AND "
        rows = db.conn.execute(
            f"SELECT c.id FROM contacts c WHERE {chosen}{test.text}", (json.dumps(sorted(among)), *test.params)
        )
    return [row[0] for row in rows]
