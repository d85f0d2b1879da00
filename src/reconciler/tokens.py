"""Signed, purpose-bound tokens for every link in an email.

A token is ``<id in base 36>.<signature>``: the id of the ledger row (or the contact) it speaks for, and 96 bits of
HMAC-SHA256 over the purpose, the id and any extra value the link carries (the destination of a click). Tokens
never expire: CAN-SPAM wants unsubscribe links to work long after sending, and a row id plus a purpose is all
they grant. They stay short so `List-Unsubscribe` fits on one header line (a folded or RFC 2047-encoded URL is
ignored by receivers).

A token made for one purpose never verifies for another, and a token from another workspace's key never verifies.
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


@dataclass(frozen=True)
class Signer:
    """Signs and verifies tokens with one workspace key."""

    key: bytes

    @classmethod
    def from_env(cls, variable: str, *, fallback: str | None = None) -> Signer:
        """The key from `variable`, else `fallback` (the daemon keeps a generated one in its state database)."""
        value = os.environ.get(variable) or fallback
        if not value:
            raise MissingSigningKey(
                f"set the environment variable {variable} to a long random string: it signs "
                "every unsubscribe, preference and tracking link"
            )
        return cls(value.encode())

    def _signature(self, purpose: Purpose, ident: str, extra: str) -> str:
        mac = hmac.new(self.key, f"{purpose}\x00{ident}\x00{extra}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:_SIGNATURE_BYTES]).decode()

    def sign(self, purpose: Purpose, ident: int, extra: str = "") -> str:
        text = base36(ident)
        return f"{text}.{self._signature(purpose, text, extra)}"

    def verify(self, purpose: Purpose, token: str, extra: str = "") -> int | None:
        """The id a valid token speaks for, or None for anything else (never an exception, never a hint why)."""
        text, dot, signature = token.partition(".")
        if not dot or not text or len(text) > 13 or any(ch not in _DIGITS for ch in text):
            return None
        if not hmac.compare_digest(signature.encode(), self._signature(purpose, text, extra).encode()):
            return None
        return int(text, 36)
