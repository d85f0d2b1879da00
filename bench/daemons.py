"""Send rate of two daemons dispatching one campaign from one PostgreSQL database, against one daemon alone,
through the same smtp-sink.

Each "daemon" is a process of its own running one dispatch pass, as every `reconciler run` on PostgreSQL does beside
the others (the lease decides only who applies and starts campaigns): pages of due rows reserved with FOR UPDATE
SKIP LOCKED, a claim per row, render, MIME, SMTP, the outcome recorded. The campaign is bench/send.py's (~20 KB,
personalised, tracked links; 8 connections per daemon), started before the clock runs; the processes are made
ready first and then let go at once; the rate is every message sent over the time from the first start to the last
end. The database is a throwaway cluster (tests/pg_cluster.py: a unix socket, fsync off), a fresh database for
each run. Prints both rates and their ratio (target >= 1.6). BENCH_DAEMONS_RECIPIENTS overrides the audience size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import pg_cluster  # noqa: E402 (tests/pg_cluster.py)
import send  # noqa: E402 (bench/send.py: its workspace, contacts and sink)

RECIPIENTS = int(os.environ.get("BENCH_DAEMONS_RECIPIENTS", "50000"))
TARGET = 1.6

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
from reconciler.dispatch import Dispatcher
from reconciler.state.db import open_postgres

root, url, now = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
db = open_postgres(url, migrate=False)

async def main():
    dispatcher = Dispatcher(db, root=root, clock=FixedClock(parse_instant(now)))
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


def dispatch(root: Path, url: str, daemons: int) -> tuple[int, float]:
    """`daemons` processes, each one dispatch pass, let go together: (messages sent, seconds first start to last
    end)."""
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
    sent = sum(int(r["sent"]) for r in results)
    return sent, max(float(r["ended"]) for r in results) - min(float(r["started"]) for r in results)


def main() -> None:
    try:
        cluster = pg_cluster.Cluster()
    except pg_cluster.NotInstalled as exc:
        sys.exit(f"bench/daemons.py needs PostgreSQL: {exc}")
    port = send.free_port()
    sink = send.start_sink(port)
    cluster.start()
    try:
        rates = {}
        with tempfile.TemporaryDirectory(prefix="bench-daemons-") as folder:
            for daemons in (1, 2):
                root = Path(folder) / f"daemons-{daemons}"
                url = prepared(cluster, root, port)
                sent, seconds = dispatch(root, url, daemons)
                rates[daemons] = sent / seconds
                cluster.drop(url)
                print(
                    f"{daemons} daemon{'s' if daemons > 1 else ''}: {sent:,} messages in {seconds:.1f} s = "
                    f"{rates[daemons]:,.0f} msgs/s ({send.CONNECTIONS} connections each)"
                )
    finally:
        cluster.stop()
        sink.terminate()
        sink.wait()
    print(f"ratio two daemons/one: {rates[2] / rates[1]:.2f} (target >= {TARGET}; {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
