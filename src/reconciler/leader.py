"""Which daemon leads: a thread of its own, with a database connection of its own, that registers this process,
beats every BEAT seconds with its health, and takes or renews the reconcile lease (`state.lease`) at each beat.

The daemon's reconcile loop asks `holding()` before each pass: only the holder applies revisions, starts campaigns
and runs workflows, inside `fenced(db)`, so that if it loses the lease mid-pass (it stalled past the expiry and
another daemon took over) its next write is refused rather than done beside the new holder's. The others stand by:
they keep sending and serving, and the first to find the lease expired (or released at a clean stop, or held by an
exited process on its own host) takes it at its next beat, within TTL + BEAT seconds of the holder's death, and
wakes its loop (`on_change`) for a pass at once.

Renewing from this thread, not from the pass, means a long pass (a million-row snapshot) does not lose the lease;
the holder stops believing it holds the lease a BEAT before the expiry others go by when its beats fail, and the
fence covers the rest.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from reconciler.state import lease, processes
from reconciler.state.db import fenced
from reconciler.state.engine import revive
from reconciler.state.lease import Held, Lease, LeaseLost
from reconciler.state.postgres import StateDatabase

log = logging.getLogger(__name__)
TTL = 10.0
"""Seconds a lease lasts without renewal: how long the daemons wait for a holder that died on another host."""
BEAT = 2.5
"""Seconds between beats: each renews the lease (or tries to take it) and the process's heartbeat."""


class LeaseKeeper:
    """`start()` it once, `stop()` it last (it lets the lease go for the next daemon); `holding()` and `fenced()`
    from any thread."""

    def __init__(
        self,
        db: StateDatabase,
        *,
        role: str = "daemon",
        ttl: float = TTL,
        beat: float = BEAT,
        clock: Callable[[], float] = time.time,
        status: Callable[[], str] = lambda: "ok",
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.db, self.ttl, self.interval, self.clock, self.status = db, ttl, beat, clock, status
        self.on_change = on_change
        """Called from this thread with True when this process took the lease, False when it lost it."""
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.ident = f"{self.host}:{self.pid}:{secrets.token_hex(3)}"
        started = datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.process = processes.Process(self.ident, self.host, self.pid, role, started, started, "ok")
        self.held: Held | None = None
        self.seen: Lease | None = None
        """The lease as the last beat found it held by another process."""
        self.failing = ""
        self.leading = False
        """Whether the last beat found this process holding the lease (`on_change` is called when it changes)."""
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._main, name="reconciler-lease", daemon=True)

    def start(self) -> None:
        """Register and try the lease once before returning (a lone daemon leads its first pass), then beat."""
        self.beat()
        self.thread.start()

    def stop(self) -> None:
        """Stop beating, let the lease go and unregister (after the pass has stopped writing)."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()
        with self.lock:
            held, self.held = self.held, None
        try:
            if held is not None:
                lease.release(self.db, held, now=self.clock())
            processes.unregister(self.db, self.ident)
        except Exception as exc:  # the next daemon waits for the expiry instead
            log.warning("could not let the lease go: %s", exc)

    def holding(self) -> bool:
        """Whether this process holds the lease now, by its own last beat: false a BEAT before the expiry the others
        go by, when its beats could not renew it."""
        return self.current() is not None

    def current(self) -> Held | None:
        with self.lock:
            held = self.held
        if held is not None and self.clock() >= held.expires_at - self.interval:
            return None
        return held

    @contextmanager
    def fenced(self, db: StateDatabase) -> Iterator[Held]:
        """Writes on `db` while inside are fenced by the lease as held now (LeaseLost if it is not)."""
        held = self.current()
        if held is None:
            raise LeaseLost("this process does not hold the lease")
        with fenced(db, lambda connection: lease.check(connection, held)):
            yield held

    def holder(self) -> str | None:
        """Who holds the lease, as the last beat saw it: this process's id, another's, or None."""
        if self.holding():
            return self.ident
        with self.lock:
            return self.seen.holder if self.seen is not None else None

    def _main(self) -> None:
        while not self.stopping.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        """One beat: the heartbeat, then the lease taken or renewed. A failure (the database cannot be reached) is
        logged once; the lease then runs out on its own."""
        now = self.clock()
        try:
            revive(self.db)  # a PostgreSQL connection the server closed (a restart, a failover) is made again
            processes.beat(self.db, self.process, at=datetime.fromtimestamp(now, UTC), status=self.status())
            got = lease.acquire(
                self.db, self.ident, host=self.host, pid=self.pid, now=now, ttl=self.ttl, alive=processes.pid_alive
            )
        except Exception as exc:
            if not self.failing:
                log.warning("lease and heartbeat not written (%s); trying again every %ss", exc, f"{self.interval:g}")
            self.failing = str(exc)
        else:
            if self.failing:
                log.info("lease and heartbeat written again")
                self.failing = ""
            with self.lock:
                self.held, self.seen = (got, None) if isinstance(got, Held) else (None, got)
        holding = self.holding()
        if holding != self.leading:
            self.leading = holding
            self._changed(holding)

    def _changed(self, holding: bool) -> None:
        if holding:
            log.info("this daemon (%s) holds the lease: it applies, starts and runs workflows", self.ident)
        else:
            log.warning(
                "lease lost to %s: this daemon stands by (it still sends and serves)", self.holder() or "nobody"
            )
        if self.on_change is not None:
            self.on_change(holding)
