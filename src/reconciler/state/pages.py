"""The workspace's own subscriber pages and confirmation email, as the last good revision applied them, and what
the pages need to know of a contact to speak their language.

The web service and the send loop work from the state alone (a broken revision in git changes nothing they do),
so `apply` keeps the workspace's `templates/pages/*.html` and its flattened `templates/pages/confirmation.mjml`
here (`save`, the one writer) and they read them back (`load`, the one reader).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError

from reconciler.state.content import MessagePart
from reconciler.state.db import StateError, get_meta, set_meta
from reconciler.state.postgres import StateDatabase

KEY = "pages"


class StoredPages(BaseModel):
    """The workspace's overrides of the built-in subscriber pages and confirmation email."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pages: dict[str, str] = {}
    """Page template sources by name (preferences.html, base.html ...): Jinja, rendered in the sandbox."""
    confirmation: MessagePart | None = None
    """The double opt-in email: its subject (Jinja; None for the built-in one) and flattened MJML."""


def save(db: StateDatabase, pages: StoredPages) -> None:
    """Inside the caller's write: keep `pages` (written only when they changed)."""
    text = pages.model_dump_json()
    if (get_meta(db, KEY) or StoredPages().model_dump_json()) != text:
        set_meta(db, KEY, text)


def load(db: StateDatabase) -> StoredPages:
    """The overrides of the last good revision (none before the first, or when the workspace has none)."""
    text = get_meta(db, KEY)
    if not text:
        return StoredPages()
    try:
        return StoredPages.model_validate_json(text)
    except ValidationError as exc:
        raise StateError(
            f"the subscriber pages kept in the state database no longer validate ({exc.error_count()} error(s)); "
            "apply the workspace again (`reconciler apply`) to replace them"
        ) from exc


@dataclass(frozen=True)
class Reader:
    """What a page needs to know of the contact it speaks to."""

    locale: str | None
    since: dict[str, str]
    """When each list subscription last changed (ISO), by list."""
    lists: tuple[str, ...]
    """The lists the contact is subscribed to or pending on, most recent first."""


def reader(db: StateDatabase, contact_id: int) -> Reader | None:
    row = db.conn.execute("SELECT locale FROM contacts WHERE id = ?", (contact_id,)).fetchone()
    if row is None:
        return None
    found = db.conn.execute(
        "SELECT list, status, updated_at FROM subscriptions WHERE contact_id = ? ORDER BY updated_at DESC, list",
        (contact_id,),
    ).fetchall()
    since = {name: at for name, _, at in found}
    return Reader(row[0], since, tuple(name for name, status, _ in found if status != "unsubscribed"))
