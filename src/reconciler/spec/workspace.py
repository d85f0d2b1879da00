"""DesiredState: everything a workspace asks for, with where each piece was written.

It is built by `load` and read by everything else; nothing in it touches a file, so checks and plans stay pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.spec.documents import Campaign, CustomField, MailingList, Segment, Settings
from reconciler.spec.journey import WorkflowTest
from reconciler.spec.types import Model
from reconciler.spec.workflow import Workflow

KINDS: dict[str, type[Model]] = {
    "Settings": Settings,
    "List": MailingList,
    "Field": CustomField,
    "Segment": Segment,
    "Campaign": Campaign,
    "Workflow": Workflow,
    "WorkflowTest": WorkflowTest,
}
"""Every document kind, by the spelling of its `kind` key."""

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Source:
    """Where a document was written, and where each of its keys and values sits (1-based lines and columns)."""

    path: str
    line: int
    column: int
    positions: Mapping[Loc, tuple[int, int]] = field(default_factory=dict)

    def at(self, loc: Loc) -> tuple[int, int]:
        """The position of the deepest part of `loc` that exists in the file (a missing key: its parent)."""
        for end in range(len(loc), 0, -1):
            found = self.positions.get(tuple(loc[:end]))
            if found is not None:
                return found
        return (self.line, self.column)


@dataclass(frozen=True)
class TemplateFile:
    """One template file: MJML with Jinja, and an optional hand-written text part beside it."""

    name: str
    """The name documents use: the path under templates/ without extension (offers/black-friday)."""
    path: str
    """The file's path as shown in errors."""
    text: str
    text_part: str | None = None
    """The content of templates/<name>.txt, when it exists."""

    @property
    def jinja_name(self) -> str:
        """The name `{% extends %}` and `{% include %}` use: the path under templates/."""
        return f"{self.name}.mjml"


@dataclass(frozen=True)
class PageFile:
    """A workspace's own subscriber page: templates/pages/<name>, Jinja HTML replacing the built-in page."""

    name: str
    """The page's file name under templates/pages/ (preferences.html)."""
    path: str
    """The file's path as shown in errors."""
    text: str


@dataclass(frozen=True)
class DesiredState:
    """The workspace's documents by kind and name, its templates, and the revision they came from."""

    root: str
    settings: Settings | None
    lists: Mapping[str, MailingList]
    fields: Mapping[str, CustomField]
    segments: Mapping[str, Segment]
    campaigns: Mapping[str, Campaign]
    workflows: Mapping[str, Workflow]
    templates: Mapping[str, TemplateFile]
    sources: Mapping[tuple[str, str], Source]
    revision: str
    invalid: frozenset[tuple[str, str]] = frozenset()
    workflow_tests: Mapping[str, WorkflowTest] = field(default_factory=dict)
    """Tests of workflows' logic on simulated time (`reconciler test`); they change nothing in the state."""
    """(kind, name) of documents that failed to parse: already reported, so references to them are not."""
    pages: Mapping[str, PageFile] = field(default_factory=dict)
    """The workspace's own subscriber pages (templates/pages/*.html) by file name."""

    @property
    def timezone(self) -> str:
        """The workspace's time zone: Settings `timezone`, or its default while Settings are missing or broken."""
        if self.settings is not None:
            return self.settings.timezone
        return str(Settings.model_fields["timezone"].default)

    def source(self, kind: str, name: str) -> Source:
        """Where the document was written; a placeholder when it came from nowhere (defaults)."""
        return self.sources.get((kind, name)) or Source(path=self.root, line=1, column=1)
