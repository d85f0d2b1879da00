"""The daemon's send loop: dispatch passes in a thread of its own, with its own event loop and database connection.

Sending talks SMTP and claims rows in short write transactions; when another process holds the write lock, a claim
waits (up to the busy timeout) in this thread, so the web service and the reconcile loop, on the main event loop,
never stall behind it. Passes run after every reconcile pass (`wake`), when a retry, a local send time or a relay
probe comes due, and every `interval`. A pass that fails, or that leaves messages due that it could not send (a
relay down, a secret missing), is followed by a wait that doubles up to `interval`, never a busy loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from reconciler.clock import Clock, iso
from reconciler.dispatch import Dispatcher, DispatchReport
from reconciler.health import Health
from reconciler.state import ledger
from reconciler.state.engine import revive
from reconciler.state.postgres import StateDatabase

log = logging.getLogger(__name__)
MIN_WAIT = 0.05
MAX_BACKOFF = 60.0
DEFERRED_TO_SAY = 10
"""Deferred messages, none delivered, after which a pass still going says its relay defers everything."""


class SendLoop:
    """`start()` it once; `wake()` and `stop()` are safe from any thread."""

    def __init__(
        self,
        db: StateDatabase,
        *,
        root: Path,
        clock: Clock,
        interval: float,
        health: Health,
        on_pass: Callable[[float], None] | None = None,
        after_pass: Callable[[StateDatabase], None] | None = None,
    ) -> None:
        self.db, self.root, self.clock, self.interval, self.health = db, root, clock, interval, health
        self.on_pass = on_pass
        """Called with each pass's duration in seconds (for /metrics)."""
        self.after_pass = after_pass
        """Called after each pass, in this thread, with this loop's connection (the daemon keeps its record)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="reconciler-send", daemon=True)
        self.stopping = threading.Event()
        self.stuck = 0
        self.failure = ""
        """Why the last pass failed, for the log line that says when the next one runs."""

    def start(self) -> None:
        self.thread.start()
        self.ready.wait()

    def wake(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._wake.set)

    def stop(self) -> None:
        """Start no new SMTP transaction; the ones on the wire finish and are recorded. Returns at once: `join`."""
        self.stopping.set()
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._wake, self._stop = asyncio.Event(), asyncio.Event()
        if self.stopping.is_set():
            self._stop.set()
        dispatcher = Dispatcher(self.db, root=self.root, clock=self.clock, stop=self._stop, on_beat=self._judge)
        self.ready.set()
        # the first pass waits for the daemon's first reconcile pass: Settings changed while it was stopped (a new
        # relay) are applied before anything is sent
        await wait_any((self._wake, self._stop), timeout=self.interval)
        try:
            while not self._stop.is_set():
                self._wake.clear()
                report = await self._one_pass(dispatcher)
                if self.after_pass is not None and not self._stop.is_set():
                    self.after_pass(self.db)
                await wait_any((self._wake, self._stop), timeout=self._next_wait(dispatcher, report))
        finally:
            await dispatcher.close()

    async def _one_pass(self, dispatcher: Dispatcher) -> DispatchReport | None:
        started = time.monotonic()
        try:
            revive(self.db)  # a PostgreSQL connection the server closed since the last pass, made again
            report = await dispatcher.run_pass()
        except Exception as exc:  # a failing database or relay never ends the daemon; the next pass carries on
            self.health.pass_failed("dispatch", str(exc), at=iso(self.clock.now()), started=started)
            self.failure = str(exc)
            return None
        self.health.pass_worked("dispatch")
        self._judge(report, finished=True)
        if self.on_pass is not None:
            self.on_pass(time.monotonic() - started)
        for progress in report.sources:
            if progress.done:
                outcomes = ", ".join(f"{state} {count:,}" for state, count in sorted(progress.outcomes.items()))
                log.info("%s: %s", progress.source, outcomes)
        return report

    def _judge(self, report: DispatchReport, *, finished: bool = False) -> None:
        """Tell the daemon's health what a pass found, or (every heartbeat of a long pass) has found so far: relays
        down, messages that cannot be prepared, and definitions whose every message tried was deferred (at least
        DEFERRED_TO_SAY of them while the pass is still going)."""
        least = 1 if finished else DEFERRED_TO_SAY
        deferred = {
            p.source: p.outcomes["deferred"]
            for p in report.sources
            if p.outcomes.get("deferred", 0) >= least and not p.outcomes.get("sent")
        }
        delivered = {p.source for p in report.sources if p.outcomes.get("sent")}
        self.health.sending(
            relays_down=report.relays_down, blocked=report.blocked, deferred=deferred, delivered=delivered
        )

    def _next_wait(self, dispatcher: Dispatcher, report: DispatchReport | None) -> float:
        """Until the next retry, local send time or relay probe; at once when the pass sent and more is due; backing
        off when the pass failed or left due messages it could not send (a relay down, a secret missing)."""
        if report is None:
            wait = self._backoff()
            log.error("dispatch pass failed: %s; trying again in %ss", self.failure, f"{wait:g}")
            return wait
        try:
            upcoming = ledger.next_due(self.db)
        except Exception:
            return self._backoff()
        wait = self.interval
        if upcoming is None:
            self.stuck = 0
        else:
            until = (datetime.fromisoformat(upcoming) - self.clock.now()).total_seconds()
            if until > 0:
                self.stuck, wait = 0, min(wait, until)
            elif any(progress.done for progress in report.sources):
                self.stuck, wait = 0, MIN_WAIT
            else:
                wait = self._backoff()
        probe = dispatcher.next_probe()
        if probe is not None:
            wait = min(wait, probe)
        return max(MIN_WAIT, wait)

    def _backoff(self) -> float:
        self.stuck += 1
        return min(self.interval, MAX_BACKOFF, 2.0 ** min(self.stuck - 1, 10))


async def wait_any(events: tuple[asyncio.Event, ...], *, timeout: float) -> None:
    """Until one of `events` is set or `timeout` seconds pass (the daemon's reconcile loop waits the same way)."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiters:
            task.cancel()
