"""Send rate of a 100,000-recipient campaign through the SMTP transport, against a bare SMTP client.

The sink is Postfix's `smtp-sink` test program on loopback (Debian package `postfix`; only the test program runs,
never the mail server): aiosmtpd tops out near 1,000 messages/s and would hide our speed. The campaign is a ~20 KB
MJML newsletter with 10 personalised fields and 5 tracked links. Measured in the same run:

- ours: a fresh process that starts the campaign (the audience snapshot) and runs one dispatch pass: claim per
  row, render, build the MIME bytes, send, record the outcome;
- baseline: a bare aiosmtplib client sending one pre-built message's bytes with `sendmail` over the same number
  of connections to the same sink.

Prints messages/s for both, their ratio (target ≥ 0.6), and our peak RSS for the full and a fifth of the
audience (target < 200 MB and not growing with the audience). BENCH_SEND_RECIPIENTS overrides the audience size.
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
from pathlib import Path

RECIPIENTS = int(os.environ.get("BENCH_SEND_RECIPIENTS", "100000"))
CONNECTIONS = 8
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

root = Path(sys.argv[1])
db = open_db(root / ".state/reconciler.db")
clock = FixedClock(parse_instant(sys.argv[2]))
start_due(db, now=clock.now())

def peak_mb(status):  # VmHWM: this process's own peak (ru_maxrss would count the parent's pages from before exec)
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024

async def main():
    dispatcher = Dispatcher(db, root=root, clock=clock)
    started = time.perf_counter()
    report = await dispatcher.run_pass()
    elapsed = time.perf_counter() - started
    executor = dispatcher.run.pool.executor
    render = peak_mb(executor.submit(Path("/proc/self/status").read_text).result()) if executor else 0
    await dispatcher.close()
    return report, elapsed, render

report, elapsed, render = asyncio.run(main())
sent = report.count("sent")
print(json.dumps({"sent": sent, "seconds": elapsed, "rss_mb": peak_mb(Path("/proc/self/status").read_text()),
                  "render_rss_mb": render,
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


def ours(root: Path, count: int) -> dict[str, object]:
    import json

    write_contacts(root / "contacts.csv", count)
    env = {**os.environ, "NO_COLOR": "1"}
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
    result = subprocess.run(
        [sys.executable, "-c", SEND, str(root), NOW], cwd=root, env=env, check=True, capture_output=True, text=True
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


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


def sample_message(root: Path) -> bytes:
    """One of our messages, as bytes, for the baseline to send: the same size on the wire."""
    out = root / "sample.eml"
    subprocess.run(
        [sys.executable, "-m", "reconciler", "render", "monthly", "--contact", "reader1@bench.example", "-o", str(out)],
        cwd=root,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out.read_bytes()


def main() -> None:
    port = free_port()
    sink = start_sink(port)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-send-") as folder:
            small_root, full_root = Path(folder) / "small", Path(folder) / "full"
            for root in (small_root, full_root):
                write_workspace(root, port)
            small = ours(small_root, RECIPIENTS // 5)
            full = ours(full_root, RECIPIENTS)
            data = sample_message(full_root)
            seconds = asyncio.run(baseline(port, data, RECIPIENTS))
    finally:
        sink.terminate()
        sink.wait()
    ours_rate = float(full["sent"]) / float(full["seconds"])  # type: ignore[arg-type]
    base_rate = RECIPIENTS / seconds
    print(f"message size: {len(data) / 1024:.1f} KB, {CONNECTIONS} connections, sink: smtp-sink on loopback")
    print(
        f"ours:     {full['sent']:,} messages in {full['seconds']:.1f} s = {ours_rate:,.0f} msgs/s "
        f"(outcomes {full['outcomes']})"
    )
    print(f"baseline: {RECIPIENTS:,} messages in {seconds:.1f} s = {base_rate:,.0f} msgs/s (bare aiosmtplib sendmail)")
    print(f"ratio ours/baseline: {ours_rate / base_rate:.2f} (target >= 0.6)")
    print(
        f"peak RSS: {full['rss_mb']:.0f} MB (+ render process {full['render_rss_mb']:.0f} MB) for "
        f"{RECIPIENTS:,} recipients; {small['rss_mb']:.0f} MB (+ {small['render_rss_mb']:.0f} MB) for "
        f"{RECIPIENTS // 5:,} (target < 200 MB, flat)"
    )


if __name__ == "__main__":
    main()
