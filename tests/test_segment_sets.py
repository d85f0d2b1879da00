"""A plan's way of counting selects what the SQL of a campaign's snapshot selects, on both engines.

`plan` evaluates each segment once into a set of contacts (state/segment_sets.py: conditions shared between
segments, candidates narrowed in Python, few candidates probed one by one) and counts audiences and who lacks a
field from those sets (state/counting.py). Hypothesis generates the same worlds as test_segments_property.py; the
members must be the reference evaluator's, and the counts those of the one-query-per-audience SQL that
`audience.audience_sql` writes for the snapshot.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.audience import MARKETING_BLOCKING, Audience, Counting, audience_key, audience_sql
from reconciler.segments import Compiler, Sql
from reconciler.spec.documents import Segment
from reconciler.state.audiences import member_ids
from reconciler.state.counting import with_counts
from reconciler.state.observe import observe
from reconciler.state.portable import dialect
from reconciler.state.postgres import StateDatabase
from reconciler.state.segment_sets import SegmentSets
from segment_reference import Person, World
from test_segments_property import ALL_TYPES, LISTS, NOW, TYPES, _store, people, segments

REASONS = ("bounced", "complained", "unsubscribed")


def _audience_reasons(db: StateDatabase, *, candidates: Sql, reason: Sql) -> dict[str, int]:
    """Candidates counted by the first reason that keeps each out ('' = a recipient), in SQL as `audience_sql`
    writes it: the reference the counts made in Python are held to."""
    rows = db.conn.execute(
        f"SELECT {reason.text} AS why, count(*) FROM contacts c "  # noqa: S608 - compiled SQL, values as parameters
        "LEFT JOIN suppressions p ON p.email_hash = c.email_hash "
        f"WHERE {candidates.text} GROUP BY why",
        (*reason.params, *candidates.params),
    )
    return {str(why): int(n) for why, n in rows}


def _count_where(db: StateDatabase, recipients: Sql, condition: Sql) -> int:
    """How many of an audience's recipients meet `condition` (lack a field), in SQL: the reference."""
    row = db.conn.execute(
        "SELECT count(*) FROM contacts c LEFT JOIN suppressions p ON p.email_hash = c.email_hash "  # noqa: S608
        f"WHERE {recipients.text} AND {condition.text}",
        (*recipients.params, *condition.params),
    ).fetchone()
    return int(row[0])


def _suppress(db: Any, found: list[Person], reasons: list[str | None]) -> None:
    db.conn.execute("DELETE FROM suppressions")
    for person, reason in zip(found, reasons, strict=False):
        if reason is not None:
            db.conn.execute(
                "INSERT INTO suppressions (email_hash, reason, at) VALUES (?, ?, 'x')", (f"h{person.id}", reason)
            )


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],  # one database per engine
)
@given(
    found=people(),
    helper=segments(name="helper", with_segments=False),
    target=segments(name="target", with_segments=True),
    suppressed=st.lists(st.one_of(st.none(), st.sampled_from(REASONS)), max_size=14),
    lists=st.lists(st.sampled_from(LISTS), min_size=1, max_size=2, unique=True),
    exclude_lists=st.lists(st.sampled_from(LISTS), max_size=1),
    chosen=st.lists(st.sampled_from(("helper", "target")), max_size=2, unique=True),
    excluded=st.lists(st.sampled_from(("helper", "target")), max_size=1),
)
def test_sets_select_what_the_reference_and_the_snapshot_sql_select(
    state_db: Any,
    found: list[Person],
    helper: dict[str, Any],
    target: dict[str, Any],
    suppressed: list[str | None],
    lists: list[str],
    exclude_lists: list[str],
    chosen: list[str],
    excluded: list[str],
) -> None:
    documents = {"helper": helper, "target": target}
    world = World(found, ALL_TYPES, documents, NOW)
    models = {name: Segment.model_validate(doc) for name, doc in documents.items()}
    db = state_db
    _store(db, world)
    _suppress(db, found, suppressed)
    compiler = Compiler(models, TYPES, now=NOW, timezone="UTC", dialect=dialect(db))
    context = json.dumps(documents)
    for name in documents:
        expected = world.members(name)
        got = SegmentSets(db, compiler).members(name)
        probed = member_ids(db, compiler.probing().members(name))
        if documents[name].get("order_by"):
            assert (got, probed) == (expected, expected), context
        else:
            assert (sorted(got), sorted(probed)) == (sorted(expected), sorted(expected)), context

    audience = Audience(tuple(lists), tuple(exclude_lists), tuple(chosen), tuple(excluded), MARKETING_BLOCKING)
    key = audience_key(lists, exclude_lists, chosen, excluded)
    lacking = Sql(f"({compiler.value('spend').text}) IS NULL", compiler.value("spend").params)
    counting = Counting(
        compiler, ("helper", "target"), ("helper", "target"), {key: audience}, {("c", "spend"): (key, lacking)}
    )
    counted = with_counts(db, observe(db), counting)
    query = audience_sql(
        compiler,
        lists=lists,
        exclude_lists=exclude_lists,
        segments=chosen,
        exclude_segments=excluded,
        blocking=MARKETING_BLOCKING,
    )
    if chosen or excluded:
        reasons = _audience_reasons(db, candidates=query.candidates, reason=query.reason)
        assert counted.audience_counts[key] == {why: n for why, n in reasons.items() if n}, context
    assert counted.missing_counts["c"]["spend"] == _count_where(db, query.recipients, lacking), context
    assert counted.segment_counts == {name: len(world.members(name)) for name in documents}, context
