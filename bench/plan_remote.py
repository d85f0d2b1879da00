"""`reconciler plan --remote` of the example workspace against a daemon holding 1,000,000 contacts.

The state is bench/plan.py's (a million contacts generated with SQL, on the example's four lists, some
unsubscribed, 1% suppressed), applied from the example workspace; then `reconciler run` serves it with a plan token.
The pull request schedules the draft newsletter. Timed, each in a fresh process as in CI: `plan --remote` (the
files packed and sent, checked, planned against the daemon's state and answered), and as the baseline the local
`plan --state` of the same files against the same database (what the daemon does, plus the process start-up).
Both count within `--count-budget 2` (what is not counted by then says so); one more remote plan with the default
budget shows what counting everything costs. Target: under 5 s.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from plan import CONTACTS, fill  # bench/ is on sys.path when this script runs
from send import free_port
from validate import timed

REPO = Path(__file__).resolve().parent.parent
RUNS = 3
NOW = "2030-11-26T12:00:00Z"
TOKEN = "bench-plan-token"


def workspace(root: Path) -> Path:
    for folder in ("spec", "campaigns", "templates"):
        shutil.copytree(REPO / folder, root / folder)
    return root


def serve(root: Path, port: int) -> subprocess.Popen[bytes]:
    """`reconciler run` on the workspace, once it answers /livez."""
    env = {**os.environ, "RECONCILER_PLAN_TOKEN": TOKEN, "RECONCILER_SECRET": "bench"}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "run", "--port", str(port), "--interval", "600"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=5).close()
            return daemon
        except OSError:
            if daemon.poll() is not None:
                sys.exit("the daemon exited before it served")
            time.sleep(0.2)
    daemon.kill()
    sys.exit("the daemon did not answer /livez within 120 s")


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        prod, pr = workspace(Path(folder) / "prod"), workspace(Path(folder) / "pr")
        campaign = pr / "campaigns/guji-harvest-2030.yaml"
        campaign.write_text(campaign.read_text().replace("status: draft", "status: scheduled"))
        started = time.perf_counter()
        state = prod / ".state" / "reconciler.db"
        fill(state, ("newsletter", "offers", "customers", "orders"))
        timed(prod, "apply", "--now", NOW)
        prepared = time.perf_counter() - started
        port = free_port()
        daemon = serve(prod, port)
        try:
            os.environ["RECONCILER_PLAN_TOKEN"] = TOKEN
            base = f"http://127.0.0.1:{port}"
            args = ("plan", "--now", NOW, "--detailed-exitcode", "--count-budget", "2")
            remote = [timed(pr, *args, "--remote", base, expect=(2,)) for _ in range(RUNS)]
            local = [timed(pr, "--state", str(state), *args, expect=(2,)) for _ in range(RUNS)]
            started = time.perf_counter()
            whole = subprocess.run(
                [sys.executable, "-m", "reconciler", "-C", str(pr), "plan", "--now", NOW, "--remote", base],
                capture_output=True,
                text=True,
                check=True,
            )
            counted = time.perf_counter() - started
        finally:
            daemon.terminate()
            daemon.wait(60)
    ours, floor = statistics.median(remote), statistics.median(local)
    print(
        f"plan --remote: the example workspace against a daemon with {CONTACTS:,} contacts "
        f"(prepared in {prepared:.0f} s)"
    )
    print(
        f"  reconciler plan --remote (new process, median of {RUNS}; first {remote[0]:.2f} s): {ours:.2f} s "
        f"({'meets' if ours < 5 else 'MISSES'} the 5 s target)"
    )
    print(f"  baseline: reconciler plan --state of the same files and database: {floor:.2f} s")
    print(f"  sending the files and planning in the daemon cost {ours - floor:+.2f} s")
    audience = next(line.strip() for line in whole.stdout.splitlines() if "→" in line)
    print(f"  with the default --count-budget (60 s), every count made: {counted:.2f} s (guji-harvest-2030 {audience})")


if __name__ == "__main__":
    main()
