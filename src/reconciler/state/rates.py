"""The rate limits of each transport as token buckets in the state database (`send_rates`), so that every daemon
sending through a transport takes from the same buckets: together they send no faster than its `rate` says.

A bucket per transport and period (1 s, 60 s, 3,600 s, 86,400 s) holds up to its limit of tokens and fills at
limit/period per second; a message takes one token from each. A bucket that is not there yet is full. Times are
seconds since the epoch by each process's clock (hosts sharing a database keep their clocks in step); a clock
behind the bucket's own time adds nothing and takes nothing back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from reconciler.state.db import write_rows
from reconciler.state.portable import is_postgres
from reconciler.state.postgres import StateDatabase

_READ = "SELECT period, tokens, at FROM send_rates WHERE transport = ?"
_LOCKED = _READ + " FOR UPDATE"


def take(
    db: StateDatabase, transport: str, limits: Sequence[tuple[int, float]], *, now: float, want: int = 1
) -> tuple[int, float]:
    """Take up to `want` tokens from each of the transport's buckets (`limits`: (messages, period seconds)), as
    many as every bucket has; returns (tokens taken, seconds until the next token when none could be). One short
    transaction that locks only the transport's rows (PostgreSQL: no writers' lock, the buckets' rows locked)."""
    db.conn.executemany(  # a bucket that is not there yet starts full; two processes creating it at once make one
        "INSERT OR IGNORE INTO send_rates(transport, period, tokens, at) VALUES (?, ?, ?, ?)",
        [(transport, float(period), float(limit), now) for limit, period in limits],
    )
    with write_rows(db):
        stored = {
            float(period): (float(tokens), float(at))
            for period, tokens, at in db.conn.execute(_LOCKED if is_postgres(db) else _READ, (transport,))
        }
        buckets = []
        for limit, period in limits:
            tokens, at = stored.get(float(period), (float(limit), now))
            rate = limit / period
            buckets.append((period, min(float(limit), tokens + max(0.0, now - at) * rate), rate, max(at, now)))
        taken = max(0, min(want, *(math.floor(tokens) for _, tokens, _, _ in buckets)))
        db.conn.executemany(
            "UPDATE send_rates SET tokens = ?, at = ? WHERE transport = ? AND period = ?",
            [(tokens - taken, at, transport, float(period)) for period, tokens, _, at in buckets],
        )
    if taken:
        return taken, 0.0
    return 0, max((1 - tokens) / rate for _, tokens, rate, _ in buckets if tokens < 1)
