"""What the running daemon knows about itself, so that it never reports "ok" while nothing works.

The reconcile loop and the send loop record each pass here (a failure, or that it worked again); the send loop
records relays that cannot be reached and message definitions that cannot be prepared; the daemon records the free
space beside the state database. `/healthz` answers from this (and from the state: a refused revision, campaigns
that are not ready), `/metrics` exports it, and the daemon keeps a copy in the state database for
`reconciler status`, written when it changes and otherwise every HEARTBEAT_SECONDS.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

FAILURES_BEFORE_DEGRADED = 3
"""Passes in a row that may fail before the daemon says it is degraded (one failure is often a passing lock)."""
FAILING_FOR = 30.0
"""Seconds of failing passes after which the daemon says it is degraded however few they were: a pass that waited
out the whole busy timeout for a lock held elsewhere is one failure, and already half a minute of nothing done."""
LOW_DISK_BYTES = 100 * 1024 * 1024
"""Free space beside the state database below which the daemon says it is degraded: SQLite needs room to write its
log before anything can be recorded."""


@dataclass
class LoopHealth:
    """Consecutive failures of one loop's passes."""

    failures: int = 0
    error: str = ""
    since: str | None = None
    started: float | None = None
    """When the first of the failing passes began (monotonic seconds)."""

    def worked(self) -> None:
        self.failures, self.error, self.since, self.started = 0, "", None, None

    def failed(self, error: str, *, at: str, started: float) -> None:
        self.failures += 1
        self.error = error
        self.since = self.since or at
        self.started = self.started if self.started is not None else started

    def failing(self) -> bool:
        if not self.failures:
            return False
        long = self.started is not None and time.monotonic() - self.started >= FAILING_FOR
        return self.failures >= FAILURES_BEFORE_DEGRADED or long


@dataclass(frozen=True)
class HealthReport:
    """The daemon's own view: "ok", or "degraded" with each problem as a sentence an operator can act on."""

    problems: tuple[str, ...]
    checked_at: float

    @property
    def status(self) -> str:
        return "degraded" if self.problems else "ok"

    def as_dict(self) -> dict[str, object]:
        return {"status": self.status, "problems": list(self.problems)}


@dataclass
class Health:
    """Shared by the daemon's loops (each in its own thread); every method takes the lock."""

    reconcile: LoopHealth = field(default_factory=LoopHealth)
    dispatch: LoopHealth = field(default_factory=LoopHealth)
    relays_down: dict[str, str] = field(default_factory=dict)
    """Transport name -> why it cannot be reached."""
    blocked: dict[str, str] = field(default_factory=dict)
    """Message definition -> why its messages wait (a secret missing, a template that no longer compiles)."""
    deferring: dict[str, int] = field(default_factory=dict)
    """Message definition -> messages deferred in its last pass without any delivered (a relay that answers 4xx
    to everything)."""
    disk_free: int | None = None
    standing: tuple[str, ...] = ()
    """What the daemon found at its start and stays true until it restarts differently (links already sent that
    no longer verify with the keys it was given)."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def pass_worked(self, loop: str) -> None:
        with self.lock:
            getattr(self, loop).worked()

    def pass_failed(self, loop: str, error: str, *, at: str, started: float | None = None) -> None:
        """A pass of `loop` failed; `started`: when it began (monotonic), so a long wait for a lock counts."""
        with self.lock:
            getattr(self, loop).failed(error, at=at, started=time.monotonic() if started is None else started)

    def failures(self, loop: str) -> int:
        with self.lock:
            return int(getattr(self, loop).failures)

    def sending(
        self,
        *,
        relays_down: dict[str, str],
        blocked: dict[str, str],
        deferred: dict[str, int] | None = None,
        delivered: set[str] | None = None,
    ) -> None:
        """What a send pass found (or, during a long one, has found so far). `deferred`: message definitions all of
        whose messages tried were deferred; they stay a problem until one of theirs is `delivered` again."""
        with self.lock:
            self.relays_down, self.blocked = dict(relays_down), dict(blocked)
            for source in delivered or set():
                self.deferring.pop(source, None)
            self.deferring.update(deferred or {})

    def stands(self, problems: tuple[str, ...]) -> None:
        with self.lock:
            self.standing = problems

    def disk(self, free: int) -> None:
        with self.lock:
            self.disk_free = free

    def report(self) -> HealthReport:
        with self.lock:
            problems = [
                f"{name} passes have failed {loop.failures} times in a row since {loop.since}: {loop.error}"
                for name, loop in (("reconcile", self.reconcile), ("dispatch", self.dispatch))
                if loop.failing()
            ]
            problems += [
                f"transport {name}: the server cannot be reached ({why})" for name, why in self.relays_down.items()
            ]
            problems += [f"{source}: messages wait: {why}" for source, why in self.blocked.items()]
            problems += [
                f"{source}: all {count:,} messages tried in the last pass were deferred (the relay answers with a "
                "temporary failure; `reconciler status NAME --failures` shows its replies)"
                for source, count in self.deferring.items()
            ]
            problems += list(self.standing)
            if self.disk_free is not None and self.disk_free < LOW_DISK_BYTES:
                problems.append(f"low disk space beside the state database: {self.disk_free // (1024 * 1024)} MB free")
        return HealthReport(tuple(problems), time.time())
