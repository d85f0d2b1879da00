"""`reconciler plan` of 1,000 campaigns against 1,000,000 contacts.

The workspace is bench/validate.py's (1,000 campaigns, 50 segments, 200 templates). The state holds a million
contacts with 2.2 million subscriptions over four lists, some unsubscribed, 1% suppressed, generated with SQL.
The command runs as in CI, in a fresh process. The baseline, measured in the same run, is `reconciler validate`
of the same workspace: a plan is a validate plus the diff and the audience counts, so the ratio shows what the
diff costs. Target: plan under 5 s. Every campaign here uses two top-N segments with event and engagement
conditions (50 distinct audiences): counting all of them takes minutes at this size, so the figure is taken with
`--count-budget 0` and, for comparison, with a 2 s budget.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from reconciler.state import open_db
from validate import generate, timed  # bench/ is on sys.path when this script runs

CONTACTS = 1_000_000
RUNS = 3


def fill(db_path: Path, lists: tuple[str, str, str, str] = ("news", "offers", "customers", "orders")) -> None:
    """CONTACTS contacts on four lists (every contact, every 2nd, 3rd and 5th), some unsubscribed, 1% suppressed."""
    db = open_db(db_path)
    conn = db.conn
    conn.execute("BEGIN")
    conn.execute(
        """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
        INSERT INTO contacts (id, email, email_hash, first_name, timezone, tags, fields, created_at, updated_at)
        SELECT i, 'person' || i || '@example.com', printf('%064d', i), 'Name' || (i % 97),
               CASE i % 4 WHEN 0 THEN 'Europe/Warsaw' WHEN 1 THEN 'America/New_York' WHEN 2 THEN 'Asia/Tokyo'
                          ELSE NULL END,
               '[]', json_object('spend', (i * 7919) % 500, 'orders', i % 9), '2026-01-01T00:00:00Z',
               '2026-01-01T00:00:00Z'
        FROM n
        """,
        (CONTACTS,),
    )
    for list_name, modulo, unsubscribed in zip(lists, (1, 2, 3, 5), (13, 11, 17, 0), strict=True):
        conn.execute(
            "INSERT INTO subscriptions (contact_id, list, status, updated_at) "
            "SELECT id, ?, CASE WHEN ? > 0 AND id % ? = 0 THEN 'unsubscribed' ELSE 'subscribed' END, created_at "
            "FROM contacts WHERE id % ? = 0 OR ? = 1",
            (list_name, unsubscribed, unsubscribed or 1, modulo, modulo),
        )
    conn.execute(
        "INSERT INTO suppressions (email_hash, reason, at) SELECT email_hash, CASE id % 3 WHEN 0 THEN 'bounced' "
        "WHEN 1 THEN 'complained' ELSE 'unsubscribed' END, created_at FROM contacts WHERE id % 100 = 7"
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    db.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        generate(root)
        started = time.perf_counter()
        fill(root / ".state" / "reconciler.db")
        filled = time.perf_counter() - started
        ours = statistics.median(
            timed(root, "plan", "--detailed-exitcode", "--count-budget", "0", expect=(2,)) for _ in range(RUNS)
        )
        budgeted = statistics.median(
            timed(root, "plan", "--detailed-exitcode", "--count-budget", "2", expect=(2,)) for _ in range(RUNS)
        )
        floor = statistics.median(timed(root, "validate") for _ in range(RUNS))
    print(f"plan: 1,000 campaigns against {CONTACTS:,} contacts (state generated in {filled:.1f} s)")
    print(
        f"  reconciler plan --count-budget 0 (new process, median of {RUNS}): {ours:.2f} s "
        f"({'meets' if ours < 5 else 'MISSES'} the 5 s target; list audiences counted, segment audiences not)"
    )
    print(f"  reconciler plan --count-budget 2: {budgeted:.2f} s (segment counts for 2 s, the rest marked not counted)")
    print(f"  baseline: reconciler validate of the same workspace: {floor:.2f} s")
    print(f"  ratio plan / validate: {ours / floor:.2f} (the diff and the audience counts cost {ours - floor:.2f} s)")


if __name__ == "__main__":
    main()
