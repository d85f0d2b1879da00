"""The one source of "now".

Pure code (plan, check) takes `now` as an argument; the daemon and the CLI ask a `Clock` once per pass, so a test
or `reconciler tick --now` can put the whole system at any moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass(frozen=True)
class FixedClock:
    """A clock that always says the same time: tests and `tick --now`."""

    at: datetime

    def now(self) -> datetime:
        return self.at.astimezone(UTC)


def parse_instant(text: str) -> datetime:
    """An ISO 8601 date-time with an offset (`Z` allowed), as `--now` takes it; naive times are rejected."""
    value = datetime.fromisoformat(text.strip().replace("z", "Z"))
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset (write e.g. 2026-11-27T09:00:00+01:00 or ...Z)")
    return value.astimezone(UTC)


def iso(moment: datetime) -> str:
    """How instants are stored: UTC, seconds precision, sortable as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
