"""Holds on marketing mail: quiet hours in the contact's time zone, the frequency cap, and the contact's own
frequency choice. A held row gets a later attempt time and a reason; it is never dropped, and transactional mail
(receipts, opt-in confirmations) is never held.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from reconciler.clock import iso
from reconciler.plan.when import ago
from reconciler.spec.contact import FREQUENCIES
from reconciler.spec.documents import Settings
from reconciler.state import ledger
from reconciler.state.ledger import DueRow
from reconciler.state.postgres import StateDatabase
from reconciler.state.sharing import Cap

REMEMBERED = 20_000
"""Contacts whose let-through rows a Holds keeps in mind: a few pages of 1,000, bounded for a campaign of millions."""


class Holds:
    """Decides, for the pages of due rows of one message definition, which must wait and until when.

    Rows it lets through count as sent now for the rows after them: one contact can have several rows due at once
    (a run per cart, a message held over a night), and the cap must not see them only once they went out."""

    def __init__(self, db: StateDatabase, settings: Settings, *, marketing: bool) -> None:
        self.db = db
        self.quiet = settings.quiet_hours if marketing else None
        self.cap = settings.frequency_cap if marketing else None
        self.marketing = marketing
        self.default_zone = settings.timezone
        self.granted: dict[int, dict[int, str]] = {}
        """Per contact, the rows let through by this object (row id -> when), until the ledger says they went."""
        self.caps: dict[int, tuple[Cap, ...]] = {}
        """Per row let through, the limits its claim checks again (`take_caps`): another daemon may send to the same
        contact meanwhile."""

    def check(self, rows: Sequence[DueRow], *, now: datetime) -> set[int]:
        """Postpone the rows that must wait (in the state); returns their ids."""
        if not self.marketing:
            return set()
        postponed: list[tuple[int, str, str]] = []
        for row in rows:
            caps = self._caps(row, now)
            held = self._held(row, now, caps)
            if held is not None:
                until, why = held
                postponed.append((row.id, iso(until), f"postponed: {why}"))
            elif caps:
                if len(self.granted) >= REMEMBERED:
                    self.granted.clear()  # rows that many pages back are in the ledger as sent by now
                    self.caps.clear()  # and claimed: a row without its caps left is claimed on this check alone
                self.granted.setdefault(row.contact.id, {})[row.id] = iso(now)
                self.caps[row.id] = caps
        if postponed:
            ledger.postpone(self.db, postponed, at=iso(now))
        return {row_id for row_id, _, _ in postponed}

    def take_caps(self, row_id: int) -> tuple[Cap, ...]:
        """The limits the claim of a row let through checks again, inside its transaction (`ledger.claim`)."""
        return self.caps.pop(row_id, ())

    def _caps(self, row: DueRow, now: datetime) -> tuple[Cap, ...]:
        """The frequency cap and the contact's own frequency choice, as limits counted back from `now`."""
        caps = []
        if self.cap is not None:
            why = f"frequency cap: at most {self.cap.max} marketing message(s) per {ago(self.cap.per)}"
            caps.append(Cap(iso(now - self.cap.per), self.cap.max, self.cap.per.total_seconds(), why))
        chosen = FREQUENCIES.get(row.contact.frequency or "")
        if chosen is not None:
            frequency = (row.contact.frequency or "").removesuffix("ly")
            why = f"the contact chose at most one email a {frequency}"
            caps.append(Cap(iso(now - chosen), 1, chosen.total_seconds(), why))
        return tuple(caps)

    def _held(self, row: DueRow, now: datetime, caps: tuple[Cap, ...]) -> tuple[datetime, str] | None:
        if self.quiet is not None and (until := self._quiet_until(row, now)) is not None:
            return until, "quiet hours in the contact's time zone"
        for cap in caps:
            recent = self._recent(row.contact.id, since=cap.since)
            if len(recent) >= cap.most:
                return datetime.fromisoformat(recent[len(recent) - cap.most]) + timedelta(seconds=cap.per), cap.why
        return None

    def _recent(self, contact_id: int, *, since: str) -> list[str]:
        """When the contact's messages went (or were let through to go) after `since`, oldest first."""
        sent = ledger.recent_sends(self.db, contact_id, since=since)
        return sorted({**self.granted.get(contact_id, {}), **sent}.values())

    def _quiet_until(self, row: DueRow, now: datetime) -> datetime | None:
        assert self.quiet is not None
        try:
            zone = ZoneInfo(row.contact.timezone or self.default_zone)
        except (KeyError, ValueError):
            zone = ZoneInfo(self.default_zone)
        local = now.astimezone(zone)
        start, end, clock = self.quiet.start, self.quiet.end, local.time()
        inside = (start <= clock < end) if start < end else (clock >= start or clock < end)
        if not inside:
            return None
        day = local.date() if clock < end else local.date() + timedelta(days=1)
        return datetime.combine(day, end, tzinfo=zone).astimezone(UTC)
