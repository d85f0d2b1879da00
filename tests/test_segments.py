"""Segment conditions against a real database, SQLite and PostgreSQL: every operator, missing values, day boundaries,
top-N ties."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from conftest import reconciler
from reconciler.jsonsql import POSTGRESQL, SQLITE, Dialect
from reconciler.segments import Compiler
from reconciler.spec.documents import Segment
from reconciler.state import open_db
from reconciler.state.audiences import member_ids
from reconciler.state.db import open_postgres
from reconciler.state.portable import dialect

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
TYPES = {
    "spend": "number",
    "orders": "integer",
    "roast": "string",
    "vip": "boolean",
    "birthday": "date",
    "last_order_at": "datetime",
    "interests": "list",
    "renewal": "date",
}
PEOPLE: dict[str, dict[str, Any]] = {
    "ann": {
        "country": "PL",
        "tags": ["vip"],
        "spend": 120.5,
        "orders": 3,
        "roast": "dark",
        "vip": True,
        "birthday": "1990-03-10",
        "last_order_at": "2026-03-09T23:30:00Z",
        "interests": ["espresso", "tea"],
    },
    "bob": {
        "country": "DE",
        "spend": 80,
        "orders": 1,
        "roast": "light roast",
        "vip": False,
        "birthday": "1985-12-31",
        "last_order_at": "2026-01-01T10:00:00Z",
        "interests": [],
    },
    "cy": {"country": None, "spend": 120.5, "orders": 0, "roast": "Dark", "renewal": "2026-03-11"},
    "di": {},
}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The people below, in a database of each engine (the compiler writes its dialect)."""
    if request.param == "sqlite":
        database: Any = open_db(tmp_path_factory.mktemp("segments") / "state.db")
    else:
        database = open_postgres(request.getfixturevalue("postgres_cluster").database())
    for index, (name, values) in enumerate(PEOPLE.items(), start=1):
        custom = {k: v for k, v in values.items() if k in TYPES and v is not None}
        database.conn.execute(
            "INSERT INTO contacts (id, email, email_hash, country, tags, fields, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
            (
                index,
                f"{name}@example.com",
                name,
                values.get("country"),
                json.dumps(values.get("tags", [])),
                json.dumps(custom),
            ),
        )
    yield database
    database.close()


def members(db: Database, where: dict[str, Any] | None, *, timezone: str = "UTC", **segment: Any) -> list[str]:
    document = {"kind": "Segment", "name": "s", **({"where": where} if where else {}), **segment}
    models = {"s": Segment.model_validate(document)}
    compiler = Compiler(models, TYPES, now=NOW, timezone=timezone, dialect=dialect(db))
    ids = member_ids(db, compiler.members("s"))
    names = list(PEOPLE)
    found = [names[i - 1] for i in ids]
    return found if "order_by" in segment else sorted(found)


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"field": "country", "eq": "PL"}, ["ann"]),
        ({"field": "country", "ne": "PL"}, ["bob", "cy", "di"]),  # a missing value is not PL
        ({"field": "country", "in": ["PL", "DE"]}, ["ann", "bob"]),
        ({"field": "country", "not_in": ["PL"]}, ["bob", "cy", "di"]),
        ({"field": "spend", "gt": 80}, ["ann", "cy"]),
        ({"field": "spend", "gte": 80}, ["ann", "bob", "cy"]),
        ({"field": "spend", "lt": 120.5}, ["bob"]),
        ({"field": "orders", "lte": 1}, ["bob", "cy"]),
        ({"field": "roast", "contains": "ark"}, ["ann", "cy"]),  # case-sensitive
        ({"field": "roast", "starts_with": "light"}, ["bob"]),
        ({"field": "roast", "exists": True}, ["ann", "bob", "cy"]),
        ({"field": "roast", "exists": False}, ["di"]),
        ({"field": "vip", "eq": False}, ["bob"]),  # missing is not false
        ({"field": "interests", "contains": "tea"}, ["ann"]),
        ({"field": "interests", "in": ["espresso", "filter"]}, ["ann"]),
        ({"field": "interests", "exists": True}, ["ann"]),  # an empty list does not exist
        ({"field": "tags", "contains": "vip"}, ["ann"]),
        ({"tag": "vip"}, ["ann"]),
        ({"field": "birthday", "before": "1990-01-01"}, ["bob"]),
        ({"field": "birthday", "after": "1985-12-31"}, ["ann"]),
        ({"field": "birthday", "eq": "1990-03-10"}, ["ann"]),
        ({"field": "last_order_at", "within": "2d"}, ["ann"]),
        ({"field": "last_order_at", "before": "30d"}, ["bob"]),
        ({"not": {"field": "spend", "gt": 100}}, ["bob", "di"]),
        ({"any": [{"field": "country", "eq": "DE"}, {"field": "roast", "eq": "Dark"}]}, ["bob", "cy"]),
        ({"all": [{"field": "spend", "gte": 100}, {"not": {"tag": "vip"}}]}, ["cy"]),
    ],
)
def test_each_operator_and_missing_values(db: Database, where: dict[str, Any], expected: list[str]) -> None:
    assert members(db, where) == expected


def test_a_date_bound_is_the_start_of_that_day_in_the_workspace_time_zone(db: Database) -> None:
    # ann's last order is 2026-03-09 23:30 UTC: already 10 March in Warsaw, still 9 March in New York
    condition = {"field": "last_order_at", "after": "2026-03-10"}
    assert members(db, condition, timezone="Europe/Warsaw") == ["ann"]
    assert members(db, condition, timezone="America/New_York") == []
    # a date field's "within 1d" is yesterday and today, local: 12:00 UTC is already 11 March in Kiritimati
    assert members(db, {"field": "renewal", "within": "1d"}, timezone="Pacific/Kiritimati") == ["cy"]
    assert members(db, {"field": "renewal", "within": "1d"}, timezone="UTC") == []
    assert members(db, {"field": "renewal", "after": "12h"}, timezone="UTC") == ["cy"]


def test_top_n_breaks_ties_by_the_older_contact_and_puts_missing_values_last(db: Database) -> None:
    order = {"field": "spend", "direction": "desc"}
    assert members(db, None, order_by=order, limit=1) == ["ann"]  # ann and cy tie at 120.5; ann came first
    assert members(db, None, order_by=order, limit=3) == ["ann", "cy", "bob"]
    assert members(db, None, order_by=order, limit=10) == ["ann", "cy", "bob", "di"]
    assert members(db, None, order_by={"field": "spend", "direction": "asc"}, limit=2) == ["bob", "ann"]


@pytest.mark.parametrize("engine", [SQLITE, POSTGRESQL], ids=["sqlite", "postgresql-dialect"])
def test_values_from_the_spec_never_reach_the_sql_text(engine: Dialect) -> None:
    hostile = "x'); DROP TABLE contacts; --"
    conditions = [
        {"field": "roast", "eq": hostile},
        {"tag": hostile},
        {"field": "roast", "starts_with": hostile},
        {"event": "x.y", "property": {"name": hostile, "eq": hostile}},
        {"event": "x.y", "sum": {"property": hostile, "gte": 1}},
        {"field": "interests", "in": [hostile]},
        {"field": "roast", "in": [hostile]},
    ]
    document = {"kind": "Segment", "name": "s", "where": {"all": conditions}}
    compiler = Compiler({"s": Segment.model_validate(document)}, TYPES, now=NOW, timezone="UTC", dialect=engine)
    query = compiler.members("s")
    assert "DROP" not in query.text and "x.y" not in query.text
    assert hostile in query.params


def test_segments_show_counts_samples_and_explains(example: Path) -> None:
    (example / "c.csv").write_text(
        "email,brew_method,favourite_roast\nann@example.com,espresso,light\nbob@example.com,filter,dark\n"
        "cy@example.com,filter,light\n"
    )
    assert (
        reconciler("contacts", "import", "c.csv", "--list", "newsletter", "--preconfirmed", cwd=example).returncode == 0
    )
    shown = reconciler("segments", "show", "espresso-people", cwd=example)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("Segment espresso-people: 2 members")
    assert "  ann@example.com\n  bob@example.com" in shown.stdout
    why = reconciler("segments", "show", "espresso-people", "--contact", "CY@example.com", cwd=example)
    assert "cy@example.com is OUT:" in why.stdout
    assert '✗ field: brew_method, in: ["espresso", "moka"]' in why.stdout
    counts = reconciler("segments", "show", "espresso-people", "--explain", "--sample", "0", cwd=example)
    assert "        1  field: favourite_roast, eq: dark" in counts.stdout
    unknown = reconciler("segments", "show", "espresso", cwd=example)
    assert unknown.returncode == 1 and "did you mean 'espresso-people'?" in unknown.stderr
