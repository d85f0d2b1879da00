"""The Checker collects problems for one workspace and says where each one is."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from reconciler.errors import Loc, Problem, Severity, did_you_mean, field_path
from reconciler.spec import DesiredState

ORDERED_TYPES = {"number", "integer", "date", "datetime"}
DATE_TYPES = {"date", "datetime"}
_DOCUMENT_KINDS = {
    "list": "List",
    "segment": "Segment",
    "campaign": "Campaign",
    "workflow": "Workflow",
    "field": "Field",
}


@dataclass
class Checker:
    """Collects problems for one workspace."""

    desired: DesiredState
    problems: list[Problem] = field(default_factory=list)

    def report(
        self, kind: str, name: str, loc: Loc, message: str, hint: str = "", severity: Severity = "error"
    ) -> None:
        source = self.desired.source(kind, name)
        line, column = source.at(loc)
        self.problems.append(Problem(source.path, line, column, kind, name, field_path(loc), message, hint, severity))

    def reference(self, kind: str, name: str, loc: Loc, target_kind: str, target: str, known: Iterable[str]) -> bool:
        """Report `target` unless it is one of `known`; say the closest name and where to declare it."""
        known = list(known)
        if target in known:
            return True
        if {(_DOCUMENT_KINDS.get(target_kind, ""), target), ("*", target)} & self.desired.invalid:
            return False  # the target has its own errors; "unknown" would only add noise
        otherwise = (
            f"known: {', '.join(sorted(known)[:12])}" if known else f"declare it first: no {target_kind} exists yet"
        )
        hint = did_you_mean(target, known, otherwise=otherwise)
        self.report(kind, name, loc, f"unknown {target_kind} {target!r}", hint)
        return False
