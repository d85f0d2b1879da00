"""Workflow runs at scale: 1,000,000 contacts with 1,000,000 active runs.

Measured in the same run, against Postfix's `smtp-sink` on loopback (only its test program runs):

- advance: one runner pass over 100,000 due runs whose next step is not a send (a tag, then a long wait),
  target ≥ 20,000 runs/s;
- sends: 50,000 runs reach a send step; the runner queues their messages and one dispatch pass sends them, against
  a 50,000-recipient campaign sent by the same dispatcher to the same sink (target ≥ 0.8 of its rate);
- events: 100,000 events posted to the running daemon's API in batches of 1,000, counted until each has started
  its run (target ≥ 10,000 events/s);
- peak RSS of every process that did the work (target < 250 MB).

The 1,000,000 runs are written straight into the state (an import of 1,000,000 contacts, then one INSERT … SELECT),
not started one by one: starting them is what the events figure measures. BENCH_WORKFLOW_CONTACTS scales it down.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from send import free_port, start_sink, write_contacts, write_workspace  # noqa: E402
from web import wait_port  # noqa: E402

CONTACTS = int(os.environ.get("BENCH_WORKFLOW_CONTACTS", "1000000"))
ADVANCE = min(100_000, CONTACTS // 10)
SENDS = min(50_000, CONTACTS // 20)
EVENTS = min(100_000, CONTACTS // 10)
T0 = "2026-11-24T10:00:00Z"
T1 = "2026-11-24T10:01:00Z"
T2 = "2026-11-24T10:02:00Z"
FAR = "2027-01-01T00:00:00Z"
TOKEN = "bench-workflows-token"

WORKFLOWS = """
kind: Workflow
name: steps
trigger: {event: bench_steps}
list: news
steps:
  - {id: tag-it, tag: bench}
  - {id: hold, wait: 30d}
---
kind: Workflow
name: mails
trigger: {event: bench_mails}
list: news
steps:
  - {id: letter, send: news/monthly, subject: "{{ contact.first_name }}, the {{ contact.tier }} letter"}
  - {id: after, wait: 30d}
---
kind: Workflow
name: arrivals
trigger: {event: bench_event, key: n}
list: news
re_entry: always
steps:
  - {id: later, wait: 30d}
"""

PASS = """
import asyncio, json, sys, time
from pathlib import Path
from reconciler.clock import FixedClock, parse_instant
from reconciler.dispatch import Dispatcher
from reconciler.start import start_due
from reconciler.state.db import open_db
from reconciler.workflow_runs import run_workflows

root, what, now = Path(sys.argv[1]), sys.argv[2], parse_instant(sys.argv[3])
db = open_db(root / ".state/reconciler.db")
figures = {}
if what == "campaign":
    start_due(db, now=now)
else:
    started = time.perf_counter()
    report = run_workflows(db, now=now)
    figures.update(advanced=report.advanced, queued=report.queued, run_seconds=time.perf_counter() - started)
if what != "advance":
    async def send():
        dispatcher = Dispatcher(db, root=root, clock=FixedClock(now))
        started = time.perf_counter()
        report = await dispatcher.run_pass()
        seconds = time.perf_counter() - started
        await dispatcher.close()
        return report.count("sent"), seconds
    figures["sent"], figures["send_seconds"] = asyncio.run(send())
status = Path("/proc/self/status").read_text()
figures["rss_mb"] = int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) / 1024
print(json.dumps(figures))
"""


def reconciler(root: Path, *args: str) -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    subprocess.run(
        [sys.executable, "-m", "reconciler", *args], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL
    )


def one_pass(root: Path, what: str, now: str) -> dict[str, float]:
    env = {**os.environ, "NO_COLOR": "1", "RECONCILER_SECRET": "bench", "RECONCILER_RENDER_PROCESSES": "1"}
    result = subprocess.run(
        [sys.executable, "-c", PASS, str(root), what, now],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def prepare(root: Path, port: int) -> None:
    """1,000,000 contacts on `news` (the first SENDS also on `camp`, the campaign's list), the workflows applied,
    and 1,000,000 active runs: ADVANCE due now on a tag, SENDS due a minute later on a send, the rest waiting."""
    write_workspace(root, port)
    campaign = (root / "campaigns/monthly.yaml").read_text()
    (root / "campaigns/monthly.yaml").write_text(campaign.replace("lists: [news]", "lists: [camp]"))
    lists = "kind: List\nname: news\ntitle: News\n---\nkind: List\nname: camp\ntitle: Campaign\n"
    (root / "spec/lists.yaml").write_text(lists)
    (root / "spec/workflows.yaml").write_text(textwrap.dedent(WORKFLOWS).lstrip())
    write_contacts(root / "contacts.csv", CONTACTS)
    with (root / "contacts.csv").open() as full, (root / "camp.csv").open("w") as part:
        for index, line in enumerate(full):
            if index > SENDS:
                break
            part.write(line)
    reconciler(root, "contacts", "import", "contacts.csv", "--list", "news", "--consent", "bench")
    reconciler(root, "contacts", "import", "camp.csv", "--list", "camp", "--consent", "bench")
    reconciler(root, "apply", "--now", T0)
    with sqlite3.connect(root / ".state/reconciler.db") as db:
        db.execute(
            "INSERT INTO workflow_runs(workflow, contact_id, key, list, state, step, entered_at, due_at, started_at, "
            "revision, trigger) SELECT CASE WHEN id <= ? THEN 'mails' ELSE 'steps' END, id, '', 'news', 'active', "
            "CASE WHEN id <= ? THEN 'letter' WHEN id <= ? THEN 'tag-it' ELSE 'hold' END, ?, "
            "CASE WHEN id <= ? THEN ? WHEN id <= ? THEN ? ELSE ? END, ?, 'bench', 'bench' FROM contacts",
            (SENDS, SENDS, SENDS + ADVANCE, T0, SENDS, T1, SENDS + ADVANCE, T0, FAR, T0),
        )


def events(root: Path) -> tuple[float, float]:
    """EVENTS events through the API into runs, by a running daemon: (events/s, the daemon's peak RSS in MB)."""
    port = free_port()
    env = {**os.environ, "NO_COLOR": "1", "RECONCILER_SECRET": "bench", "RECONCILER_API_TOKEN": TOKEN}
    command = [sys.executable, "-m", "reconciler", "run", "--port", str(port), "--interval", "1"]
    daemon = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, path="/livez", seconds=120)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        started = time.perf_counter()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120) as client:
            for first in range(0, EVENTS, 1000):
                batch = [
                    {"email": f"reader{i}@bench.example", "type": "bench_event", "properties": {"n": i}}
                    for i in range(first, min(first + 1000, EVENTS))
                ]
                client.post("/api/v1/events", json=batch).raise_for_status()
        posted = time.perf_counter() - started
        with sqlite3.connect(root / ".state/reconciler.db", timeout=60) as db:
            query = "SELECT count(*) FROM workflow_runs WHERE workflow = 'arrivals'"
            while db.execute(query).fetchone()[0] < EVENTS:
                if time.perf_counter() - started > 600:
                    raise SystemExit("the events did not all start runs within 10 minutes")
                time.sleep(0.05)
        seconds = time.perf_counter() - started
        print(f"events: posted in {posted:.2f} s, every run started {seconds - posted:.2f} s later")
        status = Path(f"/proc/{daemon.pid}/status").read_text()
        rss = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024
    finally:
        daemon.terminate()
        daemon.wait(60)
    return EVENTS / seconds, rss


def main() -> int:
    port = free_port()
    sink = start_sink(port)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-workflows-") as folder:
            root = Path(folder)
            started = time.perf_counter()
            prepare(root, port)
            seconds = time.perf_counter() - started
            print(f"{CONTACTS:,} contacts and {CONTACTS:,} active runs prepared in {seconds:.0f} s")
            advance = one_pass(root, "advance", T0)
            sends = one_pass(root, "sends", T1)
            reconciler(root, "apply", "--now", T2)  # nothing changes; the campaign is already scheduled for now
            campaign = one_pass(root, "campaign", T2)
            event_rate, daemon_rss = events(root)
    finally:
        sink.terminate()
        sink.wait()
    advance_rate = advance["advanced"] / advance["run_seconds"]
    send_rate = sends["sent"] / sends["send_seconds"]
    campaign_rate = campaign["sent"] / campaign["send_seconds"]
    peak = max(advance["rss_mb"], sends["rss_mb"], campaign["rss_mb"], daemon_rss)
    print(f"advance: {advance['advanced']:,} due runs in {advance['run_seconds']:.2f} s = {advance_rate:,.0f} runs/s")
    print(
        f"sends: {sends['queued']:,} queued by the runner in {sends['run_seconds']:.2f} s; {sends['sent']:,} sent at "
        f"{send_rate:,.0f} msgs/s; campaign of {campaign['sent']:,} at {campaign_rate:,.0f} msgs/s; "
        f"ratio {send_rate / campaign_rate:.2f}"
    )
    print(f"events: {EVENTS:,} through the API into runs at {event_rate:,.0f} events/s")
    print(
        f"peak RSS: advance {advance['rss_mb']:.0f} MB, sends {sends['rss_mb']:.0f} MB, campaign "
        f"{campaign['rss_mb']:.0f} MB, daemon {daemon_rss:.0f} MB"
    )
    failures = []
    if advance_rate < 20_000:
        failures.append(f"advance {advance_rate:,.0f} runs/s < 20,000")
    if send_rate < 0.8 * campaign_rate:
        failures.append(f"workflow sends at {send_rate / campaign_rate:.2f} of the campaign rate < 0.8")
    if event_rate < 10_000:
        failures.append(f"events {event_rate:,.0f}/s < 10,000")
    if peak >= 250:
        failures.append(f"peak RSS {peak:.0f} MB >= 250 MB")
    for failure in failures:
        print(f"BELOW TARGET: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
