"""WorkflowTest: a workflow's logic checked on simulated time, written beside the workflow and run in CI.

A test names a workflow, a contact (fields, lists, time zone), what happens to them at times after the run starts
(an open or a click of an earlier message, an event) and the timeline the run must follow: which messages go out
when, which branch it takes, what it does to the contact, and how it ends. `reconciler test` runs each test on a
virtual clock, in memory, and prints a diff when the timeline differs.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

from reconciler.spec.contact import ContactValues
from reconciler.spec.documents import Document
from reconciler.spec.types import Model, Slug, StepId

OFFSET_PATTERN = r"^(?:0|(?:[1-9][0-9]*d)?(?:[1-9][0-9]*h)?(?:[1-9][0-9]*m)?)$"
_OFFSET = re.compile(r"^(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?$")


def parse_offset(value: Any) -> timedelta:
    """``0``, ``2d``, ``2d1h``, ``90m``: a time after the run starts."""
    if isinstance(value, timedelta):
        return value
    text = str(value) if isinstance(value, int | str) else ""
    match = _OFFSET.match(text) if text and text != "0" else None
    if text == "0":
        return timedelta()
    if match is None or not any(match.groups()):
        raise ValueError(f"{value!r} is not a time after the start (write 0, 90m, 2h, 3d or 2d1h30m)")
    days, hours, minutes = (int(part or 0) for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes)


def format_offset(value: timedelta) -> str:
    """The spelling `parse_offset` reads, e.g. 2d1h (seconds are dropped)."""
    minutes = int(value.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    text = (f"{days}d" if days else "") + (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text or "0"


Offset = Annotated[
    timedelta,
    BeforeValidator(parse_offset),
    PlainSerializer(format_offset, return_type=str),
    WithJsonSchema({"type": "string", "pattern": OFFSET_PATTERN, "examples": ["0", "90m", "2d", "2d1h"]}),
]
"""A time after the run starts: 0, or days, hours and minutes (2d1h30m)."""


class TestContact(ContactValues):
    """The contact the run is for (made up: nothing of the state database is read)."""

    email: str = "test.contact@example.com"
    """Their address."""
    lists: list[Slug] | None = None
    """The lists they are subscribed to when the run starts. Left out, the list the workflow sends for is theirs;
    given (even `[]`), exactly these: a contact outside a marketing workflow's list gets none of its mail."""


class Happening(Model):
    """Something the contact does at a time after the run starts: `{at: 1d, opened: tips}`,
    `{at: 3h, event: purchase, properties: {total: 30}}`, `{at: 2d, unsubscribed: newsletter}`."""

    at: Offset
    """When, after the run starts."""
    opened: StepId | None = None
    """Opens the message of this send step."""
    clicked: StepId | None = None
    """Clicks a link in the message of this send step."""
    event: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]+$")
    """An event of this type arrives (through the API)."""
    properties: dict[str, Any] = {}
    """The event's properties."""
    unsubscribed: Slug | None = None
    """Leaves this list."""


def in_calendar(moment: datetime) -> datetime:
    """A simulated start the simulation's years fit after: ten years of waits from 9000 still have a date."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment.isoformat()} has no UTC offset (write e.g. 2030-01-07T10:00:00Z)")
    if not 2000 <= moment.year <= 9000:
        raise ValueError(f"{moment.isoformat()} is not between the years 2000 and 9000")
    return moment


class WorkflowTest(Document):
    """A workflow's expected timeline for one contact, checked by `reconciler test` on simulated time."""

    kind: Literal["WorkflowTest"]
    """WorkflowTest."""
    workflow: Slug
    """The workflow under test."""
    start: Annotated[datetime, AfterValidator(in_calendar)] = datetime.fromisoformat("2030-01-07T10:00:00+00:00")
    """When the run starts (a Monday 10:00 UTC unless given; with an offset), between the years 2000 and 9000."""
    contact: TestContact = TestContact()
    """Who it is for."""
    happens: list[Happening] = []
    """What the contact does, and when."""
    expect: list[str] = Field(min_length=1)
    """The timeline, one line per thing the run does: `0 sent hello`, `2d sent tips`, `5d else branch-on-tips`,
    `5d tagged welcomed`, `5d completed` (waits are left out: the times say them)."""
    days: Annotated[int, Field(ge=1, le=3660)] = 90
    """How far to simulate."""
    trigger: dict[str, Any] = {}
    """For an event trigger: the triggering event's properties (its key, and what `property:` tests)."""
