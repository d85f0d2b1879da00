"""Reports at scale: a campaign of 1,000,000 recipients with 3,000,000 engagement rows, and 1,000 campaigns.

`python bench/report.py [--recipients N]` builds the state directly in SQLite (contacts imported by the product;
ledger rows, engagement and purchases written as the dispatcher and the web service would have), then times:

- `reconciler report CAMPAIGN --format text`, `--format json` and `--format html` (targets: < 1 s, < 1 s, < 2 s);
- `reconciler report` over 1,000 campaigns (target < 1 s);
- the dashboard's report page under 20 concurrent readers while the daemon sends another campaign (p99 < 100 ms).

The baseline, measured in the same run, is one plain scan of the engagement table (`SELECT count(*), sum(machine)
FROM engagement`): the cost of reading the facts once. Each figure is printed with its ratio to it.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from send import free_port, start_sink, write_contacts, write_workspace  # noqa: E402
from web import wait_port  # noqa: E402

T0 = "2030-03-02T10:00:00Z"
TOKEN = "bench-report-token"
SECRET = "bench-report-secret-0123456789abcdef"
CAMPAIGNS = 1_000
READERS = 20
URLS = [f"https://shop.bench.example/p/{n}" for n in range(8)]


def reconciler(root: Path, *args: str, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "reconciler", *args], cwd=root, check=True, stdout=subprocess.DEVNULL, env=env
    )
    return time.perf_counter() - started


def prepare(root: Path, recipients: int, port: int) -> None:
    write_workspace(root, port)
    campaign = (root / "campaigns/monthly.yaml").read_text()
    campaign = campaign.replace("status: scheduled", "status: draft")
    (root / "campaigns/monthly.yaml").write_text(campaign + "goal: {event: purchase, within: 7d, value: total}\n")
    write_contacts(root / "contacts.csv", recipients)
    reconciler(root, "contacts", "import", "contacts.csv", "--list", "news", "--consent", "bench")
    reconciler(root, "apply", "--now", T0)
    random.seed(7)
    with sqlite3.connect(root / ".state/reconciler.db") as db:
        _campaigns(db)
        _ledger(db, "monthly", recipients, 1)
        _engagement(db, "monthly")
        _purchases(db, recipients)
        db.execute("ANALYZE")
    # the facts were written here, not through the product's writer: count them the way a migration would
    print(f"rebuilding the report counters from the facts: {reconciler(root, 'report', '--rebuild'):.1f} s")


def _campaigns(db: sqlite3.Connection) -> None:
    """CAMPAIGNS - 1 small sent campaigns beside `monthly`, each of 100 recipients (copies of its record)."""
    db.execute("UPDATE campaigns SET status = 'sent', started_at = ?, finished_at = ? WHERE name = 'monthly'", (T0, T0))
    columns = [row[1] for row in db.execute("PRAGMA table_info(campaigns)")]
    record = dict(zip(columns, db.execute("SELECT * FROM campaigns WHERE name = 'monthly'").fetchone(), strict=True))
    marks = ", ".join("?" * len(columns))
    for n in range(1, CAMPAIGNS):
        name = f"weekly-{n:04d}"
        copy = {**record, "name": name, "started_at": f"2029-{1 + n % 12:02d}-{1 + n % 28:02d}T10:00:00Z"}
        copy["spec"] = str(record["spec"]).replace('"monthly"', f'"{name}"')
        insert = f"INSERT INTO campaigns({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 (our own columns)
        db.execute(insert, [copy[c] for c in columns])
        _ledger(db, name, 100, 1 + (n * 100) % 50_000)


def _ledger(db: sqlite3.Connection, name: str, count: int, first: int) -> None:
    db.execute(
        "INSERT INTO ledger(source_kind, source, stage, contact_id, state, due_at, attempts, content_hash, revision, "
        "created_at, updated_at, sent_at) SELECT 'campaign', ?, '', id, 'sent', ?, 1, 'x', 'bench', ?, ?, ? "
        "FROM contacts WHERE id >= ? AND id < ?",
        (name, T0, T0, T0, T0, first, first + count),
    )


def _engagement(db: sqlite3.Connection, name: str) -> None:
    """3 engagement rows per recipient on average: human and machine opens over a week, clicks on eight links,
    a few unsubscribes and bounces."""
    rows = db.execute("SELECT id, contact_id FROM ledger WHERE source = ?", (name,)).fetchall()
    batch: list[tuple[object, ...]] = []
    for ledger_id, contact_id in rows:
        for _ in range(random.choice((0, 1, 2, 3, 3, 4, 5, 6))):
            action = random.choices(("opened", "clicked", "unsubscribed", "bounced"), (70, 28, 1, 1))[0]
            at = f"2030-03-{2 + random.randrange(7):02d}T{random.randrange(24):02d}:{random.randrange(60):02d}:00Z"
            detail = random.choice(URLS) if action == "clicked" else ("hard: 550" if action == "bounced" else None)
            machine = int(action in ("opened", "clicked") and random.random() < 0.2)
            batch.append((ledger_id, contact_id, "campaign", name, "", action, machine, at, detail))
        if len(batch) >= 100_000:
            _insert(db, batch)
    _insert(db, batch)


def _insert(db: sqlite3.Connection, batch: list[tuple[object, ...]]) -> None:
    db.executemany(
        "INSERT INTO engagement(ledger_id, contact_id, source_kind, source, stage, action, machine, at, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        batch,
    )
    batch.clear()


def _purchases(db: sqlite3.Connection, recipients: int) -> None:
    db.executemany(
        "INSERT INTO events(contact_id, type, occurred_at, properties) VALUES (?, 'purchase', ?, ?)",
        (
            (
                random.randrange(1, recipients + 1),
                f"2030-03-0{2 + random.randrange(8)}T12:00:00Z",
                f'{{"total": {n % 90}}}',
            )
            for n in range(recipients // 10)
        ),
    )


def timed(root: Path, *args: str, repeat: int = 3) -> float:
    return min(reconciler(root, *args) for _ in range(repeat))


def baseline(root: Path) -> float:
    best = float("inf")
    for _ in range(3):
        with sqlite3.connect(root / ".state/reconciler.db") as db:
            started = time.perf_counter()
            db.execute("SELECT count(*), sum(machine) FROM engagement").fetchone()
            best = min(best, time.perf_counter() - started)
    return best


def dashboard(root: Path) -> list[float]:
    """The dashboard's campaign page, 20 readers at once for 20 s, while the daemon sends a campaign."""
    smtp, web = free_port(), free_port()
    sink = start_sink(smtp)
    settings = root / "spec/settings.yaml"
    text = settings.read_text()
    settings.write_text(
        text.replace("port: 25,", f"port: {smtp},").replace("https://mail.bench.example", f"http://127.0.0.1:{web}")
    )
    env = {**os.environ, "RECONCILER_API_TOKEN": TOKEN, "RECONCILER_SECRET": SECRET, "NO_COLOR": "1"}
    sending = root / "campaigns/sending.yaml"
    sending.write_text(
        "kind: Campaign\nname: sending\nsubject: Now\ntemplate: news/monthly\naudience: {lists: [news]}\n"
        "send_at: now\nstatus: scheduled\n"
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run", "--port", str(web)], cwd=root, env=env, stderr=subprocess.DEVNULL
    )
    times: list[float] = []
    try:
        wait_port(web, path="/livez", seconds=120)
        base = f"http://127.0.0.1:{web}"
        with httpx.Client(base_url=base) as client:
            client.post("/dashboard/sign-in", data={"token": TOKEN})
            cookies = dict(client.cookies)
        stop = time.monotonic() + 20

        def reader() -> None:
            with httpx.Client(base_url=base, cookies=cookies, timeout=60) as client:
                while time.monotonic() < stop:
                    started = time.perf_counter()
                    client.get("/dashboard/campaigns/monthly").raise_for_status()
                    times.append(time.perf_counter() - started)

        threads = [threading.Thread(target=reader) for _ in range(READERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        daemon.terminate()
        daemon.wait(timeout=120)
        sink.terminate()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="build the state in this new folder and keep it")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-report-") as folder:
        root = options.keep or Path(folder)
        root.mkdir(exist_ok=True)
        started = time.perf_counter()
        prepare(root, options.recipients, 25)
        with sqlite3.connect(root / ".state/reconciler.db") as db:
            facts = db.execute("SELECT count(*) FROM engagement").fetchone()[0]
        print(f"state: {options.recipients:,} recipients, {facts:,} engagement rows, {CAMPAIGNS:,} campaigns "
              f"(built in {time.perf_counter() - started:.0f} s)")  # fmt: skip
        if os.environ.get("BENCH_PREPARE_ONLY"):
            return 0
        scan = baseline(root)
        print(f"baseline: one scan of the engagement table {scan:.3f} s")
        figures = {
            "report monthly (text)": (timed(root, "report", "monthly"), 1.0),
            "report monthly (json)": (timed(root, "report", "monthly", "--format", "json"), 1.0),
            "report monthly (html)": (timed(root, "report", "monthly", "--format", "html"), 2.0),
            f"report (overview of {CAMPAIGNS:,})": (timed(root, "report"), 1.0),
        }
        failed = 0
        for what, (seconds, target) in figures.items():
            verdict = "ok" if seconds < target else "OVER"
            failed += verdict != "ok"
            print(f"{what}: {seconds:.2f} s ({seconds / scan:.1f}x the scan; target < {target:g} s) {verdict}")
        times = dashboard(root)
        p99 = statistics.quantiles(times, n=100)[98] if len(times) > 100 else max(times)
        verdict = "ok" if p99 < 0.1 else "OVER"
        failed += verdict != "ok"
        p50 = statistics.median(times) * 1000
        print(f"dashboard page, {READERS} readers while sending: {len(times):,} requests, p50 {p50:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms (target < 100 ms) {verdict}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
