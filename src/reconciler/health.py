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
LOW_DISK_BYTES = 100 * 1024 * 1024
"""Free space beside the state database below which the daemon says it is degraded: SQLite needs room to write its
log before anything can be recorded."""
HEARTBEAT_SECONDS = 300.0
"""How often an idle daemon writes that it is alive (for `reconciler status`), when nothing else changed."""


@dataclass
class LoopHealth:
    """Consecutive failures of one loop's passes."""

    failures: int = 0
    error: str = ""
    since: str | None = None

    def worked(self) -> None:
        self.failures, self.error, self.since = 0, "", None

    def failed(self, error: str, *, at: str) -> None:
        self.failures += 1
        self.error = error
        self.since = self.since or at


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
    disk_free: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def pass_worked(self, loop: str) -> None:
        with self.lock:
            getattr(self, loop).worked()

    def pass_failed(self, loop: str, error: str, *, at: str) -> None:
        with self.lock:
            getattr(self, loop).failed(error, at=at)

    def failures(self, loop: str) -> int:
        with self.lock:
            return int(getattr(self, loop).failures)

    def sending(self, *, relays_down: dict[str, str], blocked: dict[str, str]) -> None:
        with self.lock:
            self.relays_down, self.blocked = dict(relays_down), dict(blocked)

    def disk(self, free: int) -> None:
        with self.lock:
            self.disk_free = free

    def report(self) -> HealthReport:
        with self.lock:
            problems = [
                f"{name} passes have failed {loop.failures} times in a row since {loop.since}: {loop.error}"
                for name, loop in (("reconcile", self.reconcile), ("dispatch", self.dispatch))
                if loop.failures >= FAILURES_BEFORE_DEGRADED
            ]
            problems += [
                f"transport {name}: the server cannot be reached ({why})" for name, why in self.relays_down.items()
            ]
            problems += [f"{source}: messages wait: {why}" for source, why in self.blocked.items()]
            if self.disk_free is not None and self.disk_free < LOW_DISK_BYTES:
                problems.append(f"low disk space beside the state database: {self.disk_free // (1024 * 1024)} MB free")
        return HealthReport(tuple(problems), time.time())
