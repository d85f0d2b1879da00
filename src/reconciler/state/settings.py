"""The Settings of the last good revision, kept in the state database for everything that runs from the state.

Starting campaigns, sending and the web service work from the state alone, so that a revision with errors in the
files never stops or changes them: `apply` writes the Settings document here (`save`, the one writer) each time it
applies a revision, and they read it back (`load`, the one reader). Defaults live in the spec model only: the
document is stored as the user wrote it plus its defaults, and validated again when read.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from reconciler import DEFAULT_PORT
from reconciler.spec.documents import (
    Defaults,
    Organization,
    OutboxTransport,
    Sender,
    Settings,
    SmtpTransport,
)
from reconciler.state.db import StateError, get_meta, set_meta
from reconciler.state.postgres import StateDatabase

KEY = "settings"

INITIAL = Settings(
    kind="Settings",
    name="default",
    organization=Organization(name="reconciler", postal_address="(no Settings applied yet)"),
    public_url=f"http://localhost:{DEFAULT_PORT}",
    senders={"default": Sender(from_="reconciler <noreply@reconciler.invalid>")},
    defaults=Defaults(sender="default"),
)
"""What holds before the first revision is applied: no campaign or list exists yet, so nothing is sent with it;
the web service can answer and sign with the default key variable."""


@dataclass(frozen=True)
class RuntimeSettings:
    """The Settings document as last applied, with what start, dispatch and the web service ask of it."""

    settings: Settings
    applied: bool = True
    """False while no revision has been applied (the settings are INITIAL)."""

    @property
    def public_url(self) -> str:
        """The base of every link, without a trailing slash."""
        return self.settings.public_url.rstrip("/")

    @property
    def default_sender(self) -> Sender:
        return self.settings.senders[self.settings.defaults.sender]

    def transport(self, name: str) -> SmtpTransport | OutboxTransport | None:
        """The transport `name`, or None when the Settings no longer have it (removed after a campaign that uses it
        was scheduled): its messages wait rather than go anywhere else."""
        return self.settings.transports.get(name)


def save(db: StateDatabase, settings: Settings) -> None:
    """Inside the caller's write: keep `settings` (written only when they changed)."""
    text = settings.model_dump_json(by_alias=True)
    if get_meta(db, KEY) != text:
        set_meta(db, KEY, text)


def load(db: StateDatabase) -> RuntimeSettings:
    """The settings of the last good revision (INITIAL before the first)."""
    text = get_meta(db, KEY)
    if not text:
        return RuntimeSettings(INITIAL, applied=False)
    try:
        return RuntimeSettings(Settings.model_validate_json(text))
    except ValidationError as exc:
        raise StateError(
            f"the Settings kept in the state database no longer validate ({exc.error_count()} error(s)); "
            "apply the workspace again (`reconciler apply`) to replace them"
        ) from exc
