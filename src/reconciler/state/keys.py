"""The keys of a state database: the one that signs every link, and the id that makes Message-IDs unique.

Both are read by the sender and the web service alike, so they live here rather than with either.
"""

from __future__ import annotations

import logging
import os
import secrets

from sqlite_utils import Database

from reconciler.state.db import get_meta, set_meta, write
from reconciler.tokens import Signer, new_key

log = logging.getLogger(__name__)


def signer_for(db: Database, variable: str) -> Signer:
    """The signing key from the environment variable Settings `signing_key_env` names (`variable`); without one, a
    key generated once and kept in the state database (with a warning), so `make run` works and links stay valid
    across restarts."""
    if os.environ.get(variable):
        return Signer.from_env(variable)
    fallback = get_meta(db, "signing_key")  # read first: the write lock only when the key must be made
    if fallback:
        return Signer.from_env(variable, fallback=fallback)
    with write(db):
        fallback = get_meta(db, "signing_key")
        if not fallback:
            fallback = new_key()
            set_meta(db, "signing_key", fallback)
            log.warning(
                "%s is not set: links are signed with a key generated into the state database; set %s "
                "to a long random secret on a server",
                variable,
                variable,
            )
    return Signer.from_env(variable, fallback=fallback)


def instance_id(db: Database) -> str:
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
