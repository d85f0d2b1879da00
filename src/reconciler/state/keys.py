"""The keys of a state database: the one that signs every link, and the id that makes Message-IDs unique.

Both are read by the sender and the web service alike, so they live here rather than with either. The state also
remembers the fingerprint of every key that signed mail it sent (never the key itself, unless it generated it), so
that a start with another key can say that links already in inboxes would stop working.
"""

from __future__ import annotations

import json
import logging
import os
import secrets

from reconciler.state import settings
from reconciler.state.db import get_meta, set_meta, write
from reconciler.state.postgres import StateDatabase
from reconciler.tokens import PREVIOUS_SUFFIX, Signer, new_key

log = logging.getLogger(__name__)
SIGNED_WITH = "signed_with"
"""Meta key: the fingerprints of the keys that signed mail sent from this state, oldest first (JSON list)."""


def signer_for(db: StateDatabase, variable: str) -> Signer:
    """The signing key from the environment variable Settings `signing_key_env` names (`variable`); without one, a
    key generated once and kept in the state database (with a warning), so `make run` works and links stay valid
    across restarts. Previous keys (`<variable>_PREVIOUS`) verify links in mail already sent; so does the generated
    key once `variable` is set, as the warning advises: setting it must not break the links sent before."""
    generated = get_meta(db, "signing_key")  # read first: the write lock only when the key must be made
    if os.environ.get(variable):
        return Signer.from_env(variable, retired=(generated,) if generated else ())
    if generated:
        return Signer.from_env(variable, fallback=generated)
    with write(db):
        generated = get_meta(db, "signing_key")
        if not generated:
            generated = new_key()
            set_meta(db, "signing_key", generated)
            log.warning(
                "%s is not set: links are signed with a key generated into the state database; set %s "
                "to a long random secret on a server",
                variable,
                variable,
            )
    return Signer.from_env(variable, fallback=generated)


def signed_with(db: StateDatabase) -> list[str]:
    """The fingerprints of the keys that signed mail sent from this state, oldest first."""
    text = get_meta(db, SIGNED_WITH)
    return [str(item) for item in json.loads(text)] if text else []


def note_signing(db: StateDatabase, signer: Signer) -> None:
    """Remember that `signer`'s key signs mail about to be sent (written once per key, not per message)."""
    if signer.fingerprint in signed_with(db):
        return
    with write(db):
        known = signed_with(db)
        if signer.fingerprint not in known:
            set_meta(db, SIGNED_WITH, json.dumps([*known, signer.fingerprint]))


def key_changes(db: StateDatabase) -> tuple[list[str], list[str]]:
    """At start: (warnings, notes) about the keys that signed mail already sent. A warning for each key that no
    longer verifies (neither the signing key nor a previous one): the links of that mail answer 404; a note when
    new links are signed with a key that has not signed mail yet while the earlier keys still verify."""
    sent = signed_with(db)
    if not sent:
        return [], []
    variable = settings.load(db).settings.signing_key_env
    signer = signer_for(db, variable)
    previous = variable + PREVIOUS_SUFFIX
    gone = [f for f in sent if f not in signer.fingerprints]
    warnings = [
        f"the signing key has changed since messages already sent were signed with key {f}, which is neither "
        f"{variable} (key {signer.fingerprint}) nor in {previous}: their unsubscribe, preference, tracking and "
        f"view-online links answer 404; list the old key in {previous} (comma-separated) to keep them working"
        for f in gone
    ]
    notes: list[str] = []
    if signer.fingerprint not in sent and not gone:
        notes.append(
            f"new links are signed with key {signer.fingerprint} ({variable}); links in mail already sent still "
            f"verify with the previous key(s) ({previous}, or the key generated before {variable} was set)"
        )
    return warnings, notes


def instance_id(db: StateDatabase) -> str:
    """A random id of this state database, so Message-IDs from two workspaces never collide."""
    value = get_meta(db, "instance_id")
    if value:
        return value
    with write(db):
        value = get_meta(db, "instance_id")
        if not value:
            value = secrets.token_hex(4)
            set_meta(db, "instance_id", value)
    return value
