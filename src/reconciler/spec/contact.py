"""The contact as templates, segments, imports and the ledger see it: one definition of the built-in fields, and
one contact's values.

Built-in fields are columns of the `contacts` table with the same names; custom fields (declared as `Field`
documents) live in one JSON object beside them. Every layer that needs to know which is which asks this module.
The built-in fields a document can give are declared once, in `ContactValues`; `TEXT_FIELDS` and `BUILTIN_FIELDS`
are read from it (`created_at` is the state's own, never given).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from pydantic import StrictBool, StrictFloat, StrictInt, StrictStr

from reconciler.spec.types import Identifier, Model

FieldValue = StrictBool | StrictInt | StrictFloat | StrictStr | None
"""A custom field's value as a document gives it."""


class ContactValues(Model):
    """A contact as a document gives it (a WorkflowTest's `contact`): the built-in fields, and the custom ones."""

    email: str
    """Their address."""
    first_name: str | None = None
    """First name."""
    last_name: str | None = None
    """Last name."""
    timezone: str | None = None
    """Their time zone (quiet hours and local times use it)."""
    locale: str | None = None
    """Their locale."""
    country: str | None = None
    """Their country."""
    fields: dict[Identifier, FieldValue] = {}
    """Custom fields, by Field name."""
    tags: list[str] = []
    """Tags."""


TEXT_FIELDS: tuple[str, ...] = tuple(
    name for name in ContactValues.model_fields if name not in ("email", "fields", "tags")
)
"""The built-in text fields beside the address (first_name ... country): an import may set or keep each one."""

BUILTIN_FIELDS: dict[str, str] = {
    "email": "string",
    **dict.fromkeys(TEXT_FIELDS, "string"),
    "tags": "list",
    "created_at": "datetime",
}
"""Fields every contact has, with their types; each is a column of the same name."""

FREQUENCIES: dict[str, timedelta] = {"weekly": timedelta(days=7), "monthly": timedelta(days=30)}
"""What a subscriber may choose on the preference page: at most one marketing message per period."""


@dataclass(frozen=True)
class Contact:
    """One contact as stored: the built-in fields, the custom fields (JSON values), and their frequency choice."""

    id: int
    email: str
    first_name: str | None = None
    last_name: str | None = None
    timezone: str | None = None
    locale: str | None = None
    country: str | None = None
    tags: tuple[str, ...] = ()
    created_at: datetime | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    """Custom fields by name, as stored (dates as ISO text)."""
    frequency: str | None = None
    """None: every message; otherwise one of FREQUENCIES."""

    def values(self, field_types: Mapping[str, str]) -> dict[str, Any]:
        """Every field the contact has a value for, typed as the workspace declares it (`field_types`: custom field
        -> type): what a template reads as `contact.<name>`. A stored value of an older type stays as it is."""
        found: dict[str, Any] = {"email": self.email, "tags": list(self.tags)}
        for name in TEXT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                found[name] = value
        if self.created_at is not None:
            found["created_at"] = self.created_at
        for name, value in self.fields.items():
            kind = field_types.get(name)
            if isinstance(value, str) and kind in ("date", "datetime"):
                with contextlib.suppress(ValueError):
                    value = date.fromisoformat(value) if kind == "date" else datetime.fromisoformat(value)
            found[name] = value
        return found

    @property
    def display_name(self) -> str | None:
        """First and last name for the To header, when the contact has either."""
        return " ".join(filter(None, (self.first_name, self.last_name))) or None
