"""Soak: a daemon under a scripted load and at rest, sampled until it is clear whether anything keeps growing.

`python bench/soak.py [--minutes 10] [--interval 1] [--sample 10]` runs `reconciler run` with a short pass interval
against Postfix's `smtp-sink` on loopback, and scripts, in minutes from the start:

- a rehearsal: one of each kind of work, small — a campaign of 1,000, 5 s of clicks and opens, an import, a spec
  change — so that pools made on first use (the render process, worker threads, SMTP connections) exist before
  the first figures count;
- idle until 15% of the time;
- a load until 30%: a campaign of 20,000 recipients, 50 clicks/s and 10 opens/s through HTTP, an import of 10,000
  contacts, a spec change every minute;
- idle until 50% (long enough for the first load's memory to settle), the same load again until 65%, and idle to
  the end: the longest rest, where a slow growth shows.

Every `--sample` seconds it reads, from /proc and the daemon's /metrics: resident memory (the daemon's and its render
process's), open descriptors, threads, the tasks of each event loop, and the sizes of the state database and its
write-ahead log. It prints the figures and the slope of memory over each idle stretch (leaving out its first
third, while the last of the load settles), and fails when resident memory grows more than 1 MB an hour in the
last rest (the shorter ones are printed, not judged: a few minutes cannot tell 1 MB/h from the allocator's noise),
when descriptors, threads or tasks at rest after the loads never come down to what they were at rest before them
(the least of each stretch: one sample may catch the sampler's own request in flight), when the second load leaves
the daemon more than 4 MB bigger than the first did, or when a message is not sent or /healthz is not ok.

The baseline is the daemon itself: its plateau at rest before the loads, measured in the same run. The daemon runs
with RECONCILER_CACHE_MB=4: SQLite's page caches (64 MB per connection by default) fill as the database grows with
each load, which is bounded by that setting, and would otherwise hide a leak of a few MB per load. A 10-minute run is
`make bench`'s; a release runs `--minutes 30` (or longer: the slopes only get sharper).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from reconciler.tokens import Signer  # noqa: E402
from send import free_port, start_sink, write_contacts, write_workspace  # noqa: E402
from web import wait_port  # noqa: E402

SECRET = "bench-soak-secret"
TOKEN = "bench-soak-token"
CAMPAIGN = 20_000
REHEARSAL = 1_000
IMPORTED = 10_000
CLICKS_PER_S = 50
OPENS_PER_S = 10
SETTLE = 30.0
RSS_LIMIT_MB_PER_H = 1.0
CACHE_MB = 4
PLATEAU_MB = 4.0
"""A second identical load may leave the daemon this much bigger than the first did (the allocator's arenas)."""
COUNTS = ("fds", "threads", "tasks_web", "tasks_send")
PHASES = (("idle 0", 0.15), ("load 1", 0.3), ("idle 1", 0.5), ("load 2", 0.65), ("idle 2", 1.0))
"""Each phase and the fraction of the time at which it ends (the rehearsal comes first)."""


@dataclass
class Sample:
    at: float
    phase: str
    rss_mb: float
    render_mb: float
    fds: int
    threads: int
    tasks_web: int
    tasks_send: int
    db_mb: float
    wal_mb: float
    sqlite_mb: float
    """Of rss, what SQLite holds: page caches fill up to their bound as the database grows."""


@dataclass
class Traffic:
    answered: dict[int, int] = field(default_factory=dict)
    failed: int = 0


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _rss_mb(pid: int) -> float:
    try:
        return int(_proc_status(pid)["VmRSS"].split()[0]) / 1024
    except (OSError, KeyError):
        return 0.0


def _loop_tasks(metrics: str) -> dict[str, int]:
    tasks = {}
    for line in metrics.splitlines():
        if line.startswith("reconciler_event_loop_tasks{"):
            name = line.split('loop="', 1)[1].split('"', 1)[0]
            tasks[name] = int(float(line.rsplit(" ", 1)[1]))
    return tasks


def _gauge(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


async def sample(client: httpx.AsyncClient, pid: int, state: Path, started: float, phase: str) -> Sample:
    metrics = (await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).text
    tasks = _loop_tasks(metrics)
    status = _proc_status(pid)
    wal = state.with_name(state.name + "-wal")
    return Sample(
        at=time.monotonic() - started,
        phase=phase,
        rss_mb=int(status["VmRSS"].split()[0]) / 1024,
        render_mb=sum(_rss_mb(child) for child in _children(pid)),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(status["Threads"]),
        tasks_web=tasks.get("web", 0),
        tasks_send=tasks.get("send", 0),
        db_mb=state.stat().st_size / 1e6,
        wal_mb=(wal.stat().st_size if wal.exists() else 0) / 1e6,
        sqlite_mb=_gauge(metrics, "reconciler_sqlite_memory_bytes") / 2**20,
    )


def campaign(root: Path, name: str, lists: str) -> None:
    (root / f"campaigns/{name}.yaml").write_text(
        f"kind: Campaign\nname: {name}\nsubject: The {name} letter\npreheader: From the roastery\n"
        f"template: news/monthly\naudience: {{lists: [{lists}]}}\nsend_at: now\nstatus: scheduled\n"
        f"utm: {{source: newsletter, campaign: {name}}}\n"
    )


def spec_change(root: Path, revision: int) -> None:
    """A new revision: the list's title changes (every pass after it applies a changed workspace)."""
    (root / "spec/lists.yaml").write_text(
        f"kind: List\nname: news\ntitle: News, revision {revision}\n---\nkind: List\nname: rehearsal\n"
        "title: Rehearsal\n---\nkind: List\nname: imported\ntitle: Imported\n"
    )


def sent_ids(state: Path, name: str) -> list[int]:
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=30) as db:
        return [
            row[0]
            for row in db.execute(
                "SELECT id FROM ledger WHERE source_kind = 'campaign' AND source = ? AND state = 'sent'",
                (name,),
            )
        ]


async def traffic(client: httpx.AsyncClient, state: Path, name: str, seconds: float, seen: Traffic) -> None:
    """Clicks and opens at their rates for `seconds`, on messages of campaign `name` already sent."""
    signer = Signer(SECRET.encode())
    target = f"https://shop.bench.example/a?utm_source=newsletter&utm_campaign={name}"
    ids: list[int] = []
    while not ids:
        ids = await asyncio.to_thread(sent_ids, state, name)
        await asyncio.sleep(0.5)
    requests: set[asyncio.Task[None]] = set()

    async def one(url: str) -> None:
        try:
            answer = await client.get(url, follow_redirects=False)
            seen.answered[answer.status_code] = seen.answered.get(answer.status_code, 0) + 1
        except httpx.HTTPError:
            seen.failed += 1

    step = 1 / (CLICKS_PER_S + OPENS_PER_S)
    deadline = time.monotonic() + seconds
    n = 0
    next_at = time.monotonic()
    while next_at < deadline:
        row = ids[n % len(ids)]
        if n % (CLICKS_PER_S + OPENS_PER_S) < OPENS_PER_S:
            url = f"/o/{signer.sign('open', row)}.gif"
        else:
            url = f"/c/{signer.sign('click', row, target)}?u={quote(target, safe='')}"
        task = asyncio.create_task(one(url))
        requests.add(task)
        task.add_done_callback(requests.discard)
        n += 1
        if n % 600 == 0:
            ids = await asyncio.to_thread(sent_ids, state, name)
        next_at += step
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    if requests:
        await asyncio.wait(requests)


async def run_command(root: Path, *args: str) -> None:
    env = {**os.environ, "NO_COLOR": "1", "RECONCILER_SECRET": SECRET}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reconciler", *args, cwd=root, env=env, stdout=subprocess.DEVNULL
    )
    if await process.wait() != 0:
        raise SystemExit(f"reconciler {' '.join(args)} failed")


def write_import(path: Path, count: int, prefix: str) -> None:
    with path.open("w") as out:
        out.write("email,first_name,city\n")
        for i in range(count):
            out.write(f"{prefix}{i}@import.bench.example,{prefix.title()}{i},City{i % 50}\n")


@dataclass
class Soak:
    root: Path
    client: httpx.AsyncClient
    seconds: float
    seen: Traffic = field(default_factory=Traffic)
    revision: int = 0

    def at(self, fraction: float) -> float:
        return self.seconds * fraction

    async def rehearse(self) -> None:
        self.revision += 1
        spec_change(self.root, self.revision)
        campaign(self.root, "rehearsal", "rehearsal")
        await traffic(self.client, self.root / ".state/reconciler.db", "rehearsal", 5, self.seen)
        write_import(self.root / "rehearsal.csv", 100, "early")
        await run_command(self.root, "contacts", "import", "rehearsal.csv", "--list", "imported", "--consent", "soak")

    async def load(self, cycle: int, until: float, started: float) -> None:
        state = self.root / ".state/reconciler.db"
        name = f"soak-{cycle}"
        campaign(self.root, name, "news")
        write_import(self.root / f"{name}.csv", IMPORTED, name)
        spent = until - (time.monotonic() - started)
        importing = asyncio.create_task(
            run_command(self.root, "contacts", "import", f"{name}.csv", "--list", "imported", "--consent", "soak")
        )
        clicking = asyncio.create_task(traffic(self.client, state, name, max(10.0, spent - 5), self.seen))
        while time.monotonic() - started + 60 < until:
            await asyncio.sleep(60)
            self.revision += 1
            spec_change(self.root, self.revision)
        await asyncio.gather(importing, clicking)


async def scenario(root: Path, pid: int, port: int, seconds: float, every: float) -> list[Sample]:
    """Runs the script and samples all along; the samples, labelled with their phase."""
    state = root / ".state/reconciler.db"
    samples: list[Sample] = []
    phase = ["rehearsal"]
    started = time.monotonic()
    # connections idle for 2 s are not reused: the server closes them after 5 s, and reusing one just as it does
    # fails the request ("Server disconnected without sending a response")
    limits = httpx.Limits(max_connections=100, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits) as client:
        soak = Soak(root, client, seconds)

        async def sampler() -> None:
            while True:
                samples.append(await sample(client, pid, state, started, phase[0]))
                print(_row(samples[-1]), flush=True)
                await asyncio.sleep(every - (time.monotonic() - started) % every)

        sampling = asyncio.create_task(sampler())
        try:
            await soak.rehearse()
            for name, until in PHASES:
                phase[0] = name
                if name.startswith("load"):
                    await soak.load(int(name[-1]), soak.at(until), started)
                await asyncio.sleep(max(0.0, soak.at(until) - (time.monotonic() - started)))
        finally:
            if sampling.done():  # it stops only on an error: the figures after it would be missing
                sampling.result()
            sampling.cancel()
        health = await client.get("/healthz")
    print(f"traffic answered {dict(sorted(soak.seen.answered.items()))}, failed {soak.seen.failed}")
    print(f"/healthz at the end: {health.status_code} {health.json()['status']}")
    if health.status_code != 200:
        raise SystemExit(f"FAIL: the daemon is not healthy at the end: {health.text}")
    return samples


def _row(s: Sample) -> str:
    return (
        f"{s.at:7.0f} s  {s.phase:<10} rss {s.rss_mb:6.1f} MB  render {s.render_mb:5.1f} MB  fds {s.fds:3}  "
        f"threads {s.threads:2}  tasks {s.tasks_web}/{s.tasks_send}  db {s.db_mb:6.2f} MB  wal {s.wal_mb:5.2f} MB  "
        f"sqlite {s.sqlite_mb:5.1f} MB"
    )


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least squares slope of (seconds, value) points, per hour."""
    if len(points) < 3:
        return float("nan")
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 3600


def at_rest(samples: list[Sample], phase: str) -> list[Sample]:
    """The samples of an idle stretch after it settled: SETTLE seconds or its first third, whichever is longer."""
    stretch = [s for s in samples if s.phase == phase]
    if not stretch:
        return []
    settled = stretch[0].at + max(SETTLE, (stretch[-1].at - stretch[0].at) / 3)
    return [s for s in stretch if s.at >= settled]


def judge(samples: list[Sample]) -> list[str]:
    """What grew where it must not; prints the figures the note needs."""
    problems = []
    rests = {name: at_rest(samples, name) for name, _ in PHASES if name.startswith("idle")}
    if len(rests["idle 0"]) < 2 or len(rests["idle 2"]) < 3 or not rests["idle 1"]:
        return ["too short to judge: run for more minutes"]
    for name, rest in rests.items():
        rss = slope_per_hour([(s.at, s.rss_mb) for s in rest])
        render = slope_per_hour([(s.at, s.render_mb) for s in rest])
        cache = slope_per_hour([(s.at, s.sqlite_mb) for s in rest])
        outside = slope_per_hour([(s.at, s.rss_mb - s.sqlite_mb) for s in rest])
        print(
            f"{name}: sqlite {rest[0].sqlite_mb:.1f} -> {rest[-1].sqlite_mb:.1f} MB, slope {cache:+.2f} MB/h; "
            f"rss outside sqlite slope {outside:+.2f} MB/h"
        )
        print(
            f"{name}: rss {rest[0].rss_mb:.1f} -> {rest[-1].rss_mb:.1f} MB over {rest[-1].at - rest[0].at:.0f} s, "
            f"slope {rss:+.2f} MB/h; render process {rest[-1].render_mb:.1f} MB, slope {render:+.2f} MB/h; "
            f"wal at most {max(s.wal_mb for s in rest):.2f} MB"
        )
        if name == "idle 2" and max(rss, render) > RSS_LIMIT_MB_PER_H:
            problems.append(f"resident memory grows {max(rss, render):.2f} MB/h at rest in {name}")
    first, second, last = rests["idle 0"][-1], rests["idle 1"][-1], rests["idle 2"][-1]
    for count in COUNTS:
        # the least seen at rest: a sample may catch the sampler's own request or connection in flight
        before, after = (min(getattr(s, count) for s in rests[name]) for name in ("idle 0", "idle 2"))
        print(f"{count}: at least {before} at rest before the loads, {after} after")
        if after > before:
            problems.append(f"{count}: {before} at rest before the loads, {after} after")
    grown = last.rss_mb - second.rss_mb
    print(
        f"rss at rest: {first.rss_mb:.1f} MB before the loads, {second.rss_mb:.1f} MB after the first, "
        f"{last.rss_mb:.1f} MB after the second ({grown:+.1f} MB); peak {max(s.rss_mb for s in samples):.1f} MB; "
        f"database {last.db_mb:.1f} MB, wal at most {max(s.wal_mb for s in samples):.2f} MB"
    )
    if grown > PLATEAU_MB:
        problems.append(f"the second load left {grown:.1f} MB more than the first (limit {PLATEAU_MB} MB)")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the soak runs (default 10)")
    parser.add_argument("--interval", type=float, default=1.0, help="the daemon's pass interval in seconds")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    options = parser.parse_args()
    smtp_port, web_port = free_port(), free_port()
    sink = start_sink(smtp_port)
    env = {
        **os.environ,
        "NO_COLOR": "1",
        "RECONCILER_SECRET": SECRET,
        "RECONCILER_API_TOKEN": TOKEN,
        "RECONCILER_CACHE_MB": str(CACHE_MB),
    }
    try:
        with tempfile.TemporaryDirectory(prefix="bench-soak-") as folder:
            root = Path(folder)
            write_workspace(root, smtp_port)
            (root / "campaigns/monthly.yaml").unlink()
            settings = root / "spec/settings.yaml"
            settings.write_text(
                settings.read_text().replace("https://mail.bench.example", f"http://127.0.0.1:{web_port}")
            )
            spec_change(root, 0)
            write_contacts(root / "contacts.csv", CAMPAIGN)
            write_contacts(root / "rehearsal.csv", REHEARSAL)
            for csv, name in (("contacts.csv", "news"), ("rehearsal.csv", "rehearsal")):
                command = [
                    sys.executable,
                    "-m",
                    "reconciler",
                    "contacts",
                    "import",
                    csv,
                    "--list",
                    name,
                    "--consent",
                    "soak",
                ]
                subprocess.run(command, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
            command = [sys.executable, "-m", "reconciler", "run", "--port", str(web_port)]
            daemon = subprocess.Popen(
                [*command, "--interval", str(options.interval)], cwd=root, env=env, stderr=subprocess.DEVNULL
            )
            try:
                wait_port(web_port, path="/livez", seconds=60)
                samples = asyncio.run(scenario(root, daemon.pid, web_port, options.minutes * 60, options.sample))
                with sqlite3.connect(root / ".state/reconciler.db") as db:
                    query = "SELECT count(*) FROM ledger WHERE source LIKE 'soak-%' AND state = 'sent'"
                    sent = db.execute(query).fetchone()
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=120)
    finally:
        sink.terminate()
    print(f"two campaigns of {CAMPAIGN:,}: {sent[0]:,} sent; the daemon stopped with status {daemon.returncode}")
    problems = judge(samples)
    if sent[0] != 2 * CAMPAIGN or daemon.returncode != 0:
        problems.append(f"{sent[0]:,} of {2 * CAMPAIGN:,} messages were sent, the daemon exited {daemon.returncode}")
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print("ok: nothing grew at rest, and every message and request went through")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
