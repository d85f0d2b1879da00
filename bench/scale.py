"""Ten million contacts on both engines: import, segment counts, `plan` counting everything, a million-row snapshot.

Sizes: BENCH_SCALE_CONTACTS contacts (default 1,000,000) and BENCH_SCALE_EVENTS events (default five per contact);
the issue's figures are taken with 10,000,000 and 50,000,000. Each engine in the same run, one after the other: a
SQLite file, then a database in a throwaway PostgreSQL cluster (tests/pg_cluster.py, with more memory than the
tests give it); the PostgreSQL half is skipped, saying so, where PostgreSQL is not installed.

Per engine:
- import: `reconciler contacts import` of a generated CSV (the example workspace's fields and those of
  bench/validate.py's), in a fresh process, into an empty state, subscribing everyone to one list. Baseline: a bare
  `executemany` of the same rows into a plain table of the same database (the inserts no import can skip).
- the rest of the state in SQL (`add_activity`: subscriptions, suppressions, events, engagement), the one place to
  change when the storage of fields or event properties changes. On PostgreSQL the typed rows of fields and
  properties (`contact_values`, `event_values`) are written by the database's own triggers, as for every writer.
- segment counts: every segment of the example workspace and bench/segments.py's harder ones, through the compiler
  (what `plan` and `segments show` run). Baselines: an indexed count and a full scan reading one JSON field.
  Targets: the slowest under 1 s at 1M contacts (both engines), under 5 s at 10M (PostgreSQL).
- `reconciler plan` of bench/validate.py's 1,000-campaign, 50-segment workspace with a count budget nothing reaches
  (every audience counted), in a fresh process. Baseline: `reconciler validate` of it. Targets: under 5 s at 1M,
  under 30 s at 10M (PostgreSQL).
- the snapshot of a 1,000,000-member audience into the ledger (a list of every n-th contact). Target: under 5 s.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from reconciler.audience import audience_sql
from reconciler.load import load_workspace
from reconciler.segments import segment_queries, workspace_compiler
from reconciler.spec.documents import Segment
from reconciler.state.audiences import count
from reconciler.state.campaigns import snapshot_audience
from reconciler.state.db import write
from reconciler.state.engine import open_state
from reconciler.state.location import parse
from reconciler.state.portable import dialect, is_postgres
from reconciler.state.postgres import StateDatabase
from segments import HARDER  # bench/ is on sys.path when this script runs
from validate import generate as plan_workspace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import pg_cluster  # noqa: E402  (tests/pg_cluster.py: the tests' throwaway cluster)

CONTACTS = int(os.environ.get("BENCH_SCALE_CONTACTS", "1000000"))
EVENTS = int(os.environ.get("BENCH_SCALE_EVENTS", str(5 * CONTACTS)))
ENGAGEMENT = CONTACTS // 2
SNAPSHOT = min(CONTACTS, 1_000_000)
BARE_ROWS = min(CONTACTS, 200_000)
"""Rows the bare-insert baseline writes (a rate: more rows would only take longer)."""
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
EVERYTHING = "100000"
"""A count budget (seconds) no plan reaches: every audience and segment is counted."""
CLUSTER = {
    "shared_buffers": "'1GB'",
    "work_mem": "'64MB'",
    "maintenance_work_mem": "'512MB'",
    "max_wal_size": "'8GB'",
    "checkpoint_timeout": "'30min'",
    "effective_cache_size": "'8GB'",
}
"""A server sized as a small production one, not as the tests' (32 MB of shared buffers)."""
PLAN_FIELDS = """\
---
kind: Field
name: spend
type: number
---
kind: Field
name: orders
type: integer
---
kind: Field
name: roast
type: string
"""
"""bench/validate.py's fields its segments read, declared beside the example workspace's for the import."""
ROASTS, METHODS = ("light", "medium", "dark"), ("espresso", "moka", "filter", "filter", "filter")
PLACES = (("PL", "Europe/Warsaw"), ("DE", "America/New_York"), ("US", "Asia/Tokyo"))


def contact_rows(total: int) -> Iterator[dict[str, Any]]:
    """The generated contacts, as CSV rows: spread as bench/segments.py's (every 20th a vip, ...)."""
    for i in range(1, total + 1):
        country, zone = PLACES[i % 3]
        spend = (i * 7919) % 500
        roast = ROASTS[i % 3]
        yield {
            "email": f"person{i}@example.com",
            "first_name": f"Name{i % 97}",
            "country": country,
            "timezone": zone,
            "tags": "vip" if i % 20 == 0 else "",
            "total_spend": f"{spend}.5",
            "orders_count": i % 9,
            "favourite_roast": roast,
            "brew_method": METHODS[i % 5],
            "wholesale": "true" if i % 31 == 0 else "false",
            "spend": spend,
            "orders": i % 9,
            "roast": roast,
        }


def write_csv(path: Path) -> None:
    with path.open("w", newline="") as handle:
        rows = contact_rows(CONTACTS)
        first = next(rows)
        writer = csv.DictWriter(handle, fieldnames=list(first))
        writer.writeheader()
        writer.writerow(first)
        writer.writerows(rows)


SERIES = {
    False: "(WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) SELECT i FROM n) AS n",
    True: "generate_series(1, CAST(? AS BIGINT)) AS n(i)",
}
"""The numbers 1..? as rows `i`, on SQLite (False) and PostgreSQL (True)."""
AGO = {
    False: "strftime('%Y-%m-%dT%H:%M:%SZ', '2026-11-24T12:00:00', '-' || ({}) || ' seconds')",
    True: "to_char(TIMESTAMP '2026-11-24 12:00:00' - ({}) * INTERVAL '1 second', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
}
"""The instant {} seconds before NOW, as the state writes instants."""
AMOUNT = {False: "json_object('amount', (i % 90) + 5)", True: "jsonb_build_object('amount', (i % 90) + 5)::text"}
"""A purchase's properties."""


def add_activity(db: StateDatabase) -> None:
    """Everything but the contacts, in SQL on either engine: subscriptions (offers every 2nd contact, customers every
    3rd, orders every 5th, news everyone with every 13th unsubscribed, `snapshot` every n-th for SNAPSHOT members),
    1% suppressed, EVENTS events over a year (every 4th a purchase with an amount) and ENGAGEMENT opens and clicks
    (of bench/validate.py's campaigns). Contacts' ids run from 1 (the import made them in order). The SQL text is
    this module's own: no value reaches it but through parameters."""
    pg = is_postgres(db)
    lists = (("offers", 2, 0), ("customers", 3, 0), ("orders", 5, 0), ("news", 1, 13))
    with write(db):
        for name, modulo, unsubscribed in (*lists, ("snapshot", max(1, CONTACTS // SNAPSHOT), 0)):
            db.conn.execute(
                "INSERT INTO subscriptions (contact_id, list, status, updated_at) SELECT id, ?, CASE WHEN ? > 0 AND "
                "id % ? = 0 THEN 'unsubscribed' ELSE 'subscribed' END, created_at FROM contacts WHERE id % ? = 0",
                (name, unsubscribed, unsubscribed or 1, modulo),
            )
        db.conn.execute(
            "INSERT INTO suppressions (email_hash, reason, at) SELECT email_hash, CASE id % 3 WHEN 0 THEN 'bounced' "
            "WHEN 1 THEN 'complained' ELSE 'unsubscribed' END, created_at FROM contacts WHERE id % 100 = 7"
        )
        db.conn.execute(
            "INSERT INTO events (contact_id, type, occurred_at, properties) SELECT (i * 48271) % ? + 1, "  # noqa: S608
            f"CASE WHEN i % 4 = 0 THEN 'purchase' ELSE 'visit' END, {AGO[pg].format('i % 31536000')}, "
            f"CASE WHEN i % 4 = 0 THEN {AMOUNT[pg]} ELSE '{{}}' END FROM {SERIES[pg]}",
            (CONTACTS, EVENTS),
        )
        db.conn.execute(
            "INSERT INTO engagement (contact_id, source_kind, source, stage, action, machine, at) "  # noqa: S608
            "SELECT (i * 69621) % ? + 1, 'campaign', 'campaign-' || (i % 1000), '', "
            "CASE WHEN i % 3 = 0 THEN 'clicked' ELSE 'opened' END, CASE WHEN i % 7 = 0 THEN 1 ELSE 0 END, "
            f"{AGO[pg].format('i % 15552000')} FROM {SERIES[pg]}",
            (CONTACTS, ENGAGEMENT),
        )
    db.conn.execute("ANALYZE")


def timed(action: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def cli(
    root: Path, state: str, *args: str, expect: tuple[int, ...] = (0,), timeout: float | None = None
) -> float | None:
    """Seconds `reconciler -C root --state STATE ARGS` takes in a fresh process (None: not within `timeout`); exits
    when it fails, or when a plan says it left something uncounted."""
    command = [sys.executable, "-m", "reconciler", "-C", str(root), "--state", state, *args]
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    elapsed = time.perf_counter() - started
    if result.returncode not in expect or "not counted" in result.stdout:
        sys.exit(f"{' '.join(args[:2])} failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    return elapsed


def bare_rate(db: StateDatabase, path: Path) -> float:
    """Rows per second a bare executemany writes the file's first BARE_ROWS rows into a plain table (no index, no
    upsert, no JSON checks), in one transaction on the state's own connection."""
    rows = []
    with path.open(newline="") as handle:
        for _, row in zip(range(BARE_ROWS), csv.DictReader(handle), strict=False):
            builtin = [row.pop(name) for name in ("email", "first_name", "country", "timezone", "tags")]
            rows.append((*builtin, json.dumps(row)))
    db.conn.execute(
        "CREATE TABLE bench_bare (email TEXT, first_name TEXT, country TEXT, timezone TEXT, tags TEXT, fields TEXT)"
    )
    try:
        with write(db):
            _, elapsed = timed(lambda: db.conn.executemany("INSERT INTO bench_bare VALUES (?, ?, ?, ?, ?, ?)", rows))
    finally:
        db.conn.execute("DROP TABLE bench_bare")
    return len(rows) / elapsed


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def baselines(db: StateDatabase) -> tuple[float, float]:
    """Seconds of an indexed count (subscribers of one list) and of a full scan reading one JSON field of every
    contact, on this engine."""
    indexed_sql = "SELECT count(*) FROM subscriptions WHERE list = 'offers' AND status = 'subscribed'"
    spend = (
        "CAST(CAST(fields AS jsonb) ->> 'total_spend' AS numeric)"
        if is_postgres(db)
        else "json_extract(fields, '$.total_spend')"
    )
    _, indexed = timed(lambda: db.conn.execute(indexed_sql).fetchone())
    scan_sql = f"SELECT count(*) FROM contacts WHERE {spend} > 100"  # noqa: S608  (our own text)
    _, scan = timed(lambda: db.conn.execute(scan_sql).fetchone())
    return indexed, scan


def segment_counts(db: StateDatabase, example: Path) -> None:
    """Every segment of the example workspace and bench/segments.py's harder ones, counted through the compiler."""
    desired, problems = load_workspace(example)
    if problems:
        sys.exit(f"the example workspace has problems: {problems[:3]}")
    segments = dict(desired.segments)
    for name, body in HARDER.items():
        segments[name] = Segment.model_validate({"kind": "Segment", "name": name, **body})
    desired = dataclasses.replace(desired, segments=segments)
    indexed, scan = baselines(db)
    print(f"  baselines: indexed count {indexed * 1000:.0f} ms, full scan of one JSON field {scan * 1000:.0f} ms")
    worst, slowest = 0.0, ""
    figures = []
    for name, members in segment_queries(desired, now=NOW, dialect=dialect(db)).items():
        size, elapsed = timed(partial(count, db, members))
        figures.append(f"{name} {size:,} in {elapsed * 1000:.0f} ms")
        worst, slowest = max((worst, slowest), (elapsed, name))
    for line in range(0, len(figures), 3):
        print("    " + "; ".join(figures[line : line + 3]))
    target = 1.0 if CONTACTS <= 1_000_000 else 5.0
    print(
        f"  slowest segment count: {slowest} {worst:.2f} s ({worst / scan:.2f} x the scan; "
        f"{verdict(worst < target)} the {target:.0f} s target)"
    )


def snapshot(db: StateDatabase, example: Path) -> None:
    """The `snapshot` list's SNAPSHOT members queued into the ledger, as a campaign's start does."""
    desired, _ = load_workspace(example)
    query = audience_sql(
        workspace_compiler(desired, now=NOW, dialect=dialect(db)),
        lists=["snapshot"],
        blocking=("bounced", "complained", "unsubscribed", "erased"),
    )
    with write(db):
        db.conn.execute(
            "INSERT INTO campaigns (name, status, reason, message, path, spec, content, content_hash, updated_at) "
            "VALUES ('bench', 'scheduled', '', '', '', '{}', '{}', '', '')"
        )

    def run() -> int:
        with write(db):
            return snapshot_audience(
                db,
                "bench",
                recipients=query.recipients,
                due_at=lambda zone: "2026-11-24",
                content_hash="x",
                revision="bench",
                at="2026-11-24T12:00:00Z",
            )

    queued, elapsed = timed(run)
    print(f"  snapshot: {queued:,} ledger rows in {elapsed:.2f} s ({verdict(elapsed < 5)} the 5 s target)")


PLAN_TIMEOUT = float(os.environ.get("BENCH_SCALE_PLAN_TIMEOUT", "600"))
"""Seconds `plan` may take before the figure is given as "more than" (counting everything may take very long)."""


def engine(label: str, state: str, folder: Path) -> None:
    """Every figure on one engine, its state at `state` (a SQLite path or a PostgreSQL URL)."""
    example, contacts = folder / "example", folder / "contacts.csv"
    print(f"-- {label}", flush=True)
    imported = cli(
        example, state, "contacts", "import", str(contacts), "--list", "newsletter", "--preconfirmed", "--consent", "b"
    )
    assert imported is not None
    db = open_state(parse(state))
    try:
        first, last, total = db.conn.execute("SELECT min(id), max(id), count(*) FROM contacts").fetchone()
        if (first, last, total) != (1, CONTACTS, CONTACTS):
            sys.exit(f"the import made contacts {first}..{last} ({total}), not 1..{CONTACTS}")
        bare = bare_rate(db, contacts)
        rate = CONTACTS / imported
        print(
            f"  contacts import: {CONTACTS:,} rows in {imported:.1f} s = {rate:,.0f} rows/s; "
            f"baseline bare executemany {bare:,.0f} rows/s; ratio {rate / bare:.2f}"
        )
        _, filled = timed(lambda: add_activity(db))
        print(f"  (subscriptions, suppressions, {EVENTS:,} events, {ENGAGEMENT:,} engagement rows: {filled:.0f} s)")
        segment_counts(db, example)
        plan(state, folder / "plan")
        snapshot(db, example)  # last: its campaign row is not one `plan` could read
    finally:
        db.close()


def plan(state: str, root: Path) -> None:
    """`plan` of bench/validate.py's workspace counting every audience and segment, against `validate` of it."""
    moment = "2026-11-24T12:00:00Z"
    planned = cli(
        root, state, "plan", "--detailed-exitcode", "--count-budget", EVERYTHING, "--now", moment,
        expect=(2,), timeout=PLAN_TIMEOUT,
    )  # fmt: skip
    floor = cli(root, state, "validate")
    assert floor is not None
    target = 5.0 if CONTACTS <= 1_000_000 else 30.0
    if planned is None:
        print(f"  plan counting everything: more than {PLAN_TIMEOUT:.0f} s (MISSES the {target:.0f} s target)")
    else:
        print(
            f"  plan counting everything: {planned:.2f} s ({verdict(planned < target)} the {target:.0f} s target); "
            f"baseline validate {floor:.2f} s; ratio {planned / floor:.2f}"
        )


@contextmanager
def postgres_database() -> Iterator[str | None]:
    """A database in a throwaway cluster, or None where PostgreSQL is not installed."""
    try:
        cluster = pg_cluster.Cluster(CLUSTER)
    except pg_cluster.NotInstalled as exc:
        print(f"-- PostgreSQL: skipped: {exc}")
        yield None
        return
    try:
        cluster.start()
        yield cluster.database()
    finally:
        cluster.stop()


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        example = folder / "example"
        for name in ("spec", "campaigns", "templates"):
            shutil.copytree(REPO / name, example / name)
        (example / "spec" / "bench-fields.yaml").write_text(PLAN_FIELDS)
        plan_workspace(folder / "plan")
        _, written = timed(lambda: write_csv(folder / "contacts.csv"))
        print(f"scale: {CONTACTS:,} contacts, {EVENTS:,} events, {ENGAGEMENT:,} engagement rows per engine")
        print(f"  (CSV of the contacts written in {written:.0f} s)", flush=True)
        engine("SQLite", str(folder / "state.db"), folder)
        with postgres_database() as url:
            if url is not None:
                engine("PostgreSQL", url, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
