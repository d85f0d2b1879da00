"""Segment counts at a million contacts, and the snapshot of a million-member audience into the ledger.

A state database is generated with SQL: 1,000,000 contacts with the example workspace's fields, subscriptions to
its lists, 5,000,000 events over a year and 500,000 engagement rows. Every segment of the example workspace and
five harder ones are counted through the compiler (the same SQL `plan` and `segments show` run). Baselines measured
in the same run: an indexed count (subscribers of one list) and a full scan reading one JSON field of every contact.
Targets on the 2-core machine: every count under 1 s, the snapshot under 5 s, peak RSS under 300 MB.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from reconciler.audience import audience_sql
from reconciler.load import load_workspace
from reconciler.segments import segment_queries, workspace_compiler
from reconciler.spec.documents import Segment
from reconciler.state import open_db
from reconciler.state.audiences import count
from reconciler.state.campaigns import snapshot_audience
from reconciler.state.db import write

CONTACTS, EVENTS, ENGAGEMENT = 1_000_000, 5_000_000, 500_000
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parent.parent
NOT_LIGHT = {
    "not": {"any": [{"field": "favourite_roast", "in": ["light", "medium"]}, {"field": "brew_method", "eq": "filter"}]}
}
HARDER = {
    "nested-any-not": {
        "lists": ["newsletter"],
        "where": {"any": [{"all": [{"field": "total_spend", "gt": 100}, {"not": {"tag": "vip"}}]}, NOT_LIGHT]},
    },
    "bought-twice-90d": {"where": {"event": "purchase", "within": "90d", "count": {"gte": 2}}},
    "top-1000-spenders": {
        "lists": ["customers"],
        "order_by": {"field": "total_spend", "direction": "desc"},
        "limit": 1000,
    },
    "spent-100-this-year": {
        "where": {"event": "purchase", "within": "365d", "sum": {"property": "amount", "gte": 100}}
    },
    "espresso-openers": {
        "where": {"all": [{"in_segment": "espresso-people"}, {"engaged": {"action": "opened", "within": "30d"}}]}
    },
}


def generate(path: Path) -> None:
    db = open_db(path)
    conn = db.conn
    conn.execute("BEGIN")
    conn.execute(
        """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
        INSERT INTO contacts (id, email, email_hash, first_name, timezone, country, tags, fields, created_at,
                              updated_at)
        SELECT i, 'person' || i || '@example.com', printf('%064d', i), 'Name' || (i % 97),
               CASE i % 4 WHEN 0 THEN 'Europe/Warsaw' WHEN 1 THEN 'America/New_York' WHEN 2 THEN 'Asia/Tokyo' END,
               CASE i % 3 WHEN 0 THEN 'PL' WHEN 1 THEN 'DE' ELSE 'US' END,
               CASE WHEN i % 20 = 0 THEN '["vip"]' ELSE '[]' END,
               json_object('total_spend', (i * 7919) % 500 + 0.5, 'orders_count', i % 9,
                           'favourite_roast', CASE i % 3 WHEN 0 THEN 'light' WHEN 1 THEN 'medium' ELSE 'dark' END,
                           'brew_method', CASE i % 5 WHEN 0 THEN 'espresso' WHEN 1 THEN 'moka' ELSE 'filter' END,
                           'wholesale', json(CASE WHEN i % 31 = 0 THEN 'true' ELSE 'false' END)),
               '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z'
        FROM n
        """,
        (CONTACTS,),
    )
    for name, modulo in (("newsletter", 1), ("offers", 2), ("customers", 3)):
        conn.execute(
            "INSERT INTO subscriptions (contact_id, list, status, updated_at) "
            "SELECT id, ?, 'subscribed', created_at FROM contacts WHERE id % ? = 0",
            (name, modulo),
        )
    conn.execute(
        """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
        INSERT INTO events (contact_id, type, occurred_at, properties)
        SELECT (i * 48271) % ? + 1, CASE WHEN i % 4 = 0 THEN 'purchase' ELSE 'visit' END,
               strftime('%Y-%m-%dT%H:%M:%SZ', '2026-11-24T12:00:00', '-' || (i % 31536000) || ' seconds'),
               CASE WHEN i % 4 = 0 THEN json_object('amount', (i % 90) + 5) ELSE '{}' END
        FROM n
        """,
        (EVENTS, CONTACTS),
    )
    conn.execute(
        """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
        INSERT INTO engagement (contact_id, source_kind, source, stage, action, machine, at)
        SELECT (i * 69621) % ? + 1, 'campaign', 'spring-sale', '', CASE WHEN i % 3 = 0 THEN 'clicked' ELSE 'opened' END,
               CASE WHEN i % 7 = 0 THEN 1 ELSE 0 END,
               strftime('%Y-%m-%dT%H:%M:%SZ', '2026-11-24T12:00:00', '-' || (i % 15552000) || ' seconds')
        FROM n
        """,
        (ENGAGEMENT, CONTACTS),
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    db.close()


def timed(action):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    try:
        for name in ("spec", "campaigns", "templates"):
            shutil.copytree(REPO / name, folder / name)
        desired, problems = load_workspace(folder)
        if problems:
            sys.exit(f"the example workspace has problems: {problems[:3]}")
        segments = dict(desired.segments)
        for name, body in HARDER.items():
            segments[name] = Segment.model_validate({"kind": "Segment", "name": name, **body})
        desired = type(desired)(**{**desired.__dict__, "segments": segments})
        keep = os.environ.get("BENCH_SEGMENTS_DB")  # reuse a generated database between runs
        path = Path(keep) if keep else folder / "state.db"
        _, generated = timed(lambda: None if path.exists() else generate(path))
        db = open_db(path)
        indexed_sql = "SELECT count(*) FROM subscriptions WHERE list = 'offers' AND status = 'subscribed'"
        _, indexed = timed(lambda: db.conn.execute(indexed_sql).fetchone())
        scan_sql = "SELECT count(*) FROM contacts WHERE json_extract(fields, '$.total_spend') > 100"
        _, scan = timed(lambda: db.conn.execute(scan_sql).fetchone())
        print(
            f"segments: {CONTACTS:,} contacts, {EVENTS:,} events, {ENGAGEMENT:,} engagement rows "
            f"(generated in {generated:.0f} s)"
        )
        print(f"  baselines: indexed count {indexed * 1000:.0f} ms, full json_extract scan {scan * 1000:.0f} ms")
        worst = 0.0
        for name, members in segment_queries(desired, now=NOW).items():
            size, elapsed = timed(lambda members=members: count(db, members))
            worst = max(worst, elapsed)
            print(f"  {name:<22} {size:>9,} members  {elapsed * 1000:>6.0f} ms  ({elapsed / scan:.2f} x scan)")
        print(f"  slowest count: {worst:.2f} s ({'meets' if worst < 1 else 'MISSES'} the 1 s target)")
        query = audience_sql(
            workspace_compiler(desired, now=NOW),
            lists=["newsletter"],
            blocking=("bounced", "complained", "unsubscribed", "erased"),
        )

        def snapshot() -> int:
            with write(db):
                db.conn.execute("DELETE FROM ledger WHERE source = 'bench'")
                db.conn.execute("DELETE FROM campaigns WHERE name = 'bench'")
                db.conn.execute(
                    "INSERT INTO campaigns (name, status, reason, message, path, spec, content, "
                    "content_hash, updated_at) VALUES ('bench', 'scheduled', '', '', '', '{}', '{}', '', '')"
                )
                return snapshot_audience(
                    db,
                    "bench",
                    recipients=query.recipients,
                    due_at=lambda zone: "2026-11-24",
                    content_hash="x",
                    revision="bench",
                    at="2026-11-24T12:00:00Z",
                )

        queued, elapsed = timed(snapshot)
        print(
            f"  snapshot of the newsletter audience: {queued:,} ledger rows in {elapsed:.2f} s "
            f"({'meets' if elapsed < 5 else 'MISSES'} the 5 s target)"
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  peak RSS: {peak:.0f} MB ({'meets' if peak < 300 else 'MISSES'} the 300 MB target)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
