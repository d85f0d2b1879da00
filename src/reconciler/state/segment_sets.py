"""Segments evaluated into sets of contact ids for a plan, every condition shared by the segments that use it.

A workspace's segments repeat conditions (a list, "bought twice in 90 days", a roast), and a plan needs every
segment: one SQL query per segment evaluates each shared condition again for each of them. Here each condition
(a leaf of the condition tree, as the compiler writes it) is evaluated at most once per plan into a set, and the
tree is put together in Python: `all` narrows the candidates child by child (the children that usually select few
first: events, engagement, lists), a child met with few candidates is only tested for those (probes by contact,
`Compiler.probing`), `any` is a union, `not` a difference. A top-N sorts its members by the order field's values.

The same semantics as `Compiler.members` (tests/test_segment_sets.py holds both to tests/segment_reference.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from reconciler.segments import COLUMNS, KINDS, VALUE_COLUMNS, Compiler, Sql
from reconciler.spec.conditions import (
    AllCondition,
    AnyCondition,
    EngagedCondition,
    EventCondition,
    InSegmentCondition,
    ListCondition,
    NotCondition,
)
from reconciler.spec.documents import Segment
from reconciler.state.portable import json_integers
from reconciler.state.postgres import StateDatabase

FEW = 20_000
"""Candidates few enough to test one by one (by their ids) rather than evaluating a condition for everyone."""
_FIRST: dict[type, int] = {EventCondition: 0, EngagedCondition: 1, InSegmentCondition: 2, ListCondition: 3}
"""The order `all` evaluates its children in: those that usually select few people first; others after."""


class SegmentSets:
    """The members of a workspace's segments, each condition evaluated at most once."""

    def __init__(self, db: StateDatabase, compiler: Compiler) -> None:
        self.db = db
        self.compiler = compiler
        self.probes = compiler.probing()
        self.done: dict[tuple[str, tuple[Any, ...]], frozenset[int]] = {}
        self.members_of: dict[str, list[int]] = {}
        self.everyone: frozenset[int] | None = None

    def members(self, name: str) -> list[int]:
        """The segment's members, in its order when it has one (as `Compiler.members` gives them)."""
        if name not in self.members_of:
            self.members_of[name] = self._members(self.compiler.segments[name])
        return self.members_of[name]

    def _members(self, segment: Segment) -> list[int]:
        found: frozenset[int] | None = None
        if segment.lists:
            found = self._leaf(self.compiler.subscribed(segment.lists), self.probes.subscribed(segment.lists), None)
        if segment.where is not None:
            found = self.holds(segment.where, found)
        ids = sorted(found if found is not None else self._everyone())
        if segment.order_by is not None:
            values = self._values(segment.order_by.field, ids)
            present = [i for i in ids if values.get(i) is not None]
            present.sort(key=values.__getitem__, reverse=segment.order_by.direction == "desc")
            ids = present + [i for i in ids if values.get(i) is None]
        return ids if segment.limit is None else ids[: segment.limit]

    def holds(self, node: Any, among: frozenset[int] | None) -> frozenset[int]:
        """Who of `among` (everyone when None) meets the condition `node`."""
        if among is not None and not among:
            return among
        if isinstance(node, AllCondition):
            for child in sorted(node.all, key=lambda child: _FIRST.get(type(child), 9)):
                among = self.holds(child, among)
                if not among:
                    break
            assert among is not None
            return among
        if isinstance(node, AnyCondition):
            return frozenset().union(*(self.holds(child, among) for child in node.any))
        if isinstance(node, NotCondition):
            return (among if among is not None else self._everyone()) - self.holds(node.not_, among)
        if isinstance(node, InSegmentCondition):
            inside = frozenset(self.members(node.in_segment))
            return inside if among is None else inside & among
        return self._leaf(self.compiler.condition(node), self.probes.condition(node), among)

    def _leaf(self, condition: Sql, probe: Sql, among: frozenset[int] | None) -> frozenset[int]:
        key = (condition.text, condition.params)
        if key not in self.done and among is not None and len(among) <= FEW:
            return frozenset(self._ids(f"c.id IN ({json_integers(self.db, '?')}) AND {probe.text}", _ids(among), probe))
        if key not in self.done:
            self.done[key] = frozenset(self._everyone_meeting(condition))
        found = self.done[key]
        return found if among is None else found & among

    def _everyone_meeting(self, condition: Sql) -> list[int]:
        """Everyone who meets `condition`: a set the compiler reads through an index (``c.id IN (SELECT ...)``) is
        read directly, anything else by a scan of the contacts."""
        inner = _subquery(condition.text)
        if inner is not None:
            return [row[0] for row in self.db.conn.execute(inner, condition.params)]
        return self._ids(condition.text, (), condition)

    def _ids(self, where: str, first: tuple[Any, ...], condition: Sql) -> list[int]:
        rows = self.db.conn.execute(f"SELECT c.id FROM contacts c WHERE {where}", (*first, *condition.params))  # noqa: S608
        return [row[0] for row in rows]

    def _everyone(self) -> frozenset[int]:
        if self.everyone is None:
            self.everyone = frozenset(row[0] for row in self.db.conn.execute("SELECT id FROM contacts"))
        return self.everyone

    def _values(self, field: str, ids: list[int]) -> dict[int, Any]:
        """The order field's value of each of `ids` (absent where missing), as the compiler reads it: a custom
        field's straight from its typed rows where the engine keeps them, else from the contacts."""
        type_ = self.compiler.types.get(field, "string")
        if field in COLUMNS or type_ == "list" or not self.compiler.dialect.typed_rows:
            value = self.compiler.value(field)
            select, params = f"SELECT c.id, {value.text} FROM contacts c", value.params  # noqa: S608 - compiled SQL
            chosen = " WHERE c.id IN ({})"
        else:
            kind = KINDS[type_]
            column = f"v.{VALUE_COLUMNS[kind]}"
            select = f"SELECT v.contact_id, {column} FROM contact_values v WHERE v.field = ? AND v.kind = ?"  # noqa: S608
            params, chosen = (field, kind), " AND v.contact_id IN ({})"
        if len(ids) <= FEW:
            select += chosen.format(json_integers(self.db, "?"))
            params = (*params, *_ids(ids))
        return dict(self.db.conn.execute(select, params).fetchall())


def _ids(ids: Iterable[int]) -> tuple[str]:
    return (json.dumps(sorted(ids)),)


def _subquery(text: str) -> str | None:
    """The SELECT of a condition that is exactly ``c.id IN (SELECT ...)``, else None."""
    opening = "c.id IN ("
    if not text.startswith(opening + "SELECT ") or not text.endswith(")"):
        return None
    depth = 0
    for position, char in enumerate(text[len(opening) - 1 :], start=len(opening) - 1):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return text[len(opening) : -1] if position == len(text) - 1 else None
    return None
