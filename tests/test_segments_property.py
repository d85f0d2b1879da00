"""The SQL the segment compiler writes selects exactly the contacts a plain-Python evaluator selects.

Hypothesis generates contacts (with missing values), subscriptions, events, engagement and condition trees over
every subject and operator; the reference evaluator (segment_reference.py) is written apart from the compiler.
It runs on both engines (the `state_db` fixture), the compiler writing each one's SQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from reconciler.segments import Compiler
from reconciler.spec.documents import Segment
from reconciler.state.audiences import member_ids
from reconciler.state.portable import dialect
from segment_reference import Person, World

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
TYPES = {
    "spend": "number",
    "orders": "integer",
    "roast": "string",
    "vip": "boolean",
    "birthday": "date",
    "last_order_at": "datetime",
    "interests": "list",
}
ALL_TYPES = {"country": "string", "first_name": "string", "tags": "list", "created_at": "datetime", **TYPES}
LISTS = ("news", "offers")
STRINGS = ("dark", "light", "Dark", "medium roast", "")
COUNTRIES = ("PL", "DE", "US")
NUMBERS = (0, 1, 2, 2.5, 10, 99.5, 100, -3)
DATES = ("2026-06-14", "2026-06-15", "2026-06-16", "2026-01-01", "2025-12-31")
TIMES = ("2026-06-15T11:00:00Z", "2026-06-14T23:59:59Z", "2026-06-15T00:00:00Z", "2026-05-01T08:00:00Z")
DURATIONS = ("1h", "1d", "2d", "30d", "1w")


def _instant(offset_hours: int) -> str:
    return (NOW - timedelta(hours=offset_hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


@st.composite
def people(draw: st.DrawFn) -> list[Person]:
    found = []
    for index in range(draw(st.integers(0, 14))):
        values: dict[str, Any] = {
            "country": draw(maybe(st.sampled_from(COUNTRIES))),
            "first_name": draw(maybe(st.sampled_from(STRINGS))),
            "tags": draw(st.lists(st.sampled_from(("vip", "beans", "gift")), unique=True, max_size=2)),
            "created_at": draw(st.sampled_from(TIMES)),
            "spend": draw(maybe(st.sampled_from(NUMBERS))),
            "orders": draw(maybe(st.integers(0, 4))),
            "roast": draw(maybe(st.sampled_from(STRINGS))),
            "vip": draw(maybe(st.booleans())),
            "birthday": draw(maybe(st.sampled_from(DATES))),
            "last_order_at": draw(maybe(st.one_of(st.sampled_from(TIMES), st.integers(0, 800).map(_instant)))),
            "interests": draw(maybe(st.lists(st.sampled_from(("tea", "espresso", "filter")), unique=True, max_size=2))),
        }
        subscriptions = {
            name: draw(st.sampled_from(("subscribed", "unsubscribed", "pending")))
            for name in LISTS
            if draw(st.booleans())
        }
        events = [
            {
                "type": draw(st.sampled_from(("purchase", "visit"))),
                "occurred_at": _instant(draw(st.integers(0, 3000))),
                "properties": {
                    k: v
                    for k, v in {
                        "amount": draw(maybe(st.sampled_from(NUMBERS))),
                        "sku": draw(maybe(st.sampled_from(("A1", "B2")))),
                    }.items()
                    if v is not None
                },
            }
            for _ in range(draw(st.integers(0, 4)))
        ]
        engagement = [
            {
                "action": draw(st.sampled_from(("opened", "clicked"))),
                "source_kind": "campaign",
                "source": draw(st.sampled_from(("spring", "summer"))),
                "stage": "",
                "machine": draw(st.booleans()),
                "at": _instant(draw(st.integers(0, 2000))),
            }
            for _ in range(draw(st.integers(0, 3)))
        ]
        found.append(Person(index + 1, values, subscriptions, events, engagement))
    return found


def field_condition(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(ALL_TYPES)))
    type_ = ALL_TYPES[name]
    ops = ["eq", "ne", "in", "not_in", "exists"]
    if type_ in ("number", "integer", "date", "datetime"):
        ops += ["gt", "gte", "lt", "lte"]
    if type_ in ("date", "datetime"):
        ops += ["before", "after", "within"]
    if type_ == "string":
        ops += ["contains", "starts_with"]
    if type_ == "list":
        ops += ["contains"]
    op = draw(st.sampled_from(ops))
    pool: tuple[Any, ...] = {
        "number": NUMBERS,
        "integer": (0, 1, 2, 3),
        "string": COUNTRIES + STRINGS if name == "country" else STRINGS,
        "boolean": (True, False),
        "date": DATES,
        "datetime": TIMES + DATES,
        "list": ("tea", "espresso", "vip", "gift"),
    }[type_]
    if op == "exists":
        operand: Any = draw(st.booleans())
    elif op in ("in", "not_in"):
        operand = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
    elif op == "within":
        operand = draw(st.sampled_from(DURATIONS))
    elif op in ("before", "after"):
        operand = draw(st.sampled_from(DATES + TIMES[:2] + DURATIONS))
    elif op in ("contains", "starts_with") and type_ == "string":
        operand = draw(st.sampled_from(("ar", "D", "l", "medium", "P")))
    else:
        operand = draw(st.sampled_from(pool))
    return {"field": name, op: operand}


@st.composite
def leaf(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(("field", "field", "field", "tag", "list", "event", "engaged", "in_segment")))
    if kind == "field":
        return field_condition(draw)
    if kind == "tag":
        return {"tag": draw(st.sampled_from(("vip", "beans", "nope")))}
    if kind == "list":
        return {"list": draw(st.sampled_from(LISTS))}
    if kind == "in_segment":
        return {"in_segment": "helper"}
    if kind == "engaged":
        spec: dict[str, Any] = {"action": draw(st.sampled_from(("opened", "clicked")))}
        if draw(st.booleans()):
            spec["campaign"] = draw(st.sampled_from(("spring", "summer")))
        if draw(st.booleans()):
            spec["within"] = draw(st.sampled_from(DURATIONS))
        if draw(st.booleans()):
            spec["include_machine"] = True
        return {"engaged": spec}
    event: dict[str, Any] = {"event": draw(st.sampled_from(("purchase", "visit")))}
    if draw(st.booleans()):
        event["within"] = draw(st.sampled_from(("1d", "30d", "90d")))
    choice = draw(st.sampled_from(("none", "count", "sum")))
    if choice == "count":
        event["count"] = {draw(st.sampled_from(("eq", "ne", "gt", "gte", "lt", "lte"))): draw(st.integers(0, 3))}
    elif choice == "sum":
        event["sum"] = {
            "property": "amount",
            draw(st.sampled_from(("gt", "gte", "lt", "eq"))): draw(st.sampled_from((0, 2.5, 10, 100))),
        }
    if draw(st.booleans()):
        prop_op = draw(st.sampled_from(("eq", "ne", "in", "gt", "exists")))
        operand = {"eq": "A1", "ne": "B2", "in": ["A1"], "gt": 5, "exists": True}[prop_op]
        name = "amount" if prop_op == "gt" else "sku"
        event["property"] = {"name": name, prop_op: operand}
    return event


def conditions(*, with_segments: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    leaves = leaf() if with_segments else leaf().filter(lambda node: "in_segment" not in node)
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, min_size=1, max_size=3).map(lambda xs: {"all": xs}),
            st.lists(children, min_size=1, max_size=3).map(lambda xs: {"any": xs}),
            children.map(lambda x: {"not": x}),
        ),
        max_leaves=6,
    )


@st.composite
def segments(draw: st.DrawFn, *, name: str, with_segments: bool) -> dict[str, Any]:
    document: dict[str, Any] = {"kind": "Segment", "name": name}
    if draw(st.booleans()):
        document["lists"] = draw(st.lists(st.sampled_from(LISTS), min_size=1, max_size=2, unique=True))
    if draw(st.integers(0, 5)):
        document["where"] = draw(conditions(with_segments=with_segments))
    if draw(st.booleans()):
        document["order_by"] = {
            "field": draw(st.sampled_from(("spend", "orders", "roast", "birthday", "last_order_at", "country"))),
            "direction": draw(st.sampled_from(("asc", "desc"))),
        }
        document["limit"] = draw(st.integers(1, 6))
    return document


def _store(db: Database, world: World) -> None:
    conn = db.conn
    for table in ("engagement", "events", "subscriptions", "contacts"):
        conn.execute(f"DELETE FROM {table}")  # noqa: S608 - constant table names
    for person in world.people:
        values = person.values
        custom = {k: values[k] for k in TYPES if values.get(k) is not None}
        conn.execute(
            "INSERT INTO contacts (id, email, email_hash, first_name, country, tags, fields, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                person.id,
                f"p{person.id}@example.com",
                f"h{person.id}",
                values["first_name"],
                values["country"],
                json.dumps(values["tags"]),
                json.dumps(custom),
                values["created_at"],
                values["created_at"],
            ),
        )
        for list_name, status in person.subscriptions.items():
            conn.execute("INSERT INTO subscriptions VALUES (?, ?, ?, ?)", (person.id, list_name, status, "x"))
        for event in person.events:
            conn.execute(
                "INSERT INTO events (contact_id, type, occurred_at, properties) VALUES (?, ?, ?, ?)",
                (person.id, event["type"], event["occurred_at"], json.dumps(event["properties"])),
            )
        for row in person.engagement:
            conn.execute(
                "INSERT INTO engagement (contact_id, source_kind, source, stage, action, machine, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    person.id,
                    row["source_kind"],
                    row["source"],
                    row["stage"],
                    row["action"],
                    int(row["machine"]),
                    row["at"],
                ),
            )


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],  # one database per engine
)
@given(
    found=people(),
    helper=segments(name="helper", with_segments=False),
    target=segments(name="target", with_segments=True),
)
def test_compiled_sql_selects_what_the_reference_evaluator_selects(
    state_db: Any, found: list[Person], helper: dict[str, Any], target: dict[str, Any]
) -> None:
    documents = {"helper": helper, "target": target}
    world = World(found, ALL_TYPES, documents, NOW)
    models = {name: Segment.model_validate(doc) for name, doc in documents.items()}
    db = state_db
    _store(db, world)
    compiler = Compiler(models, TYPES, now=NOW, timezone="UTC", dialect=dialect(db))
    got = member_ids(db, compiler.members("target"))
    expected = world.members("target")
    if target.get("order_by"):
        assert got == expected, json.dumps(target)
    else:
        assert sorted(got) == sorted(expected), json.dumps(target)
