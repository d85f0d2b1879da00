"""A daemon that runs for months: what a pass keeps in memory, what an idle pass writes, what is forgotten."""

from __future__ import annotations

import asyncio
import gc
import shutil
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

from conftest import REPO, reconciler
from reconciler.clock import FixedClock
from reconciler.daemon import reconcile_once
from reconciler.dispatch import Dispatcher
from reconciler.load import load_workspace
from reconciler.state import open_db
from reconciler.state.records import prune
from state_helpers import set_status

NOW = datetime(2030, 11, 26, 12, 0, tzinfo=UTC)


def test_loading_the_workspace_again_and_again_keeps_nothing(example: Path) -> None:
    for _ in range(20):  # warm-up: caches fill once
        load_workspace(example)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(300):  # ten days of 30 s passes in a daemon is 28,800 of these
            load_workspace(example)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 100_000, f"{grown:,} bytes kept by 300 loads"  # a parser kept 1.9 KB per load forever


def test_an_idle_daemon_pass_writes_nothing(example: Path) -> None:
    db = open_db(example / ".state/reconciler.db")
    clock = FixedClock(NOW)
    checked: dict[str, list[object]] = {}
    reconcile_once(example, db, now=clock.now(), checked=checked)  # type: ignore[arg-type]
    before = db.conn.total_changes

    async def passes() -> None:
        dispatcher = Dispatcher(db, root=example, clock=clock)
        try:
            for _ in range(5):
                reconcile_once(example, db, now=clock.now(), checked=checked)  # type: ignore[arg-type]
                await dispatcher.run_pass()
        finally:
            await dispatcher.close()

    asyncio.run(passes())
    assert db.conn.total_changes == before


def test_old_provider_ids_and_dead_dispatchers_are_forgotten_and_history_is_kept(tmp_path: Path) -> None:
    for folder in ("spec", "campaigns", "templates"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    (tmp_path / "c.csv").write_text("email\nada@example.com\n")
    assert reconciler("contacts", "import", "c.csv", "--list", "offers", cwd=tmp_path).returncode == 0
    db = open_db(tmp_path / ".state/reconciler.db")
    set_status(db, "ada@example.com", "offers", "unsubscribed")
    db.conn.executemany(
        "INSERT INTO webhook_events(provider, event_id, at) VALUES ('ses', ?, ?)",
        [("old", "2030-09-01T00:00:00Z"), ("recent", "2030-11-20T00:00:00Z")],
    )
    db.conn.executemany(
        "INSERT INTO dispatchers(id, host, pid, started_at, heartbeat_at) VALUES (?, 'h', 1, ?, ?)",
        [("gone", "2030-11-01T00:00:00Z", "2030-11-01T00:00:00Z"), ("busy", NOW.isoformat(), NOW.isoformat())],
    )
    consent = db.conn.execute("SELECT count(*) FROM consent").fetchone()[0]

    assert prune(db, now=NOW) == {"webhook ids": 1, "dispatcher registrations": 1}
    assert [r[0] for r in db.conn.execute("SELECT event_id FROM webhook_events")] == ["recent"]
    assert [r[0] for r in db.conn.execute("SELECT id FROM dispatchers")] == ["busy"]
    assert db.conn.execute("SELECT count(*) FROM consent").fetchone()[0] == consent == 2
