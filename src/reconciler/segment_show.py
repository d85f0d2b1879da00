"""`reconciler segments show`: a segment's size, a sample of its members, and why a contact is in or out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from reconciler.errors import ReconcilerError, did_you_mean
from reconciler.segments import TRUE, Sql, subscribed_to, workspace_compiler
from reconciler.spec import DesiredState
from reconciler.spec.conditions import CONDITION_KEYS, AllCondition, AnyCondition, NotCondition
from reconciler.state import audiences
from reconciler.state.portable import dialect
from reconciler.state.postgres import StateDatabase


def _describe(node: Any) -> str:
    if isinstance(node, AllCondition):
        return "all of:"
    if isinstance(node, AnyCondition):
        return "any of:"
    if isinstance(node, NotCondition):
        return "not:"
    data = node.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
    data = dict(sorted(data.items(), key=lambda item: item[0] not in CONDITION_KEYS))  # the subject first
    return ", ".join(
        f"{key}: {json.dumps(value) if not isinstance(value, str) else value}" for key, value in data.items()
    )


def _children(node: Any) -> list[Any]:
    if isinstance(node, AllCondition):
        return list(node.all)
    if isinstance(node, AnyCondition):
        return list(node.any)
    if isinstance(node, NotCondition):
        return [node.not_]
    return []


def show(
    db: StateDatabase,
    desired: DesiredState,
    name: str,
    *,
    now: datetime,
    sample: int = 10,
    explain: bool = False,
    contact: str | None = None,
) -> str:
    """The text `segments show` prints."""
    if name not in desired.segments:
        raise ReconcilerError(f"no segment {name!r} ({did_you_mean(name, desired.segments, otherwise='see spec/')})")
    segment = desired.segments[name]
    compiler = workspace_compiler(desired, now=now, dialect=dialect(db))
    members = compiler.members(name)
    size = audiences.count(db, members)
    header = f"Segment {name}: {size:,} member{'s' * (size != 1)}"
    if segment.lists:
        header += f" (subscribed to any of: {', '.join(segment.lists)})"
    lines = [header]
    if segment.description:
        lines.append(f"  {segment.description}")
    order = compiler.value(segment.order_by.field) if segment.order_by else None
    if contact is not None:
        lines += list(_explain_contact(db, desired, name, contact, compiler=compiler, members=members))
    elif explain:
        lines += list(_explain_counts(db, desired, name, compiler=compiler))
    if sample and contact is None:
        rows = audiences.sample(db, members, limit=sample, columns=[order] if order else [])
        if rows:
            lines += ["", f"First {len(rows)} member{'s' * (len(rows) != 1)}:"]
            for row in rows:
                extra = f"  {segment.order_by.field}={_shown(row[1])}" if order and segment.order_by else ""
                lines.append(f"  {row[0]}{extra}")
    return "\n".join(lines)


def _shown(value: Any) -> Any:
    """A value as the contact's JSON has it: typed numbers are kept as doubles, so a whole one shows without `.0`."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _tree(node: Any, depth: int = 1) -> Iterator[tuple[int, Any]]:
    yield depth, node
    for child in _children(node):
        yield from _tree(child, depth + 1)


def _explain_contact(
    db: StateDatabase, desired: DesiredState, name: str, email: str, *, compiler: Any, members: Sql
) -> Iterator[str]:
    segment = desired.segments[name]
    found = audiences.contact_id(db, email)
    if found is None:
        raise ReconcilerError(f"no contact {email} in the state database")
    inside = found in set(audiences.member_ids(db, members))
    yield f"{email} is {'IN' if inside else 'OUT'}:"
    if segment.lists:
        ok = audiences.holds(db, subscribed_to(segment.lists, dialect=dialect(db)), found)
        yield f"  {'✓' if ok else '✗'} subscribed to any of: {', '.join(segment.lists)}"
    if segment.where is not None:
        for depth, node in _tree(segment.where):
            ok = audiences.holds(db, compiler.condition(node), found)
            yield f"{'  ' * depth}{'✓' if ok else '✗'} {_describe(node)}"
    if segment.limit is not None and segment.order_by is not None:
        base = audiences.holds(db, compiler.base(segment), found)
        ranked = "within" if inside else ("outside" if base else "not ranked for")
        yield (
            f"  {'✓' if inside else '✗'} {ranked} the top {segment.limit:,} by {segment.order_by.field} "
            f"({segment.order_by.direction})"
        )


def _explain_counts(db: StateDatabase, desired: DesiredState, name: str, *, compiler: Any) -> Iterator[str]:
    """How many contacts meet each condition on its own (the base lists apply to each)."""
    segment = desired.segments[name]
    base = subscribed_to(segment.lists, dialect=dialect(db)) if segment.lists else TRUE
    yield "Contacts meeting each condition (within the lists):"
    if segment.where is None:
        return
    for depth, node in _tree(segment.where):
        matching = base & compiler.condition(node)
        n = audiences.count(db, Sql(f"SELECT c.id FROM contacts c WHERE {matching.text}", matching.params))
        yield f"{'  ' * depth}{n:>9,}  {_describe(node)}"
