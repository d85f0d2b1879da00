"""What a campaign sends, as stored with it: the "essence" a plan compares and dispatch sends from.

Once a campaign starts, its stored content is what goes out, whatever the files say later: dispatch builds every
message from this record (flattened MJML, subjects, sender, tracking), never from the workspace. `plan` writes it
(through `campaigns.upsert_campaign`) and compares its hash; `ledger` reads it back for sending and view-online.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from reconciler.spec.documents import Organization, Sender, Tracking, Utm


class _Stored(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class MessagePart(_Stored):
    """One message definition: its subject and preheader (Jinja) and its template, flattened into one MJML."""

    subject: str
    preheader: str = ""
    template: str = ""
    """The template's name under templates/ ('' for built-in messages such as the opt-in confirmation)."""
    mjml: str
    """Layouts and partials resolved; the per-recipient Jinja is still in it."""
    text_part: str | None = None
    """A hand-written text/plain part (templates/<name>.txt), or None to derive one from the HTML."""


class StageContent(MessagePart):
    """A follow-up stage of a campaign."""

    name: str
    after: float
    """Seconds after the previous stage started."""
    only: str | None = None
    """not_opened, not_clicked, opened, clicked, or None for everyone the first message reached."""


class MessageContent(MessagePart):
    """Everything that decides the bytes a recipient gets (not who gets them, nor when)."""

    sender: Sender
    transport: str
    """A key of Settings `transports`."""
    tracking: Tracking
    utm: Utm | None = None
    organization: Organization
    stages: tuple[StageContent, ...] = ()

    def part(self, stage: str) -> MessagePart:
        """The first message ('') or the named stage."""
        if not stage:
            return self
        found = next((s for s in self.stages if s.name == stage), None)
        if found is None:
            raise KeyError(f"no stage {stage!r} in the stored content")
        return found

    def as_json(self) -> str:
        return self.model_dump_json(by_alias=True)

    @property
    def digest(self) -> str:
        return digest(self.model_dump(mode="json", by_alias=True))


def digest(value: Any) -> str:
    """A stable hash of a JSON value (keys sorted), short enough to read in a plan."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def load_content(text: str) -> MessageContent:
    """The one reader of stored content."""
    return MessageContent.model_validate_json(text)
