"""A transport's rate limits shared by every daemon sending through it: the token buckets live in the state
database (`state.rates`), not in the memory of one process, so two daemons on one PostgreSQL database together send
no faster than the transport's `rate`. (On SQLite the daemon keeps the buckets in memory, `transports.RateLimiter`:
one process sends from one file.)

Tokens are taken a few at a time (at most a tenth of a second's worth at the tightest limit) and spent from memory,
so a fast transport does not write a transaction per message; tokens taken and not spent within a second are
dropped, never saved up for a burst.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from reconciler.spec.documents import Rate
from reconciler.state import rates
from reconciler.state.postgres import StateDatabase

log = logging.getLogger(__name__)
SPARE_FOR = 1.0
"""Seconds that tokens taken ahead may wait to be spent."""
MAX_WAIT = 1.0
"""The longest wait before asking the buckets again (another daemon may stop sending meanwhile)."""


class SharedRateLimiter:
    """What `transports.SmtpTransport` waits on before each message (`acquire`), from the state's buckets."""

    def __init__(
        self, db: StateDatabase, transport: str, rate: Rate, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.db, self.transport, self.clock = db, transport, clock
        self.limits = rate.limits()
        tightest = min((limit / period for limit, period in self.limits), default=0.0)
        self.batch = max(1, int(tightest / 10))
        self.spare = 0
        self.spare_until = 0.0
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        if not self.limits:
            return
        async with self.lock:
            while True:
                now = self.clock()
                if self.spare and now < self.spare_until:
                    self.spare -= 1
                    return
                taken, wait = rates.take(self.db, self.transport, self.limits, now=now, want=self.batch)
                if taken:
                    self.spare, self.spare_until = taken - 1, now + SPARE_FOR
                    return
                await asyncio.sleep(min(MAX_WAIT, max(0.001, wait)))
