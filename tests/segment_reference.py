"""A plain-Python evaluator of segment conditions, written apart from the SQL compiler to check it.

It follows the documented semantics (docs/spec-language.md, "Conditions"): two-valued logic, a missing value makes
every comparison false (so `ne`/`not_in` are true for it), bounds written as dates mean the start of that day in the
workspace time zone, relative bounds count back from `now`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

BUILTINS = {"email", "first_name", "last_name", "timezone", "locale", "country", "tags", "created_at"}
DURATION = re.compile(r"^(\d+)([mhdw])$")
UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass
class Person:
    id: int
    values: dict[str, Any]
    """Built-ins and custom fields by name (absent = missing)."""
    subscriptions: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    """{type, occurred_at (UTC text), properties}."""
    engagement: list[dict[str, Any]] = field(default_factory=list)
    """{action, source_kind, source, stage, machine, at}."""


@dataclass
class World:
    people: list[Person]
    types: dict[str, str]
    segments: dict[str, dict[str, Any]]
    """Segment documents as written (plain dicts)."""
    now: datetime
    zone: str = "UTC"

    def duration(self, text: str) -> timedelta:
        match = DURATION.match(text)
        assert match, text
        amount, unit = match.groups()
        return timedelta(seconds=int(amount) * UNITS[unit])

    def stored(self, moment: datetime, type_: str) -> str:
        if type_ == "date":
            return moment.astimezone(ZoneInfo(self.zone)).date().isoformat()
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def bound(self, text: str, type_: str) -> str:
        if DURATION.match(text):
            return self.stored(self.now - self.duration(text), type_)
        if "T" in text:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=ZoneInfo(self.zone))
            return self.stored(moment, type_)
        day = date.fromisoformat(text)
        return (
            day.isoformat()
            if type_ == "date"
            else self.stored(datetime.combine(day, time(0), tzinfo=ZoneInfo(self.zone)), type_)
        )

    # --- segments ---

    def members(self, name: str) -> list[int]:
        segment = self.segments[name]
        chosen = [p for p in sorted(self.people, key=lambda p: p.id) if self.in_base(segment, p)]
        order = segment.get("order_by")
        if order:
            key = order["field"]
            present = [p for p in chosen if p.values.get(key) is not None]
            missing = [p for p in chosen if p.values.get(key) is None]
            present.sort(key=lambda p: p.values[key], reverse=order.get("direction", "desc") == "desc")
            chosen = present + missing
        if segment.get("limit") is not None:
            chosen = chosen[: segment["limit"]]
        return [p.id for p in chosen]

    def in_base(self, segment: dict[str, Any], person: Person) -> bool:
        lists = segment.get("lists") or []
        if lists and not any(person.subscriptions.get(name) == "subscribed" for name in lists):
            return False
        where = segment.get("where")
        return where is None or self.holds(where, person)

    def holds(self, node: dict[str, Any], person: Person) -> bool:
        if "all" in node:
            return all(self.holds(child, person) for child in node["all"])
        if "any" in node:
            return any(self.holds(child, person) for child in node["any"])
        if "not" in node:
            return not self.holds(node["not"], person)
        if "field" in node:
            name = node["field"]
            return self.compare(person.values.get(name), self.types[name], node)
        if "tag" in node:
            return node["tag"] in (person.values.get("tags") or [])
        if "list" in node:
            return person.subscriptions.get(node["list"]) == "subscribed"
        if "in_segment" in node:
            return person.id in self.members(node["in_segment"])
        if "event" in node:
            return self.event(node, person)
        if "engaged" in node:
            return self.engaged(node["engaged"], person)
        raise AssertionError(node)

    def compare(self, value: Any, type_: str, node: dict[str, Any]) -> bool:
        op = next(k for k in node if k not in ("field", "name"))
        operand = node[op]
        if op == "exists":
            present = value is not None and (type_ != "list" or len(value) > 0)
            return bool(present == operand)
        if op == "ne":
            return not self.compare(value, type_, {"eq": operand})
        if op == "not_in":
            return not self.compare(value, type_, {"in": operand})
        if value is None:
            return False
        if type_ == "list":
            if op in ("eq", "contains"):
                return operand in value
            if op == "in":
                return any(item in operand for item in value)
        if type_ in ("date", "datetime") and isinstance(operand, str) and op != "within":
            operand = self.bound(operand, type_)
        if op == "eq":
            return bool(value == operand)
        if op == "in":
            wanted = [self.bound(o, type_) if type_ in ("date", "datetime") else o for o in operand]
            return value in wanted
        if op in ("gt", "after"):
            return bool(value > operand)
        if op == "gte":
            return bool(value >= operand)
        if op in ("lt", "before"):
            return bool(value < operand)
        if op == "lte":
            return bool(value <= operand)
        if op == "within":
            start = self.stored(self.now - self.duration(operand), type_)
            return bool(start <= value <= self.stored(self.now, type_))
        if op == "contains":
            return str(operand) in value
        if op == "starts_with":
            return str(value).startswith(operand)
        raise AssertionError(op)

    def event(self, node: dict[str, Any], person: Person) -> bool:
        found = [e for e in person.events if e["type"] == node["event"]]
        if "within" in node:
            start = self.stored(self.now - self.duration(node["within"]), "datetime")
            found = [e for e in found if e["occurred_at"] >= start]
        props = node.get("property") or []
        for prop in props if isinstance(props, list) else [props]:
            operand = next(v for k, v in prop.items() if k != "name")
            sample = operand[0] if isinstance(operand, list) else operand
            type_ = "number" if isinstance(sample, int | float) and not isinstance(sample, bool) else "string"
            found = [e for e in found if self.compare(e["properties"].get(prop["name"]), type_, prop)]
        if "count" not in node and "sum" not in node:
            return bool(found)
        ok = True
        if "count" in node:
            ok &= _bounds(len(found), node["count"])
        if "sum" in node:
            total = sum(e["properties"].get(node["sum"]["property"]) or 0 for e in found)
            ok &= _bounds(total, {k: v for k, v in node["sum"].items() if k != "property"})
        return ok

    def engaged(self, spec: dict[str, Any], person: Person) -> bool:
        rows = [g for g in person.engagement if g["action"] == spec["action"]]
        if not spec.get("include_machine"):
            rows = [g for g in rows if not g["machine"]]
        if spec.get("campaign"):
            rows = [g for g in rows if g["source_kind"] == "campaign" and g["source"] == spec["campaign"]]
        if "within" in spec:
            start = self.stored(self.now - self.duration(spec["within"]), "datetime")
            rows = [g for g in rows if g["at"] >= start]
        return bool(rows)


def _bounds(value: float, bounds: dict[str, float]) -> bool:
    checks = {
        "eq": value == bounds.get("eq"),
        "ne": value != bounds.get("ne"),
        "gt": value > bounds.get("gt", 0),
        "gte": value >= bounds.get("gte", 0),
        "lt": value < bounds.get("lt", 0),
        "lte": value <= bounds.get("lte", 0),
    }
    return all(checks[op] for op in bounds)
