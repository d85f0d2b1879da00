"""Every error reconciler reports, and the one way each is printed.

Hierarchy::

    ReconcilerError                 anything reconciler raises on purpose; the CLI prints it without a traceback
    ├── SpecErrors                  one or more Problems found in the workspace (validate, plan, the daemon)
    ├── UsageError                  a command was called wrongly (exit code 2)
    ├── TemporaryError(delay)       retrying later may succeed (4xx replies, dropped connections)
    └── PermanentError              retrying cannot succeed (5xx replies)

A `Problem` is a value, not an exception: checks collect all of them so a run reports every mistake at once,
in compiler form (``path:line:column: Kind name: field: message (hint)``) that editors and CI understand.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]
Loc = tuple[str | int, ...]


def closest(word: str, candidates: Iterable[str], *, cutoff: float = 0.6) -> str | None:
    """The candidate `word` most likely misspells, if any is close enough."""
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return found[0] if found else None


def did_you_mean(word: str, candidates: Iterable[str], *, otherwise: str = "") -> str:
    """The hint every "unknown X" problem gives: the closest known name, or `otherwise`."""
    guess = closest(word, candidates)
    return f"did you mean {guess!r}?" if guess else otherwise


def field_path(loc: Loc) -> str:
    """A location as a reader writes it: ``audience.lists[0]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass(frozen=True, order=True)
class Problem:
    """One mistake in the workspace, located as precisely as we can."""

    path: str
    line: int
    column: int
    kind: str
    name: str
    field: str
    message: str
    hint: str = ""
    severity: Severity = "error"

    def format(self) -> str:
        """The compiler-style line: what it is, where it is and what to do about it."""
        subject = " ".join(part for part in (self.kind, self.name) if part)
        parts = [f"{self.path}:{self.line}:{self.column}:"]
        if self.severity == "warning":
            parts.append("warning:")
        if subject:
            parts.append(f"{subject}:")
        if self.field:
            parts.append(f"{self.field}:")
        parts.append(self.message)
        text = " ".join(parts)
        return f"{text} ({self.hint})" if self.hint else text

    def github(self) -> str:
        """A GitHub Actions workflow command, shown as an annotation on the pull request's diff."""
        command = "error" if self.severity == "error" else "warning"
        title = " ".join(part for part in (self.kind, self.name) if part) or "reconciler"
        message = " ".join(p for p in (f"{self.field}:" if self.field else "", self.message) if p)
        if self.hint:
            message += f" ({self.hint})"
        props = f"file={_escape_property(self.path)},line={self.line},col={self.column},title={_escape_property(title)}"
        return f"::{command} {props}::{_escape_data(message)}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.path,
            "line": self.line,
            "column": self.column,
            "kind": self.kind,
            "name": self.name,
            "field": self.field,
            "message": self.message,
            "hint": self.hint,
            "severity": self.severity,
        }


def count_problems(problems: Sequence[Problem]) -> str:
    """ "2 errors, 1 warning"."""
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    return f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"


class ReconcilerError(Exception):
    """Base of every error raised on purpose; its message is meant for the user as it stands."""


class SpecErrors(ReconcilerError):
    """The workspace has problems; nothing built from it may take effect."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        count = len(self.problems)
        super().__init__(f"{count} problem{'s' if count != 1 else ''} in the workspace")


class UsageError(ReconcilerError):
    """A command was called with arguments that cannot work (a missing path, a bad option)."""


class TemporaryError(ReconcilerError):
    """The operation may succeed if tried again after `delay` seconds."""

    def __init__(self, message: str, *, delay: float = 60.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(ReconcilerError):
    """The operation cannot succeed however often it is tried."""


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")
