"""What one pass of the runner works with: the workflows as applied, the clock, and what it has done so far."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from reconciler.clock import iso
from reconciler.segments import Compiler
from reconciler.spec.workflow import StepNode, step_graph
from reconciler.state import records, settings
from reconciler.state import workflows as runs
from reconciler.state.db import get_meta
from reconciler.state.postgres import StateDatabase
from reconciler.state.workflows import StoredWorkflow


@dataclass
class RunReport:
    """What one pass of the runner did."""

    started: int = 0
    advanced: int = 0
    queued: int = 0
    finished: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    ignored: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """Triggers that started nothing, and why ("cart: events without cart_id", "welcome: events while paused")."""

    @property
    def busy(self) -> bool:
        return bool(self.started or self.advanced or self.finished or self.ignored)

    def describe(self) -> str:
        ended = ", ".join(f"{n} {state}" for state, n in sorted(self.finished.items()) if n) or "none finished"
        ignored = "".join(f"; not started: {n} {why}" for why, n in sorted(self.ignored.items()))
        return f"{self.started} runs started, {self.advanced} advanced, {self.queued} messages queued, {ended}{ignored}"


class Pass:
    """The workflows as the last good revision stored them, at one moment."""

    def __init__(self, db: StateDatabase, *, now: datetime) -> None:
        self.db, self.now = db, now
        self.stored = runs.load_workflows(db)
        self.active = {name: s for name, s in self.stored.items() if s.workflow.status == "active"}
        self.graphs: dict[str, dict[str, StepNode]] = {
            name: step_graph(s.workflow.steps) for name, s in self.active.items()
        }
        self.revision = get_meta(db, "last_applied_revision") or ""
        self.at = iso(now)
        self._texts: dict[datetime, str] = {}
        self._digests: dict[str, str] = {}
        self.report = RunReport()
        self._compilers: dict[str, Compiler] = {}
        self._zone: str | None = None
        self.writes = runs.StepWrites(db)
        """The writes of the batch of runs being advanced (`walk`)."""

    def digest(self, name: str, step: str) -> str:
        """The content hash of a send step's message, computed once per pass."""
        key = f"{name}\0{step}"
        if key not in self._digests:
            self._digests[key] = self.workflow(name).contents[step].digest
        return self._digests[key]

    def iso(self, moment: datetime) -> str:
        """`clock.iso`, remembered: a pass writes the same few moments for many runs."""
        text = self._texts.get(moment)
        if text is None:
            if len(self._texts) > 10_000:
                self._texts.clear()
            text = self._texts[moment] = iso(moment)
        return text

    @property
    def timezone(self) -> str:
        """The workspace's time zone, as applied."""
        if self._zone is None:
            self._zone = settings.load(self.db).settings.timezone
        return self._zone

    def compiler(self, name: str) -> Compiler:
        """The condition compiler of one workflow (its stored segments), at this pass's moment."""
        if name not in self._compilers:
            stored = self.stored[name]
            types = records.field_types(self.db)
            self._compilers[name] = Compiler(stored.segments, types, now=self.now, timezone=self.timezone)
        return self._compilers[name]

    def workflow(self, name: str) -> StoredWorkflow:
        return self.active[name]
