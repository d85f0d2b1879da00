"""Signed, purpose-bound tokens for every link in an email.

A token is ``<id in base 36>.<signature>``: the id of the ledger row (or the contact) it speaks for, and 96 bits of
HMAC-SHA256 over the purpose, the id and any extra value the link carries (the destination of a click). Tokens
never expire: CAN-SPAM wants unsubscribe links to work long after sending, and a row id plus a purpose is all
they grant. They stay short so `List-Unsubscribe` fits on one header line (a folded or RFC 2047-encoded URL is
ignored by receivers).

A token made for one purpose never verifies for another, and a token from another workspace's key never verifies.

Keys can be rotated: a new key signs every new link, and the previous keys (`<variable>_PREVIOUS`, comma-separated)
still verify the links of mail already sent (MAIL_PURPOSES), so nobody's unsubscribe link stops working. Forms and
dashboard sessions are not in sent mail and verify with the current key only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from typing import Literal

Purpose = Literal["unsubscribe", "preferences", "open", "click", "view", "confirm", "csrf", "session"]
MAIL_PURPOSES: frozenset[Purpose] = frozenset({"unsubscribe", "preferences", "open", "click", "view", "confirm"})
"""What links in sent mail are for: a previous key still verifies these (they live in inboxes for years)."""
PREVIOUS_SUFFIX = "_PREVIOUS"
_SIGNATURE_BYTES = 12
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


class MissingSigningKey(RuntimeError):
    """The environment variable Settings `signing_key_env` names is not set where a key is required."""


def new_key() -> str:
    """A fresh random signing key, for a workspace that has none in its environment yet."""
    return secrets.token_urlsafe(32)


def base36(number: int) -> str:
    """A row id as few characters as links allow."""
    if number < 0:
        raise ValueError("token ids are not negative")
    out = ""
    while True:
        number, digit = divmod(number, 36)
        out = _DIGITS[digit] + out
        if not number:
            return out


def fingerprint(key: bytes) -> str:
    """A short name for a key that reveals nothing of it, for logs and the state database (which keys signed mail)."""
    return hashlib.sha256(b"reconciler signing key\x00" + key).hexdigest()[:12]


def previous_keys(variable: str) -> tuple[bytes, ...]:
    """The keys listed in `<variable>_PREVIOUS`, comma-separated (spaces around them ignored)."""
    listed = os.environ.get(variable + PREVIOUS_SUFFIX, "")
    return tuple(dict.fromkeys(part.strip().encode() for part in listed.split(",") if part.strip()))


@dataclass(frozen=True)
class Signer:
    """Signs with one workspace key; verifies with it and, for links in sent mail, with the previous ones."""

    key: bytes
    previous: tuple[bytes, ...] = ()
    """Keys that signed mail already sent: they verify MAIL_PURPOSES, never sign."""

    @classmethod
    def from_env(cls, variable: str, *, fallback: str | None = None, retired: tuple[str, ...] = ()) -> Signer:
        """The key from `variable`, else `fallback` (the daemon keeps a generated one in its state database); the
        previous keys from `<variable>_PREVIOUS` and `retired` (a generated key the variable replaced)."""
        value = os.environ.get(variable) or fallback
        if not value:
            raise MissingSigningKey(
                f"set the environment variable {variable} to a long random string: it signs "
                "every unsubscribe, preference and tracking link"
            )
        key = value.encode()
        previous = (*previous_keys(variable), *(old.encode() for old in retired))
        return cls(key, tuple(k for k in dict.fromkeys(previous) if k != key))

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)

    @property
    def fingerprints(self) -> frozenset[str]:
        """The fingerprints of every key a link in sent mail verifies with."""
        return frozenset(fingerprint(key) for key in (self.key, *self.previous))

    def _signature(self, purpose: Purpose, ident: str, extra: str, key: bytes | None = None) -> str:
        message = f"{purpose}\x00{ident}\x00{extra}".encode()
        mac = hmac.new(self.key if key is None else key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:_SIGNATURE_BYTES]).decode()

    def sign(self, purpose: Purpose, ident: int, extra: str = "") -> str:
        text = base36(ident)
        return f"{text}.{self._signature(purpose, text, extra)}"

    def verify(self, purpose: Purpose, token: str, extra: str = "") -> int | None:
        """The id a valid token speaks for, or None for anything else (never an exception, never a hint why)."""
        text, dot, signature = token.partition(".")
        if not dot or not text or len(text) > 13 or any(ch not in _DIGITS for ch in text):
            return None
        keys = (self.key, *self.previous) if purpose in MAIL_PURPOSES else (self.key,)
        given = signature.encode()
        if not any(hmac.compare_digest(given, self._signature(purpose, text, extra, key).encode()) for key in keys):
            return None
        return int(text, 36)
