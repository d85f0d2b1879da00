"""Requests per second and p99 latency of the click redirect and the one-click unsubscribe, while a campaign sends.

On a 2-core machine the httpx clients need as much CPU as the server: their p99 is mostly their own queueing (the
bare baseline shows the same); wrk, a C load generator, shows the server's own latency.

`reconciler run` serves a workspace whose 20,000-recipient campaign is being sent through the SMTP transport to
Postfix's `smtp-sink`; 50 concurrent httpx clients on loopback then
- GET signed click URLs of sent messages (each answers 302 and records a click),
- POST `List-Unsubscribe=One-Click` to signed unsubscribe URLs (each unsubscribes a contact).
Baseline, measured in the same run with the same client: a bare Starlette app under uvicorn answering every GET
with a 302 and doing nothing else. Targets on the 2-core machine: >= 1,000 click redirects/s, p99 < 50 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from send import free_port, start_sink, write_contacts, write_workspace  # noqa: E402

CLIENTS = 50
PROCESSES = int(os.environ.get("BENCH_WEB_CLIENT_PROCESSES", "4"))
DURATION = 8.0
RECIPIENTS = int(os.environ.get("BENCH_WEB_RECIPIENTS", "20000"))
SECRET = "bench-web-secret"

BASELINE_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import RedirectResponse
from starlette.routing import Route

async def redirect(request):
    return RedirectResponse("https://shop.bench.example/a", 302)

app = Starlette(routes=[Route("/c/{token}", redirect)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


async def _load(
    urls: list[str], method: str, start_at: float, duration: float, clients: int
) -> tuple[list[float], int]:
    """One client process: `clients` concurrent httpx requests cycling through `urls` from `start_at` on."""
    await asyncio.sleep(max(0.0, start_at - time.time()))
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:

        async def worker(offset: int) -> None:
            nonlocal errors
            index = offset
            while time.perf_counter() < deadline:
                url = urls[index % len(urls)]
                index += clients
                started = time.perf_counter()
                try:
                    if method == "GET":
                        response = await client.get(url, follow_redirects=False)
                        ok = response.status_code == 302
                    else:
                        response = await client.post(url, data={"List-Unsubscribe": "One-Click"})
                        ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok

        await asyncio.gather(*(worker(i) for i in range(clients)))
    return latencies, errors


def _client_process(
    urls: list[str], method: str, start_at: float, duration: float, clients: int
) -> tuple[list[float], int]:
    return asyncio.run(_load(urls, method, start_at, duration, clients))


def load(urls: list[str], *, method: str = "GET", duration: float = DURATION) -> tuple[float, float, int]:
    """requests/s, p99 latency (ms) and errors for CLIENTS concurrent httpx clients, spread over PROCESSES client
    processes that start together (one Python process cannot drive 50 httpx clients faster than ~400 requests/s)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    start_at = time.time() + 2.0
    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(
                _client_process,
                urls[i::PROCESSES] or urls,
                method,
                start_at,
                duration,
                CLIENTS // PROCESSES + (i < CLIENTS % PROCESSES),
            )
            for i in range(PROCESSES)
        ]
        results = [future.result() for future in futures]
    latencies = sorted(latency for process, _ in results for latency in process)
    errors = sum(e for _, e in results)
    p99 = latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan")
    return len(latencies) / duration, p99, errors


def wrk(url: str, *, script: str | None = None, duration: float = 5.0) -> tuple[float, float] | None:
    """requests/s and p99 (ms) from Debian's wrk (a C load generator, 2 threads, CLIENTS connections), if installed:
    httpx itself tops out near the server's speed on this machine, so wrk shows what the server can do."""
    import shutil

    if not shutil.which("wrk"):
        return None
    command = ["wrk", "-t2", f"-c{CLIENTS}", f"-d{duration:g}s", "--latency", url]
    if script:
        command[1:1] = ["-s", script]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = float(output.split("Requests/sec:")[1].split()[0])
    p99 = output.split(" 99%")[1].split()[0]
    value = (
        float(p99[:-2])
        if p99.endswith("ms")
        else float(p99[:-2]) / 1000
        if p99.endswith("us")
        else float(p99[:-1]) * 1000
    )
    return rate, value


def wait_port(port: int, *, path: str = "/healthz", seconds: float = 10.0) -> None:
    """Until the server on `port` answers `path` (any status), or exit after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    sys.exit(f"nothing answers on port {port}")


def signed_urls(root: Path, base: str) -> tuple[list[str], list[str]]:
    sys.path.insert(0, str(HERE.parent / "src"))
    from reconciler.tokens import Signer

    signer = Signer(SECRET.encode())
    with sqlite3.connect(root / ".state/reconciler.db") as db:
        ids = [row[0] for row in db.execute("SELECT id FROM ledger ORDER BY id")]
    target = "https://shop.bench.example/a?utm_source=newsletter&utm_medium=email&utm_campaign=monthly"
    from urllib.parse import quote

    clicks = [f"{base}/c/{signer.sign('click', i, target)}?u={quote(target, safe='')}" for i in ids]
    unsubscribes = [f"{base}/u/{signer.sign('unsubscribe', i)}" for i in ids]
    return clicks, unsubscribes


def main() -> None:
    smtp_port, web_port, base_port = free_port(), free_port(), free_port()
    sink = start_sink(smtp_port)
    baseline = subprocess.Popen([sys.executable, "-c", BASELINE_APP, str(base_port)])
    env = {**os.environ, "NO_COLOR": "1", "RECONCILER_SECRET": SECRET}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-web-") as folder:
            root = Path(folder)
            write_workspace(root, smtp_port)
            settings = root / "spec/settings.yaml"
            settings.write_text(
                settings.read_text().replace("https://mail.bench.example", f"http://127.0.0.1:{web_port}")
            )
            # a steady send to measure beside: one connection with a rate limit
            settings.write_text(
                settings.read_text().replace("max_connections: 8}", "max_connections: 1, rate: {per_second: 300}}")
            )
            write_contacts(root / "contacts.csv", RECIPIENTS)
            command = [
                sys.executable,
                "-m",
                "reconciler",
                "contacts",
                "import",
                "contacts.csv",
                "--list",
                "news",
                "--consent",
                "bench",
            ]
            subprocess.run(command, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            daemon = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "run", "--port", str(web_port)],
                cwd=root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_port(web_port)
                while True:  # let sending get under way
                    with sqlite3.connect(root / ".state/reconciler.db") as db:
                        sent = db.execute("SELECT count(*) FROM ledger WHERE state = 'sent'").fetchone()[0]
                    if sent >= 500:
                        break
                    time.sleep(0.2)
                clicks, unsubscribes = signed_urls(root, f"http://127.0.0.1:{web_port}")
                base_rate, base_p99, _ = load([f"http://127.0.0.1:{base_port}/c/x"] * 100)
                click_rate, click_p99, click_errors = load(clicks)
                post_rate, post_p99, post_errors = load(unsubscribes, method="POST", duration=4.0)
                wrk_base = wrk(f"http://127.0.0.1:{base_port}/c/x")
                wrk_click = wrk(clicks[len(clicks) // 2])
                post_script = Path(folder) / "post.lua"
                post_script.write_text(
                    'wrk.method = "POST"\nwrk.body = "List-Unsubscribe=One-Click"\n'
                    'wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"\n'
                )
                wrk_post = wrk(unsubscribes[-1], script=str(post_script))
                with sqlite3.connect(root / ".state/reconciler.db") as db:
                    sent_after = db.execute("SELECT count(*) FROM ledger WHERE state = 'sent'").fetchone()[0]
                    opened = db.execute("SELECT count(*) FROM engagement WHERE action = 'clicked'").fetchone()[0]
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=60)
    finally:
        baseline.terminate()
        sink.terminate()
    print(
        f"{CLIENTS} concurrent httpx clients in {PROCESSES} processes on loopback; a campaign sending meanwhile "
        f"({sent_after - sent:,} messages went out during the measurements)"
    )
    print(f"baseline (bare Starlette redirect): {base_rate:,.0f} req/s, p99 {base_p99:.1f} ms")
    print(
        f"click redirect: {click_rate:,.0f} req/s, p99 {click_p99:.1f} ms, errors {click_errors}, ratio "
        f"{click_rate / base_rate:.2f} (target >= 1,000 req/s, p99 < 50 ms); {opened:,} clicks recorded"
    )
    print(f"one-click unsubscribe POST: {post_rate:,.0f} req/s, p99 {post_p99:.1f} ms, errors {post_errors}")
    if wrk_base and wrk_click and wrk_post:
        ratio = wrk_click[0] / wrk_base[0]
        print(
            f"with wrk ({CLIENTS} connections, 2 threads): baseline {wrk_base[0]:,.0f} req/s p99 {wrk_base[1]:.1f} ms"
        )
        print(
            f"  click redirect {wrk_click[0]:,.0f} req/s p99 {wrk_click[1]:.1f} ms (ratio {ratio:.2f}); "
            f"one-click POST {wrk_post[0]:,.0f} req/s p99 {wrk_post[1]:.1f} ms"
        )
    else:
        print("wrk is not installed (apt-get install wrk): only the httpx figures")
    print(
        json.dumps(
            {
                "click_rps": round(click_rate),
                "click_p99_ms": round(click_p99, 1),
                "post_rps": round(post_rate),
                "post_p99_ms": round(post_p99, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
