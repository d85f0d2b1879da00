"""A plan: the actions apply would take, and the problems that stop some of them, as plain values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from reconciler.errors import Problem
from reconciler.plan.audience import AudienceCount
from reconciler.spec.documents import CustomField, MailingList
from reconciler.state.campaigns import CampaignDefinition
from reconciler.state.workflows import StoredWorkflow

Op = Literal["create", "update", "schedule", "unschedule", "pause", "resume", "cancel", "remove", "confirm"]

SYMBOLS: dict[str, str] = {
    "create": "+",
    "update": "~",
    "schedule": "+",
    "unschedule": "~",
    "pause": "‖",
    "resume": "▶",
    "cancel": "×",
    "remove": "-",
    "confirm": "!",
}


@dataclass(frozen=True)
class Action:
    """One change apply would make to one document's record in the state."""

    kind: str
    name: str
    op: Op
    summary: str
    """One line a reviewer reads: "schedule for Fri 2026-11-27 08:00 +01:00"."""
    changes: tuple[str, ...] = ()
    """Which keys differ from what was applied."""
    audience: AudienceCount | None = None
    status: str | None = None
    """For campaigns: the status the record has afterwards."""
    start_at: datetime | None = None
    when: str = ""
    """When it sends, as a reader says it ("Fri 2026-11-27 08:00 +01:00")."""
    document: MailingList | CustomField | None = field(default=None, compare=False, repr=False)
    """For lists and fields: the document apply records."""
    workflow: StoredWorkflow | None = field(default=None, compare=False, repr=False)
    """For workflows: what apply stores for their runs."""
    definition: CampaignDefinition | None = field(default=None, compare=False, repr=False)
    """For campaigns that have not started: what apply writes (document, content, audience)."""
    content_hash: str = field(default="", compare=False, repr=False)
    """For workflows: the hash of their steps and templates."""

    @property
    def subject(self) -> str:
        return f"{self.kind} {self.name}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "op": self.op,
            "summary": self.summary,
            "changes": list(self.changes),
            "audience": self.audience.as_dict() if self.audience else None,
            "status": self.status,
            "start_at": self.start_at.isoformat() if self.start_at else None,
        }


@dataclass(frozen=True)
class Plan:
    revision: str
    git_commit: str | None
    actions: tuple[Action, ...]
    problems: tuple[Problem, ...] = ()
    audiences: Mapping[str, AudienceCount] = field(default_factory=dict)
    """Every campaign's audience as it stands, whether or not it changes."""
    serial: int = 0
    """The state's serial the plan was made from (apply refuses a stale plan)."""
    segment_counts: Mapping[str, int] = field(default_factory=dict)
    last_counts: Mapping[str, int] = field(default_factory=dict)
    """Counts at the last apply, by "Segment name" / "Campaign name"."""
    uncounted_segments: tuple[str, ...] = ()
    """Segments whose size was not counted (time budget)."""
    not_applied: Mapping[str, str] = field(default_factory=dict)
    """Campaigns that are history (sent, or cancelled while sending) whose files were edited: what was not applied
    and where, as `status` shows it."""
    workflow_runs: Mapping[str, str] = field(default_factory=dict)
    """The active runs of each workflow the plan leaves unchanged, on their steps ("3 active runs: 2 on pause, 1 on
    rest"): a changed or removed workflow says it in its action's summary."""

    def change(self, subject: str, now: int | None) -> str:
        """ " (+12 since the last apply)", or nothing when unknown (`now` None: not counted) or unchanged."""
        before = self.last_counts.get(subject)
        if before is None or now is None or before == now:
            return ""
        return f" ({now - before:+,} since the last apply)"

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def has_changes(self) -> bool:
        return bool(self.actions)
