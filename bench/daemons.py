"""Send rate of two daemons dispatching one campaign from one PostgreSQL database, against one daemon alone,
through the same smtp-sink.

Each "daemon" is a process of its own running one dispatch pass, as every `reconciler run` on PostgreSQL does beside
the others (the lease decides only who applies and starts campaigns): pages of due rows reserved with FOR UPDATE
SKIP LOCKED, a claim per row, render, MIME, SMTP, the outcome recorded. The campaign is bench/send.py's (~20 KB,
personalised, tracked links; 8 connections per daemon), started before the clock runs; the processes are made
ready first and then let go at once; the rate is every message sent over the time from the first start to the last
end. The database is a throwaway cluster (tests/pg_cluster.py: a unix socket, fsync off), a fresh database for
each run. Each process starts its render process before the go (a daemon's lives from pass to pass).

Prints both rates, the messages each daemon sent, and their ratio (target >= 1.6); and, from /proc and
pg_stat_activity (bench/_usage.py), what limits them: the CPU each kind of process used per message, the cores used
of the machine's (and by other work on it), and the share of the time PostgreSQL's sessions waited for a lock. On a
machine whose cores one daemon, its render process, PostgreSQL and smtp-sink already fill, two daemons cannot send
much faster: the bench then says how fast they could at most (the cores over the CPU a message costs).
BENCH_DAEMONS_RECIPIENTS overrides the audience size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import pg_cluster  # noqa: E402 (tests/pg_cluster.py)
import send  # noqa: E402 (bench/send.py: its workspace, contacts and sink)
from _usage import GROUPS, Usage, Used  # noqa: E402 (bench/_usage.py: not a benchmark of its own)

RECIPIENTS = int(os.environ.get("BENCH_DAEMONS_RECIPIENTS", "50000"))
TARGET = 1.6
CORES = os.cpu_count() or 1

START = """
import sys
from reconciler.clock import parse_instant
from reconciler.start import start_due
from reconciler.state.db import open_postgres

start_due(open_postgres(sys.argv[1], migrate=False), now=parse_instant(sys.argv[2]))
"""

PASS = """
import asyncio, json, sys, time
from pathlib import Path
from reconciler.clock import FixedClock, parse_instant
from reconciler.compose import RENDER_POOL_MIN
from reconciler.dispatch import Dispatcher
from reconciler.state.db import open_postgres

root, url, now = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
db = open_postgres(url, migrate=False)

async def main():
    dispatcher = Dispatcher(db, root=root, clock=FixedClock(parse_instant(now)))
    render = dispatcher.run.pool.for_send(RENDER_POOL_MIN)
    if render is not None:  # started now, not on the clock: a daemon's render process lives from pass to pass
        render.submit(int).result()
    print("ready", flush=True)
    sys.stdin.readline()  # the go, given to every process at once
    started = time.time()
    report = await dispatcher.run_pass()
    ended = time.time()
    await dispatcher.close()
    return report, started, ended

report, started, ended = asyncio.run(main())
print(json.dumps({"sent": report.count("sent"), "started": started, "ended": ended}), flush=True)
"""


def prepared(cluster: pg_cluster.Cluster, root: Path, port: int) -> str:
    """A fresh database holding the audience, the workspace applied and the campaign started: its URL."""
    url = cluster.database()
    send.write_workspace(root, port)
    send.write_contacts(root / "contacts.csv", RECIPIENTS)
    env = {**os.environ, "NO_COLOR": "1", "RECONCILER_STATE": url, "RECONCILER_SECRET": "bench-secret"}
    for args in (
        ["-m", "reconciler", "contacts", "import", "contacts.csv", "--list", "news", "--consent", "bench"],
        ["-m", "reconciler", "apply", "--now", send.NOW],
        ["-c", START, url, send.NOW],
    ):
        subprocess.run([sys.executable, *args], cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
    return url


@dataclass
class Run:
    sent: list[int]
    """Messages each daemon sent."""
    seconds: float
    """From the first start to the last end."""
    used: Used

    @property
    def rate(self) -> float:
        return sum(self.sent) / self.seconds


def dispatch(root: Path, url: str, daemons: int, *, sink: int, server: Path) -> Run:
    """`daemons` processes, each one dispatch pass, let go together, and what they used meanwhile."""
    env = {**os.environ, "NO_COLOR": "1", "RECONCILER_SECRET": "bench-secret"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PASS, str(root), url, send.NOW],
            cwd=root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(daemons)
    ]
    for process in processes:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    usage = Usage(daemons=[p.pid for p in processes], sink=sink, server_folder=server, url=url)
    usage.start()
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=3600)
        if process.returncode != 0:
            sys.exit(f"a dispatch process failed ({process.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    used = usage.stop()
    seconds = max(float(r["ended"]) for r in results) - min(float(r["started"]) for r in results)
    return Run([int(r["sent"]) for r in results], seconds, used)


def describe(daemons: int, run: Run) -> None:
    sent, used = sum(run.sent), run.used
    each = " + ".join(f"{n:,}" for n in run.sent)
    print(
        f"{daemons} daemon{'s' if daemons > 1 else ''}: {sent:,} messages ({each}) in {run.seconds:.1f} s = "
        f"{run.rate:,.0f} msgs/s ({send.CONNECTIONS} connections each)"
    )
    if not used.seconds:
        return
    costs = ", ".join(f"{group} {used.per_message(group, sent):.2f}" for group in GROUPS)
    total = sum(used.per_message(group, sent) for group in GROUPS)
    print(
        f"  CPU per message (ms): {costs} = {total:.2f}; cores used {used.cores(*GROUPS):.2f} of {CORES}, "
        f"by other work on the machine {used.cores('others'):.2f}; PostgreSQL sessions waiting for a lock "
        f"{used.share('lock'):.1%} of the time, running {used.share('active'):.1%}"
    )


def limits(one: Run, two: Run) -> str:
    """What keeps two daemons from sending twice as fast as one, from what the runs used."""
    if not two.used.seconds:
        return "(no /proc: not measured)"
    if two.used.share("lock") > 0.1:
        return f"locks: PostgreSQL's sessions waited for one {two.used.share('lock'):.0%} of the time"
    cost = sum(two.used.cpu[group] for group in GROUPS) / sum(two.sent)
    most = CORES / cost
    cpu = (
        f"the CPU: a message costs {1000 * cost:.2f} ms of CPU over the daemons, their render processes, PostgreSQL "
        f"and smtp-sink, so {CORES} cores send at most {most:,.0f} msgs/s = {most / one.rate:.2f}x one daemon's rate"
    )
    others = max(one.used.cores("others"), two.used.cores("others"))
    if others > 0.25 * CORES:
        return (
            f"{cpu}; but other work used up to {others:.2f} of the {CORES} cores meanwhile: the rates are the shares "
            "the scheduler gave, run again on an idle machine"
        )
    if most / one.rate < TARGET:
        return f"{cpu}, whose run kept {one.used.cores(*GROUPS):.2f} of {CORES} cores busy"
    return f"neither the CPU nor locks (the cores allow {most / one.rate:.2f}x): each daemon's own latency"


def main() -> None:
    try:
        cluster = pg_cluster.Cluster()
    except pg_cluster.NotInstalled as exc:
        sys.exit(f"bench/daemons.py needs PostgreSQL: {exc}")
    port = send.free_port()
    sink = send.start_sink(port)
    cluster.start()
    try:
        runs = {}
        with tempfile.TemporaryDirectory(prefix="bench-daemons-") as folder:
            for daemons in (1, 2):
                root = Path(folder) / f"daemons-{daemons}"
                url = prepared(cluster, root, port)
                runs[daemons] = dispatch(root, url, daemons, sink=sink.pid, server=cluster.folder)
                cluster.drop(url)
                describe(daemons, runs[daemons])
    finally:
        cluster.stop()
        sink.terminate()
        sink.wait()
    print(f"ratio two daemons/one: {runs[2].rate / runs[1].rate:.2f} (target >= {TARGET}; {CORES} CPUs)")
    print(f"limited by {limits(runs[1], runs[2])}")


if __name__ == "__main__":
    main()
