"""A daemon that runs for months: what a pass keeps in memory, what an idle pass writes, what is forgotten."""

from __future__ import annotations

import asyncio
import gc
import shutil
import tracemalloc
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jinja2
import pytest

from conftest import REPO, reconciler, wait_for
from daemon_process import WATCHING, Daemon
from journeys import Journey
from reconciler import allocator, transports
from reconciler.clock import FixedClock
from reconciler.daemon import reconcile_once
from reconciler.dispatch import Dispatcher
from reconciler.load import load_workspace
from reconciler.state import db as state_db
from reconciler.state.db import ConnectionPool
from reconciler.state.records import prune
from smtp_sink import Sink, SinkServer
from state_helpers import RowWrites, on_postgres, open_state, set_status

NOW = datetime(2030, 11, 26, 12, 0, tzinfo=UTC)


@pytest.mark.no_state
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


def test_passes_over_an_unchanged_workspace_compile_no_template(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pass used to build the templates' Jinja environments again and compile every template: twice the CPU
    of a pass, and allocations that a months-long daemon's memory kept creeping with."""
    db = open_state(example)
    checked: dict[str, list[object]] = {}
    reconcile_once(example, db, now=NOW, checked=checked)  # type: ignore[arg-type]
    compiled: list[str] = []
    original = jinja2.Environment.compile

    def counting(self: jinja2.Environment, source: Any, *args: Any, **kwargs: Any) -> Any:
        compiled.append(str(args[0] if args else kwargs.get("name")))
        return original(self, source, *args, **kwargs)

    monkeypatch.setattr(jinja2.Environment, "compile", counting)
    for _ in range(3):
        reconcile_once(example, db, now=NOW, checked=checked)  # type: ignore[arg-type]
    assert compiled == []
    (example / "templates/offers/gift-guide.mjml").write_text(
        (example / "templates/offers/gift-guide.mjml").read_text() + "{# edited #}\n"
    )
    reconcile_once(example, db, now=NOW, checked=checked)  # type: ignore[arg-type]
    assert compiled  # a changed template is compiled again


@pytest.mark.sqlite_only("SQLite's own connection pool, one page cache per connection")
def test_light_traffic_after_a_burst_keeps_to_one_warm_connection(example: Path) -> None:
    """A pool that handed out its connections in turn made every connection of a burst fill its page cache while
    the daemon was at rest (RSS crept up in steps for many minutes after the load)."""
    open_state(example).conn.close()
    pool = ConnectionPool(example / ".state/reconciler.db")
    with ExitStack() as burst:
        for _ in range(8):
            burst.enter_context(pool.connection())
    used = set()
    for _ in range(50):
        with pool.connection() as db:
            used.add(id(db))
            db.conn.execute("SELECT count(*) FROM contacts").fetchone()
    pool.close()
    assert len(pool.opened) == 0 and len(used) == 1


@pytest.mark.sqlite_only("SQLite's own connection pool")
def test_a_bursts_connections_are_closed_once_unused_for_a_while(
    example: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The web service's pool kept every connection a burst of requests opened, each with its descriptors (the
    database and its WAL): the soak saw two descriptors more at rest after a load than before it."""
    open_state(example).conn.close()
    pool = ConnectionPool(example / ".state/reconciler.db")
    with ExitStack() as burst:
        for _ in range(8):
            burst.enter_context(pool.connection())
    assert len(pool.opened) == 8
    with pool.connection():  # light traffic within POOL_IDLE: the burst's connections stay for the next one
        pass
    assert len(pool.opened) == 8
    monkeypatch.setattr(state_db, "POOL_IDLE", 0.0)  # as if a minute had passed
    with pool.connection() as db:
        db.conn.execute("SELECT count(*) FROM contacts").fetchone()
    assert len(pool.opened) == 1 and len(pool.idle) == 1  # the one light traffic uses
    pool.close()


def test_an_idle_daemon_pass_writes_nothing(example: Path) -> None:
    db = open_state(example)
    writes = RowWrites(db)
    clock = FixedClock(NOW)
    checked: dict[str, list[object]] = {}
    reconcile_once(example, db, now=clock.now(), checked=checked)  # type: ignore[arg-type]
    before = writes.count()
    assert before > 0  # the first pass applied the workspace: the count sees writes

    async def passes() -> None:
        dispatcher = Dispatcher(db, root=example, clock=clock)
        try:
            for _ in range(5):
                reconcile_once(example, db, now=clock.now(), checked=checked)  # type: ignore[arg-type]
                await dispatcher.run_pass()
        finally:
            await dispatcher.close()

    asyncio.run(passes())
    assert writes.count() == before


def test_old_provider_ids_and_dead_dispatchers_are_forgotten_and_history_is_kept(tmp_path: Path) -> None:
    for folder in ("spec", "campaigns", "templates"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    (tmp_path / "c.csv").write_text("email\nada@example.com\n")
    assert reconciler("contacts", "import", "c.csv", "--list", "offers", cwd=tmp_path).returncode == 0
    db = open_state(tmp_path)
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


def test_metrics_show_what_a_leak_would_grow(example: Path) -> None:
    token = {"Authorization": "Bearer soak-token"}
    with Daemon(example, "--interval", "60", env={"RECONCILER_API_TOKEN": "soak-token"}) as daemon:
        daemon.wait_for_output(WATCHING)
        base = f"http://127.0.0.1:{daemon.port}"

        def scraped() -> dict[str, float]:
            text = httpx.get(f"{base}/metrics", headers=token, timeout=30).text
            return {
                line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line and not line.startswith("#")
            }

        wait_for(lambda: 'reconciler_event_loop_tasks{loop="send"}' in scraped(), "the send loop's tasks", 60)
        if on_postgres():
            figures = scraped()
            assert figures["reconciler_state_database_bytes"] > 0  # as the server reports it
        else:
            state = example / ".state/reconciler.db"

            def on_disk() -> tuple[int, int]:
                return state.stat().st_size, state.with_name("reconciler.db-wal").stat().st_size

            # The first pass may still be writing: compare a scrape taken while the files stood still.
            for _ in range(100):
                before = on_disk()
                figures = scraped()
                if on_disk() == before:
                    break
            files = (
                figures['reconciler_state_file_bytes{file="database"}'],
                figures['reconciler_state_file_bytes{file="wal"}'],
            )
            assert files == before and files[0] > 0
        daemon.stop()
    assert 20e6 < figures["process_resident_memory_bytes"] < 1e9
    assert figures["process_open_fds"] >= 3 and figures["reconciler_threads"] >= 2  # the send loop has its own
    assert figures['reconciler_event_loop_tasks{loop="web"}'] >= 1  # this request's own task at least
    assert figures['reconciler_event_loop_tasks{loop="send"}'] >= 1


@pytest.mark.sqlite_only("SQLite's page cache (PRAGMA cache_size)")
def test_the_page_cache_is_the_operators_to_size(example: Path) -> None:
    assert reconciler("apply", cwd=example).returncode == 0
    default = open_state(example)
    assert default.conn.execute("PRAGMA cache_size").fetchone()[0] == -65536  # the default: 64 MB
    refused = reconciler("status", cwd=example, env={"RECONCILER_CACHE_MB": "lots"})
    assert refused.returncode != 0
    assert "RECONCILER_CACHE_MB='lots': set it to a whole number of megabytes" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.mark.sqlite_only("SQLite's page cache (PRAGMA cache_size)")
def test_a_small_page_cache_is_kept_by_every_connection(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert reconciler("apply", cwd=example).returncode == 0
    monkeypatch.setenv("RECONCILER_CACHE_MB", "8")
    db = open_state(example)
    pool = ConnectionPool(example / ".state/reconciler.db")
    dispatcher = Dispatcher(open_state(example), root=example, clock=FixedClock(NOW))
    with pool.connection() as pooled:
        sizes = [c.execute("PRAGMA cache_size").fetchone()[0] for c in (db.conn, pooled.conn, dispatcher.db.conn)]
    assert sizes == [-8192, -512, -2048]


def test_connections_to_the_relay_are_let_go_once_they_would_not_be_used_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pooled SMTP connections outlived the campaign that opened them: an idle daemon held their descriptors (the
    soak saw 30 at rest before a load and 32 after it) until the relay dropped them."""
    sink = Sink()
    with SinkServer(sink) as port:
        j = Journey(tmp_path, sink, port, "")
        (tmp_path / "campaigns").mkdir()
        (tmp_path / "campaigns/drop.yaml").write_text(
            "kind: Campaign\nname: drop\nsubject: Drop\ntemplate: mail/a\naudience: {lists: [news]}\n"
            "send_at: 2030-03-02T10:00:00Z\nstatus: scheduled\n"
        )
        for n in range(6):
            j.person(f"p{n}@example.com", lists=("news",), at="2030-03-01T09:00:00Z")
        now = datetime(2030, 3, 2, 10, 0, tzinfo=UTC)
        assert reconcile_once(tmp_path, j.db, now=now).valid

        async def passes() -> tuple[int, int]:
            dispatcher = Dispatcher(j.db, root=tmp_path, clock=FixedClock(now))
            try:
                await dispatcher.run_pass()  # the campaign: its connections stay pooled for the next messages
                wait_for(lambda: sum(sink.received().values()) == 6, "the campaign at the sink")
                held = sink.sessions - sink.closed
                monkeypatch.setattr(transports, "IDLE_REUSE", 0.0)  # as if they had waited long enough
                await dispatcher.run_pass()  # nothing due: the pass lets them go
                wait_for(lambda: sink.closed == sink.sessions, "the pooled connections closed")
                return held, sink.sessions - sink.closed
            finally:
                await dispatcher.close()

        held, left = asyncio.run(passes())
    assert held >= 1 and left == 0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.no_state
def test_memory_a_load_freed_goes_back_to_the_system() -> None:
    """After a load, freed memory stayed with the process wherever something small still lived beside it: a daemon
    at rest kept its peak (the soak's rest after a load stood megabytes above the rest before it)."""
    if not allocator.trim(force=True):
        pytest.skip("not glibc: nothing to hand back this way")
    load = [bytes(5000) for _ in range(40_000)]  # 200 MB, as a burst of work allocates
    survivors = load[::4]  # what the work leaves behind, scattered among the freed
    del load
    gc.collect()
    before = _rss_mb()
    assert allocator.trim(force=True)
    after = _rss_mb()
    assert before - after > 50, (before, after)  # 150 MB were free: most of it goes back
    assert len(survivors) == 10_000
