"""When things happen: a campaign's start, a local send time in a contact's zone, and how a plan says them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from reconciler.spec.documents import LocalSendTime

EARLIEST_OFFSET = timedelta(hours=14)
"""The most any time zone is ahead of UTC (Pacific/Kiritimati): a local-time send starts there."""


def start_at(send_at: Any, *, now: datetime) -> datetime:
    """When sending starts: now, the given instant, or for a local time the moment it is reached anywhere."""
    if send_at == "now":
        return now
    if isinstance(send_at, LocalSendTime):
        local = datetime.combine(send_at.date, send_at.local_time, tzinfo=UTC)
        return local - EARLIEST_OFFSET
    assert isinstance(send_at, datetime)
    return send_at.astimezone(UTC)


def local_due(send_at: LocalSendTime, timezone: str) -> datetime:
    """The instant `send_at`'s wall-clock time is reached in `timezone`."""
    moment = datetime.combine(send_at.date, send_at.local_time, tzinfo=ZoneInfo(timezone))
    return moment.astimezone(UTC)


def describe_when(send_at: Any, *, now: datetime) -> str:
    if send_at == "now":
        return "now"
    if isinstance(send_at, LocalSendTime):
        return f"{send_at.date.isoformat()} {send_at.local_time.strftime('%H:%M')} in each contact's time zone"
    assert isinstance(send_at, datetime)
    text = f"{send_at.strftime('%a %Y-%m-%d %H:%M')} {send_at.strftime('%z')[:3]}:{send_at.strftime('%z')[3:]}"
    if send_at.utcoffset() != timedelta(0):
        text += f" ({send_at.astimezone(UTC).strftime('%H:%M')} UTC)"
    return text


def ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' * (count != 1)}"
    return f"{seconds} seconds"
