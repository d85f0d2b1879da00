"""Event values a sender got wrong: a property of another type than a condition compares with, and an event from
the future. Neither may match conditions it does not meet nor count as happened "forever"."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlite_utils import Database

from conftest import reconciler
from journeys import Journey
from reconciler.clock import iso
from reconciler.segments import Compiler
from reconciler.spec.documents import Segment
from reconciler.state import open_db
from reconciler.state.audiences import member_ids
from reconciler.state.db import open_postgres
from reconciler.state.portable import dialect
from reconciler.state.subscribers import insert_events
from sending import query, workspace
from smtp_sink import Sink, SinkServer
from web_server import WebServer

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MISSING = object()
VALUES: dict[str, Any] = {
    "int": 150,
    "real": 100.5,
    "small": 5,
    "zero": 0,
    "text": "abc",
    "digits": "5",
    "bigdigits": "500",
    "object": {"x": 1},
    "array": [500],
    "true": True,
    "false": False,
    "null": None,
    "date": "2026-11-30T10:00:00Z",
    "missing": MISSING,
}
"""Each contact (``KEY@example.com``) has one purchase whose property `v` holds this value."""


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The purchases below, in a database of each engine (the compiler writes its dialect)."""
    if request.param == "sqlite":
        database: Any = open_db(tmp_path_factory.mktemp("event-values") / "state.db")
    else:
        database = open_postgres(request.getfixturevalue("postgres_cluster").database())
    at = "2026-11-30T12:00:00Z"
    events = [
        (f"{key}@example.com", "purchase", at, {} if value is MISSING else {"v": value}, None)
        for key, value in VALUES.items()
    ]
    insert_events(database, events, at=at)
    yield database
    database.close()


def matching(db: Database, condition: dict[str, Any]) -> set[str]:
    """The contacts whose purchase's property `v` meets `condition`, as the keys of VALUES."""
    where = {"event": "purchase", "property": {"name": "v", **condition}}
    segment = Segment.model_validate({"kind": "Segment", "name": "s", "where": where})
    compiler = Compiler({"s": segment}, {}, now=NOW, timezone="UTC", dialect=dialect(db))
    ids = member_ids(db, compiler.members("s"))
    rows = db.conn.execute("SELECT id, email FROM contacts").fetchall()
    return {email.split("@")[0] for id_, email in rows if id_ in ids}


EVERYONE = set(VALUES)
CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({"gte": 100}, {"int", "real"}),
    ({"gt": 10}, {"int", "real"}),
    ({"lt": 100}, {"small", "zero"}),
    ({"lte": 5}, {"small", "zero"}),
    ({"eq": 5}, {"small"}),
    ({"eq": 0}, {"zero"}),
    ({"in": [5, 150]}, {"small", "int"}),
    ({"in": [0, 1]}, {"zero"}),
    ({"ne": 5}, EVERYONE - {"small"}),  # `ne` is `not eq`: a value of another type is not equal
    ({"not_in": [0, 5]}, EVERYONE - {"small", "zero"}),
    ({"eq": True}, {"true"}),
    ({"eq": False}, {"false"}),
    ({"eq": "5"}, {"digits"}),
    ({"in": ["5", "abc"]}, {"digits", "text"}),
    ({"gte": "M"}, {"text"}),
    ({"lt": "M"}, {"digits", "bigdigits", "date"}),
    ({"contains": "5"}, {"digits", "bigdigits"}),
    ({"contains": "x"}, set()),
    ({"starts_with": "["}, set()),
    ({"before": "2026-12-01"}, {"date"}),
    ({"within": "30d"}, {"date"}),
    ({"exists": True}, EVERYONE - {"null", "missing"}),
]


@pytest.mark.parametrize(("condition", "expected"), CASES, ids=[str(c) for c, _ in CASES])
def test_a_property_matches_only_values_of_the_type_the_condition_compares(
    db: Database, condition: dict[str, Any], expected: set[str]
) -> None:
    assert matching(db, condition) == expected


SEGMENT = """
kind: Segment
name: big-spenders
where: {event: purchase, within: 30d, property: {name: total, gte: 100}}
"""


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """An applied workspace with the segment above, its web service, and the API token in the environment."""
    monkeypatch.setenv("RECONCILER_API_TOKEN", "test-api-token")
    root = workspace(tmp_path, 1)
    (root / "spec/segments.yaml").write_text(SEGMENT)
    result = reconciler("apply", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    with WebServer(root) as base:
        yield root, base


BEARER = {"authorization": "Bearer test-api-token"}


def test_a_segment_counts_only_purchases_whose_total_is_a_number_at_least_100(served: tuple[Path, str]) -> None:
    root, base = served
    totals: list[object] = [150, 99, "abc", "5", "500", {"x": 1}, [500], True]
    events = [
        {"email": f"p{i}@example.com", "type": "purchase", "properties": {"total": total}}
        for i, total in enumerate(totals)
    ]
    with httpx.Client() as client:
        answer = client.post(f"{base}/api/v1/events", json=events, headers=BEARER)
    assert answer.json() == {"added": len(totals), "repeated": 0}, answer.text
    shown = reconciler("segments", "show", "big-spenders", cwd=root)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("Segment big-spenders: 1 member"), shown.stdout
    assert "  p0@example.com\n" in shown.stdout


CART = """
kind: Workflow
name: cart
trigger: {event: cart_abandoned, key: cart_id, property: {name: total, gte: 20}}
list: customers
re_entry: always
steps:
  - {id: wait, wait: 1h}
  - {id: reminder, send: mail/a, subject: Your cart}
"""


def test_a_workflow_event_trigger_starts_only_for_a_numeric_total(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        j = Journey(tmp_path, sink, port, CART)
        j.at("2026-03-02T08:00:00Z")
        j.person("ann@example.com", lists=("customers",), at="2026-03-02T08:00:00Z")
        for cart, total in [("A", "abc"), ("B", [500]), ("C", "500"), ("D", {"x": 1}), ("E", 25)]:
            j.event("ann@example.com", "cart_abandoned", at="2026-03-02T09:00:00Z", cart_id=cart, total=total)
        j.at("2026-03-02T09:05:00Z")
    assert [key for _, key, _, _ in j.runs("ann@example.com")] == ["E"]


FUTURE = "occurred_at is more than 24 hours in the future; send the time the event happened, with its offset"


@pytest.mark.parametrize(
    "occurred_at",
    [
        "2099-01-01T00:00:00Z",
        iso(datetime.now(UTC) + timedelta(days=2)),
        (datetime.now(UTC) + timedelta(hours=30)).astimezone().isoformat(),
    ],
)
def test_an_event_more_than_a_day_in_the_future_is_422_naming_it_and_nothing_is_stored(
    served: tuple[Path, str], occurred_at: str
) -> None:
    root, base = served
    events = [
        {"email": "a@example.com", "type": "purchase"},
        {"email": "b@example.com", "type": "purchase", "occurred_at": occurred_at},
    ]
    with httpx.Client() as client:
        answer = client.post(f"{base}/api/v1/events", json=events, headers=BEARER)
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["error"] == "nothing was written"
    ((problem,),) = [body["problems"]]
    assert problem["index"] == 1
    assert re.sub(r" \(.*?\)", "", problem["error"]) == FUTURE, problem["error"]
    assert query(root, "SELECT count(*) FROM events") == [(0,)]


def test_an_event_a_little_ahead_of_the_servers_clock_is_stored_as_sent(served: tuple[Path, str]) -> None:
    root, base = served
    ahead = iso(datetime.now(UTC) + timedelta(hours=23))
    event = {"email": "a@example.com", "type": "purchase", "occurred_at": ahead}
    with httpx.Client() as client:
        answer = client.post(f"{base}/api/v1/events", json=event, headers=BEARER)
    assert answer.json() == {"added": 1, "repeated": 0}, answer.text
    assert query(root, "SELECT occurred_at FROM events") == [(ahead,)]
