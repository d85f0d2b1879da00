"""Opt-outs by email: the message a mail client sends to the mailto of List-Unsubscribe.

Apple Mail's unsubscribe banner, Outlook and others unsubscribe by sending a message to that mailto; mailbox
providers treat such a request like the one-click POST, and so does the law (CAN-SPAM counts it). Nobody reads the
body and the From proves nothing (forwarding, aliases): as for the one-click URL, the signed token is the only
authority. It comes in the address, `unsubscribe+<token>@…` of Settings `unsubscribe_address` (the envelope
recipient, Delivered-To, To), or in the subject (`unsubscribe <token>`, the mailto to a sender's reply-to). The
message arrives from a local MTA (`reconciler inbound`) or an inbound webhook (`web.inbound`); both end here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from typing import Literal

from reconciler.mime import address_tokens, bare_tokens
from reconciler.state import subscribers
from reconciler.state.postgres import StateDatabase
from reconciler.tokens import Signer

HEADER_BYTES = 256 * 1024
"""What is read of a message: its headers, and more than any mail client's. The body says nothing we use."""
ADDRESS_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "To", "Cc")
"""Where an MTA or a mail client keeps the address the message was sent to, the envelope's first."""
MAX_TOKENS = 20
"""Tokens tried at most per message: one is enough, and a message listing thousands costs no more."""
CONSENT_SOURCE = "email"


@dataclass(frozen=True)
class InboundMail:
    """What an opt-out by email is read from: the addresses it was sent to (the envelope's first) and its
    subject."""

    recipients: tuple[str, ...]
    subject: str

    @classmethod
    def from_bytes(cls, data: bytes, *, envelope: Iterable[str] = ()) -> InboundMail:
        """A message as an MTA delivers it (RFC 5322 bytes; encoded words in headers are decoded)."""
        message = BytesParser(policy=policy.default).parsebytes(data[:HEADER_BYTES], headersonly=True)
        recipients = list(envelope)
        for name in ADDRESS_HEADERS:
            recipients += _values(message.get_all(name) or [])
        subject = _values(message.get_all("Subject") or [])
        return cls(tuple(recipients), " ".join(subject))

    def tokens(self) -> list[str]:
        """The tokens it carries, the recipients' before the subject's, each once."""
        found: list[str] = []
        for text in self.recipients:
            found += address_tokens(text)
        found += bare_tokens(self.subject)
        return list(dict.fromkeys(found))[:MAX_TOKENS]

    def verified_row(self, signer: Signer) -> int | None:
        """The ledger row of the first token that verifies as an unsubscribe token, or None."""
        for token in self.tokens():
            row_id = signer.verify("unsubscribe", token)
            if row_id is not None:
                return row_id
        return None


def _values(headers: Sequence[object]) -> list[str]:
    """Header values as text; one that cannot be decoded is left out (it holds no address we wrote)."""
    values = []
    for header in headers:
        try:
            values.append(str(header))
        except Exception:  # the stdlib's header parser fails on some malformed values
            continue
    return values


@dataclass(frozen=True)
class Outcome:
    """What an opt-out by email did."""

    done: Literal["unsubscribed", "unchanged"]
    """unchanged: already unsubscribed, or the message is gone (its contact erased)."""
    email: str | None = None
    lists: tuple[str, ...] = ()


def unsubscribe_row(db: StateDatabase, row_id: int, *, at: str, via: str) -> Outcome:
    """Unsubscribe the contact of a verified token's message from the lists it was sent for, as the one-click
    POST does; the consent record says it came by email and `via` what (`Postmark`, `the local MTA`)."""
    target = subscribers.message_target(db, row_id)
    if target is None:
        return Outcome("unchanged")
    text = f"List-Unsubscribe mailto, received through {via}"
    changed = subscribers.unsubscribe(db, target, at=at, source=CONSENT_SOURCE, ip=None, text=text)
    return Outcome("unsubscribed" if changed else "unchanged", target.email, tuple(changed or target.lists))
