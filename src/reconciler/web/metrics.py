"""`GET /metrics` in Prometheus' format: messages by outcome, the queue, dispatch passes, HTTP requests, and what
a leak would show first: the process's resident memory, open descriptors and threads (prometheus_client's process
collector), the event loop's tasks, and the sizes of the state database and its write-ahead log (on PostgreSQL: the
database's size on its server)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from reconciler.state.db import sqlite_memory
from reconciler.state.engine import StatePool, database_bytes
from reconciler.state.subscribers import sending_counts
from reconciler.status import daemons

App = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


class _LedgerCollector:
    """Read at scrape time from the ledger: nothing to keep in step."""

    def __init__(self, pool: StatePool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.pool.connection() as db:
            counts = sending_counts(db)
        messages = GaugeMetricFamily("reconciler_messages", "Ledger rows by state", labels=["state"])
        for state in ("queued", "sending", "sent", "deferred", "uncertain", "failed", "skipped"):
            messages.add_metric([state], counts.get(state, 0))
        yield messages
        yield GaugeMetricFamily(
            "reconciler_queue_depth",
            "Messages waiting to be sent (queued or deferred)",
            value=counts.get("queued", 0) + counts.get("deferred", 0),
        )


class _DaemonsCollector:
    """The daemons beating on the state database and the lease holder, read at scrape time (`status.daemons`);
    with `holding` (set by the daemon), whether this process holds the lease."""

    def __init__(self, pool: StatePool) -> None:
        self.pool = pool
        self.holding: Callable[[], bool] | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.pool.connection() as db:
            found = daemons(db, now=datetime.now(UTC))
        running = found["processes"]
        yield GaugeMetricFamily("reconciler_daemons", "Daemons beating on the state database", value=len(running))
        labels = ["process", "host", "pid"]
        heard = GaugeMetricFamily(
            "reconciler_daemon_heartbeat_timestamp_seconds", "When each daemon last beat", labels=labels
        )
        holder = GaugeMetricFamily(
            "reconciler_lease_holder", "1 for the daemon holding the reconcile lease (applies, starts)", labels=labels
        )
        for process in running:
            values = [process["id"], process["host"], str(process["pid"])]
            heard.add_metric(values, datetime.fromisoformat(process["heartbeat_at"]).timestamp())
            holder.add_metric(values, 1 if process["holds_lease"] else 0)
        yield heard
        yield holder
        held = found["lease"]
        yield GaugeMetricFamily(
            "reconciler_lease_generation", "Changes of lease holder so far", value=held["generation"] if held else 0
        )
        if self.holding is not None:
            yield GaugeMetricFamily(
                "reconciler_lease_held", "1 when this process holds the reconcile lease", value=int(self.holding())
            )


class _StateFilesCollector:
    """The state database and its write-ahead log, in bytes, as the disk has them now; on PostgreSQL, the size of
    the database as its server reports it (`reconciler_state_database_bytes`), and no SQLite memory."""

    def __init__(self, pool: StatePool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        path = self.pool.location.path
        if path is None:
            with self.pool.connection() as db:
                size = database_bytes(db)
            yield GaugeMetricFamily(
                "reconciler_state_database_bytes", "Size of the PostgreSQL state database on its server", value=size
            )
        else:
            sizes = GaugeMetricFamily("reconciler_state_file_bytes", "Size of the state files", labels=["file"])
            for label, file in (("database", path), ("wal", path.with_name(path.name + "-wal"))):
                with contextlib.suppress(OSError):
                    sizes.add_metric([label], file.stat().st_size)
            yield sizes
        yield GaugeMetricFamily("reconciler_threads", "Threads of the process", value=threading.active_count())
        used = sqlite_memory() if path is not None else None
        if used is not None:
            yield GaugeMetricFamily(
                "reconciler_sqlite_memory_bytes",
                "Memory SQLite holds (page caches up to their bound, statements): part of the resident memory",
                value=used,
            )


class _TasksCollector:
    """Tasks alive on each of the daemon's event loops: the web service's and the send loop's. A count that only
    grows is a leak of tasks, and of whatever they hold."""

    def __init__(self) -> None:
        self.loops: dict[str, Callable[[], asyncio.AbstractEventLoop | None]] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        tasks = GaugeMetricFamily("reconciler_event_loop_tasks", "Tasks on each event loop", labels=["loop"])
        for name, find in sorted(self.loops.items()):
            loop = find()
            if loop is not None and not loop.is_closed():
                tasks.add_metric([name], len(asyncio.all_tasks(loop)))
        yield tasks


class Metrics:
    """The daemon's metrics; `render` reads the ledger, so it runs in a worker thread."""

    def __init__(self, pool: StatePool) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_LedgerCollector(pool))
        self.daemons = _DaemonsCollector(pool)
        self.registry.register(self.daemons)
        self.registry.register(_StateFilesCollector(pool))
        ProcessCollector(registry=self.registry)
        self.tasks = _TasksCollector()
        self.registry.register(self.tasks)
        self.requests = Counter(
            "reconciler_http_requests", "HTTP requests", ["route", "method", "status"], registry=self.registry
        )
        self.pass_seconds = Histogram(
            "reconciler_dispatch_pass_seconds",
            "Duration of a dispatch pass",
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800),
        )
        self.request_seconds = Histogram(
            "reconciler_http_request_seconds", "HTTP request duration", ["route"], registry=self.registry
        )

    def watch_loop(self, name: str, find: Callable[[], asyncio.AbstractEventLoop | None]) -> None:
        """Count the tasks of the loop `find` returns (None while that loop is not running) at every scrape."""
        self.tasks.loops[name] = find

    def watch_lease(self, holding: Callable[[], bool]) -> None:
        """Say at every scrape whether this process holds the lease (`leader.LeaseKeeper.holding`)."""
        self.daemons.holding = holding

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def middleware(self, app: App) -> App:
        """Counts every request by route template (never by token) and status."""

        async def counted(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = {"code": 500}

            async def watch(message: Any) -> None:
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            try:
                await app(scope, receive, watch)
            finally:
                route = scope.get("route")
                path = getattr(route, "path", "other")
                self.requests.labels(path, scope.get("method", ""), str(status["code"])).inc()
                self.request_seconds.labels(path).observe(time.perf_counter() - started)

        return counted
