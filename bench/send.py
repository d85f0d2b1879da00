"""Send rate of a 100,000-recipient campaign through the SMTP transport, against a bare SMTP client, on each engine.

The sink is Postfix's `smtp-sink` test program on loopback (Debian package `postfix`; only the test program runs,
never the mail server): aiosmtpd tops out near 1,000 messages/s and would hide our speed. The campaign is a ~20 KB
MJML newsletter with 10 personalised fields and 5 tracked links. Measured in the same run:

- ours: a fresh process that starts the campaign (the audience snapshot) and runs one dispatch pass: claim per
  row, render, build the MIME bytes, send, record the outcome; on a SQLite file, then on a database in a
  throwaway PostgreSQL cluster (tests/pg_cluster.py; skipped where PostgreSQL is not installed);
- baseline: a bare aiosmtplib client sending one pre-built message's bytes with `sendmail` over the same number
  of connections to the same sink.

Prints messages/s for both, their ratio (target >= 0.6), the rates of the first and of the last tenth of the
messages (a per-message cost that grows with the ledger shows as a last tenth slower than the first), and our peak
RSS for the full and a fifth of the audience (target < 200 MB and not growing with the audience).
BENCH_SEND_RECIPIENTS overrides the audience size (the large-sender figure: 1,000,000, whose ratio should be within
10% of 100,000's); BENCH_SEND_ENGINES=sqlite or =postgresql runs one engine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pg_cluster  # tests/pg_cluster.py: the tests' throwaway cluster

RECIPIENTS = int(os.environ.get("BENCH_SEND_RECIPIENTS", "100000"))
CONNECTIONS = 8
CLUSTER = {"shared_buffers": "'1GB'", "work_mem": "'64MB'", "max_wal_size": "'8GB'", "checkpoint_timeout": "'30min'"}
"""A server sized as a small production one (as bench/scale.py's), not as the tests' (32 MB of shared buffers)."""
NOW = "2026-11-24T10:00:00Z"
FIELDS = [
    ("city", "string"),
    ("roast", "string"),
    ("spend", "number"),
    ("orders", "integer"),
    ("member_since", "date"),
    ("points", "integer"),
    ("tier", "string"),
    ("grind", "string"),
]

ARTICLE = """
    <mj-section><mj-column>
      <mj-image src="https://cdn.bench.example/img/{n}.jpg" alt="Article {n}" width="560px" />
      <mj-text font-size="22px" font-weight="bold">Story {n}: what we roasted this month</mj-text>
      <mj-text line-height="1.6">{lorem}</mj-text>
    </mj-column></mj-section>"""
LOREM = (
    "We travelled to the highlands to meet the growers who harvest by hand, sorting every cherry twice before "
    "it is washed and dried on raised beds for three weeks. "
) * 6
TEMPLATE = (
    """<mjml>
  <mj-head><mj-preview>{{ preheader }}</mj-preview>
    <mj-attributes><mj-all font-family="Helvetica, Arial, sans-serif" /><mj-text color="#333333" /></mj-attributes>
  </mj-head>
  <mj-body background-color="#f4f1ec">
    <mj-section><mj-column>
      <mj-text font-size="26px">Hello {{ contact.first_name | default('friend') }} from {{ contact.city }}</mj-text>
      <mj-text>You have {{ contact.points }} points, tier {{ contact.tier }}, {{ contact.orders }} orders and spent
        {{ contact.spend }} since {{ contact.member_since }}. Your usual: {{ contact.roast }}, {{ contact.grind }}.
        We write to {{ contact.email }} ({{ contact.last_name }}).</mj-text>
      <mj-button href="https://shop.bench.example/sale?c={{ contact.tier }}">Shop the sale</mj-button>
    </mj-column></mj-section>"""
    + "".join(ARTICLE.format(n=n, lorem=LOREM) for n in range(4))
    + """
    <mj-section><mj-column>
      <mj-text><a href="https://shop.bench.example/a">Beans</a> · <a href="https://shop.bench.example/b">Gear</a> ·
        <a href="https://shop.bench.example/c">Gifts</a> · <a href="https://blog.bench.example/d">Blog</a></mj-text>
      <mj-text font-size="11px">{{ organization.postal_address }} ·
        <a href="{{ unsubscribe_url }}">Unsubscribe</a> · <a href="{{ preferences_url }}">Preferences</a></mj-text>
    </mj-column></mj-section>
  </mj-body>
</mjml>
"""
)

SEND = """
import asyncio, json, sys, time
from pathlib import Path
from reconciler.start import start_due
from reconciler.clock import FixedClock, parse_instant
from reconciler.dispatch import Dispatcher
from reconciler.state import open_db
from reconciler.state.db import open_postgres

root, now, state = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
db = open_postgres(state, migrate=False) if state.startswith("postgresql:") else open_db(Path(state))
clock = FixedClock(parse_instant(now))
start_due(db, now=clock.now())

def peak_mb(status):  # VmHWM: this process's own peak (ru_maxrss would count the parent's pages from before exec)
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024

marks = []  # (messages handled, when): the first, then at each tenth of the audience

def progress(p):
    if p.done == 1 or p.total >= 10 and p.done % (p.total // 10) == 0:
        marks.append((p.done, time.perf_counter()))

def rate(first, last):
    return (last[0] - first[0]) / (last[1] - first[1]) if last[1] > first[1] else 0.0

async def main():
    dispatcher = Dispatcher(db, root=root, clock=clock, on_progress=progress)
    started = time.perf_counter()
    report = await dispatcher.run_pass()
    elapsed = time.perf_counter() - started
    executor = dispatcher.run.pool.executor
    render = peak_mb(executor.submit(Path("/proc/self/status").read_text).result()) if executor else 0
    await dispatcher.close()
    return report, elapsed, render

report, elapsed, render = asyncio.run(main())
sent = report.count("sent")
tenths = [rate(marks[0], marks[1]), rate(marks[-2], marks[-1])] if len(marks) >= 3 else [0.0, 0.0]
print(json.dumps({"sent": sent, "seconds": elapsed, "rss_mb": peak_mb(Path("/proc/self/status").read_text()),
                  "render_rss_mb": render, "first_tenth": tenths[0], "last_tenth": tenths[1],
                  "outcomes": {p.source: p.outcomes for p in report.sources}}))
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def smtp_sink_path() -> str:
    for candidate in (shutil.which("smtp-sink"), "/usr/sbin/smtp-sink", "/usr/lib/postfix/sbin/smtp-sink"):
        if candidate and Path(candidate).exists():
            return candidate
    sys.exit("bench/send.py needs Postfix's smtp-sink: apt-get install postfix (only its test program is used)")


def start_sink(port: int) -> subprocess.Popen[bytes]:
    command = [smtp_sink_path(), "127.0.0.1:" + str(port), "256"]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]
    sink = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return sink
        time.sleep(0.05)
    sink.kill()
    sys.exit("smtp-sink did not start")


def write_workspace(root: Path, port: int) -> None:
    files = {
        "spec/settings.yaml": f"""
            kind: Settings
            name: default
            organization: {{name: Bench Roasters, postal_address: "Bench Roasters, 1 Long Road, 00-001 Warsaw"}}
            public_url: https://mail.bench.example
            senders:
              news: {{from: "Bench Roasters <news@bench.example>"}}
            transports:
              sink: {{type: smtp, host: 127.0.0.1, port: {port}, security: none, max_connections: {CONNECTIONS}}}
            defaults: {{sender: news, transport: sink}}
            """,
        "spec/lists.yaml": "kind: List\nname: news\ntitle: News\n",
        "spec/fields.yaml": "".join(f"---\nkind: Field\nname: {n}\ntype: {t}\n" for n, t in FIELDS),
        "templates/news/monthly.mjml": TEMPLATE,
        "campaigns/monthly.yaml": """
            kind: Campaign
            name: monthly
            subject: "{{ contact.first_name }}, the {{ contact.tier }} edition of our monthly letter"
            preheader: Four stories from the roastery
            template: news/monthly
            audience: {lists: [news]}
            send_at: now
            status: scheduled
            utm: {source: newsletter, campaign: monthly}
            """,
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))


def write_contacts(path: Path, count: int) -> None:
    tiers, roasts, grinds = ("bronze", "silver", "gold"), ("light", "medium", "dark"), ("whole", "filter", "espresso")
    with path.open("w") as out:
        out.write("email,first_name,last_name," + ",".join(n for n, _ in FIELDS) + "\n")
        for i in range(count):
            out.write(
                f"reader{i}@bench.example,Reader{i},Surname{i % 97},City{i % 50},{roasts[i % 3]},"
                f"{(i % 500) * 1.5},{i % 40},2020-0{1 + i % 9}-1{i % 9},{i * 7 % 1000},{tiers[i % 3]},"
                f"{grinds[i % 3]}\n"
            )


def ours(root: Path, count: int, state: str | None) -> dict[str, Any]:
    """One engine's send of `count` recipients in a fresh process: on `state` (a PostgreSQL URL), else on the
    workspace's SQLite file."""
    import json

    write_contacts(root / "contacts.csv", count)
    env = engine_env(state)
    for args in (
        ["contacts", "import", "contacts.csv", "--list", "news", "--consent", "bench"],
        ["apply", "--now", NOW],
    ):
        subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            cwd=root,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    target = state or str(root / ".state" / "reconciler.db")
    result = subprocess.run(
        [sys.executable, "-c", SEND, str(root), NOW, target],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def engine_env(state: str | None) -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1"}
    if state is not None:
        env.update(RECONCILER_STATE=state, RECONCILER_SECRET="bench-secret")
    return env


async def baseline(port: int, data: bytes, count: int) -> float:
    import aiosmtplib

    remaining = count

    async def connection() -> None:
        nonlocal remaining
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False)
        await smtp.connect()
        sent = 0
        while remaining > 0:
            remaining -= 1
            await smtp.sendmail("news@bench.example", [f"reader{remaining}@bench.example"], data)
            sent += 1
            if sent % 100 == 0:  # the same connection renewal our transport does
                await smtp.quit()
                smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False)
                await smtp.connect()
        await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return time.perf_counter() - started


def sample_message(root: Path, state: str | None) -> bytes:
    """One of our messages, as bytes, for the baseline to send: the same size on the wire."""
    out = root / "sample.eml"
    subprocess.run(
        [sys.executable, "-m", "reconciler", "render", "monthly", "--contact", "reader1@bench.example", "-o", str(out)],
        cwd=root,
        env=engine_env(state),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out.read_bytes()


@contextmanager
def engines() -> Iterator[list[tuple[str, Callable[[], str | None]]]]:
    """Each engine to run, as (label, a new state for one send): None for the workspace's SQLite file, or a new
    database's URL in a throwaway PostgreSQL cluster where PostgreSQL is installed (stopped on the way out)."""
    wanted = os.environ.get("BENCH_SEND_ENGINES", "sqlite,postgresql").split(",")
    runs: list[tuple[str, Callable[[], str | None]]] = [("SQLite", lambda: None)] if "sqlite" in wanted else []
    cluster = None
    if "postgresql" in wanted:
        try:
            cluster = pg_cluster.Cluster(CLUSTER)
            cluster.start()
            runs.append(("PostgreSQL", cluster.database))
        except pg_cluster.NotInstalled as exc:
            print(f"-- PostgreSQL: skipped: {exc}")
    try:
        yield runs
    finally:
        if cluster is not None:
            cluster.stop()


def report(label: str, small: dict[str, Any], full: dict[str, Any], base_rate: float) -> None:
    rate = float(full["sent"]) / float(full["seconds"])
    first, last = float(full["first_tenth"]), float(full["last_tenth"])
    print(f"{label}:")
    print(f"  ours: {full['sent']:,} messages in {full['seconds']:.1f} s = {rate:,.0f} msgs/s ({full['outcomes']})")
    print(f"  ratio ours/baseline: {rate / base_rate:.2f} (target >= 0.6)")
    print(
        f"  first tenth {first:,.0f} msgs/s, last tenth {last:,.0f} msgs/s: last/first "
        f"{last / first if first else 0:.2f} (target: flat, a message costing the same at the end as at the start)"
    )
    print(
        f"  peak RSS: {full['rss_mb']:.0f} MB (+ render process {full['render_rss_mb']:.0f} MB) for "
        f"{RECIPIENTS:,} recipients; {small['rss_mb']:.0f} MB (+ {small['render_rss_mb']:.0f} MB) for "
        f"{RECIPIENTS // 5:,} (target < 200 MB, flat)",
        flush=True,
    )


def main() -> None:
    port = free_port()
    sink = start_sink(port)
    results: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    data = b""
    try:
        with tempfile.TemporaryDirectory(prefix="bench-send-") as folder, engines() as runs:
            for label, new_state in runs:
                small_root, full_root = Path(folder) / label / "small", Path(folder) / label / "full"
                for root in (small_root, full_root):
                    write_workspace(root, port)
                small = ours(small_root, RECIPIENTS // 5, new_state())
                state = new_state()
                full = ours(full_root, RECIPIENTS, state)
                data = data or sample_message(full_root, state)
                results.append((label, small, full))
            seconds = asyncio.run(baseline(port, data, RECIPIENTS))
    finally:
        sink.terminate()
        sink.wait()
    base_rate = RECIPIENTS / seconds
    print(f"message size: {len(data) / 1024:.1f} KB, {CONNECTIONS} connections, sink: smtp-sink on loopback")
    print(f"baseline: {RECIPIENTS:,} messages in {seconds:.1f} s = {base_rate:,.0f} msgs/s (bare aiosmtplib sendmail)")
    for label, small, full in results:
        report(label, small, full, base_rate)


if __name__ == "__main__":
    main()
