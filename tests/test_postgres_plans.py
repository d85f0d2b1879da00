"""What PostgreSQL's planner is told, so that it estimates a segment's conditions as they are: a misjudged count
makes it choose a plan that is right for a few rows (index probes per contact) where most contacts match, and a
segment of a million contacts took seconds more. Each test checks the planner's own estimate (EXPLAIN) against the
rows that match, and shows the form or the state without the mend misjudging it, so that it holds what it checks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reconciler.jsonsql import POSTGRESQL
from reconciler.state.contacts import ContactRow, import_batch, start_import
from reconciler.state.db import open_postgres, write
from reconciler.state.postgres import connect
from state_helpers import recorded_statements
from test_postgres_state import migrate

pytestmark = pytest.mark.postgresql
AT = "2026-11-24T12:00:00Z"


def _planned_rows(db: Any, sql: str, params: tuple[Any, ...] = ()) -> int:
    (plan,) = db.conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchone()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return int(plan[0]["Plan"]["Plan Rows"])


def _estimate(db: Any, condition: str) -> tuple[int, int]:
    """The rows the planner expects the typed rows meeting `condition` to be, and those that do."""
    sql = f"SELECT contact_id FROM contact_values WHERE {condition}"  # noqa: S608 - the test's own text
    (actual,) = db.conn.execute(f"SELECT count(*) FROM ({sql}) AS m").fetchone()  # noqa: S608
    return _planned_rows(db, sql), int(actual)


@pytest.mark.parametrize("before", ["0019_value_statistics", None], ids=["without", "with"])
def test_the_planner_expects_as_many_rows_as_a_field_condition_meets(postgres_url: str, before: str | None) -> None:
    """A field has one kind and values of its own: estimated as independent columns, `wholesale = false` among five
    fields came out tens of times too few, and the planner chose index probes per row for most of the contacts."""
    db: Any = connect(postgres_url, lock_timeout_ms=30_000)
    try:
        migrate(db, before=before)
        fields = (
            "jsonb_build_object('wholesale', false, 'orders', i % 9, 'spend', i % 500, 'roast', "
            "(ARRAY['light', 'dark', 'medium'])[i % 3 + 1], 'city', 'Łódź')::text"
        )
        db.conn.execute(
            "INSERT INTO contacts(email, email_hash, fields, created_at, updated_at) "  # noqa: S608
            f"SELECT 'p' || i || '@x', md5(i::text), {fields}, ?, ? FROM generate_series(1, 3000) AS n(i)",
            (AT, AT),
        )
        db.conn.execute("ANALYZE contact_values")
        estimated, actual = _estimate(db, "field = 'wholesale' AND kind = 'boolean' AND number = 0")
        assert actual == 3000
        if before is None:
            assert actual / 2 <= estimated <= actual * 2
        else:  # what the statistics mend
            assert estimated < actual / 5
    finally:
        db.close()


@pytest.mark.parametrize("form", ["among", "subquery"])
def test_a_list_condition_is_planned_with_the_lists_it_names(postgres_url: str, form: str) -> None:
    """`subscribed to small` and `subscribed to big` are told apart: from a subquery over the JSON array the planner
    assumed 100 names of average frequency for either (`jsonsql.PostgresDialect.among`). And a statement holding
    the function is never prepared, however often it runs: a plan made for any lists would call it once per row."""
    db: Any = connect(postgres_url, lock_timeout_ms=30_000)
    try:
        migrate(db)
        db.conn.execute(
            "INSERT INTO contacts(id, email, email_hash, created_at, updated_at) "
            "SELECT i, 'p' || i || '@x', md5(i::text), ?, ? FROM generate_series(1, 4020) AS n(i)",
            (AT, AT),
        )
        db.conn.execute(
            "INSERT INTO subscriptions(contact_id, list, status, updated_at) SELECT i, CASE WHEN i <= 4000 THEN 'big' "
            "ELSE 'small' END, 'subscribed', ? FROM generate_series(1, 4020) AS n(i)",
            (AT,),
        )
        db.conn.execute("ANALYZE subscriptions")
        condition = POSTGRESQL.among("s.list", "?") if form == "among" else f"s.list IN ({POSTGRESQL.json_values('?')})"
        sql = f"SELECT s.contact_id FROM subscriptions s WHERE {condition}"  # noqa: S608 - the dialect's own text
        small, big = (_planned_rows(db, sql, (json.dumps([name]),)) for name in ("small", "big"))
        if form == "subquery":  # what `among` mends
            assert small > 20 * 2 or big < 4000 / 2
            return
        assert (10 <= small <= 40, 2000 <= big <= 8000) == (True, True), (small, big)
        for _ in range(8):
            assert len(db.conn.execute(sql, (json.dumps(["small"]),)).fetchall()) == 20
        prepared = "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%json_text_array%'"
        assert db.conn.execute(prepared).fetchone()[0] == 0
    finally:
        db.close()


def test_a_batch_updating_contacts_finds_their_typed_rows_gone_without_a_rescan(postgres_url: str) -> None:
    """A file imported again updates every contact of a batch: the typed rows of fields gone are found by a join.
    As `NOT IN (subquery)` PostgreSQL, at its default work_mem, read the subquery's rows again for every typed row
    (2,000 contacts imported again took 10.9 s, 0.47 s before that statement)."""
    db = open_postgres(postgres_url)
    try:
        rows = [
            ContactRow.build(f"p{i}@x", {}, [], {f"f{n}": f"v{i}-{n}" for n in range(8)} | {"spend": i})
            for i in range(3000)
        ]
        for file in ("a.csv", "b.csv"):  # the second time, every row updates a contact
            import_id = start_import(db, file=file, at=AT)
            seen, stop = recorded_statements(db)
            try:
                import_batch(db, rows, import_id=import_id, at=AT, source=f"import:{file}", consent_text=None)
            finally:
                stop()
        (gone,) = [(sql, params) for sql, params in seen if sql.startswith("DELETE FROM contact_values")]
        with write(db):  # EXPLAIN of the statement as the import ran it, in the state the second batch left
            plan = "\n".join(str(row[0]) for row in db.conn.execute("EXPLAIN " + gone[0], gone[1]))
        assert "SubPlan" not in plan, [line for line in plan.splitlines() if "ANY" not in line]
        assert db.conn.execute("SELECT count(*) FROM contact_values").fetchone()[0] == 3000 * 9
    finally:
        db.close()
