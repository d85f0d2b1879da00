"""The web service's rate limits and signed-out dashboard sessions behind one interface (`WebLimits`), in one of two
places chosen once, when the app is built, by the state's engine:

- SQLite (`in_memory`): in this process's memory (`security.RateLimit`), as one daemon serves from one file;
- PostgreSQL (`in_database`): in the state database (`state.web_limits`), so that any number of daemons behind a
  load balancer together allow what one would (ten wrong sign-ins per address in ten minutes, not ten per daemon)
  and a session signed out on one is refused by all. Each call runs in a worker thread (`WebContext.read` and
  `write`), never on the event loop.

The handlers only await `retry_after`, `refund`, `sign_out` and `signed_out`, whichever the place.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from reconciler.state import web_limits
from reconciler.state.postgres import StateDatabase
from reconciler.web.security import RateLimit

P = ParamSpec("P")
T = TypeVar("T")

LIMITS: dict[str, tuple[int, float]] = {
    "per_ip": (10, 600.0),
    "per_address": (3, 3600.0),
    "wrong_tokens": (20, 600.0),
    "wrong_plan_tokens": (20, 600.0),
    "sign_ins": (10, 600.0),
}
"""Each limit's events per key and window in seconds: subscribe-form posts per client address and per email
address; requests with a missing or wrong bearer token (API, plan), and dashboard sign-ins with a wrong token, per
client address."""
PRUNE_EVERY = 10.0
"""Seconds between prunes of the rows that hold nothing any more, in each process..."""
PRUNE_AFTER = 100
"""...or events counted, whichever comes first: each event makes at most one row, a prune deletes up to a thousand,
so a flood of new addresses cannot outgrow the prunes."""
SIGNED_OUT_KEPT = 100_000
"""Sign-outs kept in memory at most (SQLite): more are not remembered (the cookie is still cleared)."""


class Limit(Protocol):
    """At most so many events per key in a window: what a handler asks before doing what the limit guards."""

    async def retry_after(self, key: str, *, count: bool = True) -> int:
        """0, and the event counted, when it is allowed (`count=False`: only look); else the seconds until it
        would be (at least 1), nothing counted."""
        ...

    async def refund(self, key: str) -> None:
        """Take back the last event counted for `key` (it turned out not to be one that counts)."""
        ...


class Sessions(Protocol):
    """The dashboard sessions signed out before they expired."""

    async def sign_out(self, session: str, *, expires_at: float) -> None:
        """Refuse `session` (its cookie) from now until `expires_at` (seconds since the epoch)."""
        ...

    async def signed_out(self, session: str) -> bool: ...


@dataclass
class WebLimits:
    """Every limit the web service keeps (LIMITS, by name) and the signed-out sessions."""

    per_ip: Limit
    per_address: Limit
    wrong_tokens: Limit
    wrong_plan_tokens: Limit
    sign_ins: Limit
    sessions: Sessions


class Database(Protocol):
    """Database work in worker threads: `WebContext`."""

    async def read(self, fn: Callable[Concatenate[StateDatabase, P], T], *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def write(self, fn: Callable[Concatenate[StateDatabase, P], T], *args: P.args, **kwargs: P.kwargs) -> T: ...


def in_memory() -> WebLimits:
    """The limits in this process's memory (SQLite: one daemon per state file)."""
    limits = {name: _MemoryLimit(RateLimit(limit, window)) for name, (limit, window) in LIMITS.items()}
    return WebLimits(**limits, sessions=_MemorySessions())


def in_database(database: Database) -> WebLimits:
    """The limits in the state database (PostgreSQL: every daemon on it counts together)."""
    pruning = _Pruning()
    limits = {name: _SharedLimit(database, pruning, name, *limit) for name, limit in LIMITS.items()}
    return WebLimits(**limits, sessions=_SharedSessions(database, pruning))


class _MemoryLimit:
    def __init__(self, events: RateLimit) -> None:
        self.events = events

    async def retry_after(self, key: str, *, count: bool = True) -> int:
        return self.events.retry_after(key, count=count)

    async def refund(self, key: str) -> None:
        self.events.refund(key)


class _MemorySessions:
    def __init__(self) -> None:
        self.ended: dict[str, float] = {}

    async def sign_out(self, session: str, *, expires_at: float) -> None:
        now = time.time()
        self.ended = {s: t for s, t in self.ended.items() if t > now}
        if len(self.ended) < SIGNED_OUT_KEPT:
            self.ended[session] = expires_at

    async def signed_out(self, session: str) -> bool:
        return self.ended.get(session, 0.0) > time.time()


class _Pruning:
    """When this process next deletes the rows that hold nothing any more (PRUNE_EVERY, PRUNE_AFTER)."""

    def __init__(self) -> None:
        self.at, self.counted = time.monotonic(), 0

    def due(self) -> bool:
        self.counted += 1
        if self.counted < PRUNE_AFTER and time.monotonic() - self.at < PRUNE_EVERY:
            return False
        self.at, self.counted = time.monotonic(), 0
        return True


def _take(db: StateDatabase, name: str, key: str, limit: int, window: float, prune: bool) -> int:
    now = time.time()
    wait = web_limits.take(db, name, key, limit=limit, window=window, now=now)
    if prune:  # after the count's transaction: a statement of its own, holding no row of the count
        web_limits.prune(db, now=now)
    return wait


def _look(db: StateDatabase, name: str, key: str, limit: int, window: float) -> int:
    return web_limits.wait(db, name, key, limit=limit, window=window, now=time.time())


def _refund(db: StateDatabase, name: str, key: str, window: float) -> None:
    web_limits.refund(db, name, key, window=window, now=time.time())


class _SharedLimit:
    def __init__(self, database: Database, pruning: _Pruning, name: str, limit: int, window: float) -> None:
        self.database, self.pruning = database, pruning
        self.name, self.limit, self.window = name, limit, window

    async def retry_after(self, key: str, *, count: bool = True) -> int:
        if not count:
            return await self.database.read(_look, self.name, key, self.limit, self.window)
        prune = self.pruning.due()
        return await self.database.write(_take, self.name, key, self.limit, self.window, prune)

    async def refund(self, key: str) -> None:
        await self.database.write(_refund, self.name, key, self.window)


def _sign_out(db: StateDatabase, digest: str, expires_at: float, prune: bool) -> None:
    web_limits.sign_out(db, digest, expires_at=expires_at)
    if prune:
        web_limits.prune(db, now=time.time())


def _signed_out(db: StateDatabase, digest: str) -> bool:
    return web_limits.signed_out(db, digest, now=time.time())


class _SharedSessions:
    """Sessions by the SHA-256 of their cookie: whoever reads the database learns no cookie from it."""

    def __init__(self, database: Database, pruning: _Pruning) -> None:
        self.database, self.pruning = database, pruning

    async def sign_out(self, session: str, *, expires_at: float) -> None:
        await self.database.write(_sign_out, _digest(session), expires_at, self.pruning.due())

    async def signed_out(self, session: str) -> bool:
        return await self.database.read(_signed_out, _digest(session))


def _digest(session: str) -> str:
    return hashlib.sha256(session.encode()).hexdigest()
