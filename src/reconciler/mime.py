"""The bytes of a message: built from a skeleton made once per message definition, signed last.

`EmailMessage` + `as_bytes()` costs ~2.5 ms for a 40 KB newsletter, more than everything else a message needs. The
MIME structure is the same for every recipient of a message definition (a campaign stage, a workflow step), so the
static headers are formatted once with the stdlib's policy and each message only fills in its own headers and two
quoted-printable bodies (`binascii`, in C). Tests parse the result with `email.policy.default` and find no defects.

What is easy to get wrong here: lines may be up to 998 characters (`policy.SMTP` would fold and RFC 2047-encode a long
`List-Unsubscribe`), `Date` and `Message-ID` are ours to add, a CR or LF in a contact's value must never reach a
header, and DKIM signs the final bytes, which are then sent unchanged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from functools import lru_cache

POLICY = SMTP.clone(max_line_length=998)
ONE_CLICK = "List-Unsubscribe=One-Click"
_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')
_ATEXT_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]*")
_WORD_BYTES = 45  # 60 base64 characters: every encoded word stays under RFC 2047's 75


class HeaderValueError(ValueError):
    """A value that cannot go into a header (a line break in a contact's name or a subject)."""


def _check(value: str, what: str) -> str:
    if "\r" in value or "\n" in value or "\x00" in value:
        raise HeaderValueError(f"{what} contains a line break: {value[:40]!r}")
    return value


def encoded_words(text: str) -> str:
    """RFC 2047 encoded words (UTF-8, base64) for non-ASCII text, split on character boundaries and folded."""
    words: list[str] = []
    chunk = b""
    for char in text:
        encoded = char.encode()
        if len(chunk) + len(encoded) > _WORD_BYTES:
            words.append(chunk.decode())
            chunk = b""
        chunk += encoded
    if chunk:
        words.append(chunk.decode())
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(word.encode()).decode()}?=" for word in words)


def header_text(value: str, what: str = "header") -> str:
    """An unstructured header value (Subject): as it is when ASCII, encoded words otherwise."""
    _check(value, what)
    if value.isascii() and len(value) < 900:
        return value
    return encoded_words(value)


def phrase(name: str) -> str:
    """A display name: bare when it is plain words, quoted when it has specials, encoded when not ASCII."""
    _check(name, "a display name")
    if not name.isascii():
        return encoded_words(name)
    if _ATEXT_PHRASE.fullmatch(name) and not name.startswith(" ") and not name.endswith(" "):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@lru_cache(maxsize=4096)
def ascii_address(address: str) -> str:
    """The address as it goes on the wire: an internationalised domain in its IDNA (punycode) form. A local part
    beyond ASCII would need SMTPUTF8, which reconciler does not send (imports and the API refuse such addresses)."""
    local, _, domain = address.rpartition("@")
    if not local.isascii():
        raise HeaderValueError(f"{address!r}: the part before @ needs SMTPUTF8, which reconciler does not send")
    if domain.isascii():
        return address
    import idna

    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError as exc:
        raise HeaderValueError(f"{address!r}: the domain has no IDNA form ({exc})") from None


def mailbox(name: str | None, address: str) -> str:
    """`name <address>`, or the bare address without a name (runs of white space in the name become one space);
    the address in its ASCII form (`ascii_address`)."""
    _check(address, "an address")
    address = ascii_address(address)
    if name:
        name = " ".join(_check(name, "a display name").split())
    if not address.isascii() or not re.fullmatch(r"[^\s<>()\\,;:\"]+@[^\s<>()\\,;:\"@]+", address):
        raise HeaderValueError(f"not an address we can put in a header: {address!r}")
    if name and not name.isascii():  # the stdlib's encoding, which mail readers decode back to the same name
        return _static_header("To", Address(display_name=name, addr_spec=address)).split(":", 1)[1].strip()
    return f"{phrase(name)} <{address}>" if name else address


def _static_header(name: str, value: str | Address) -> str:
    """A header as the stdlib formats it (parsed, encoded where needed), for values fixed per definition."""
    message = EmailMessage(policy=POLICY)
    message[name] = value
    return bytes(message).decode("ascii").split("\r\n\r\n", 1)[0] + "\r\n"


def qp(text: str) -> bytes:
    """A body as quoted-printable with CRLF line ends (soft breaks keep every line under 77 characters)."""
    if "\r" in text:  # str's own methods: a Markup chunk's would escape their arguments
        text = str.replace(str.replace(text, "\r\n", "\n"), "\r", "\n")
    encoded = binascii.b2a_qp(str.encode(text))
    return encoded.replace(b"\n", b"\r\n") if b"\n" in encoded else encoded


class QpEncoder:
    """Quoted-printable for a rendered template given as its chunks (Jinja's `generate`).

    Most of a newsletter is the template's constant text, yielded as the same string objects for every recipient;
    each chunk is encoded on its own and ended with a soft line break, so a constant chunk's encoding can be kept
    and reused (decoders drop soft breaks: the content is unchanged). Only the personal parts cost an encoding.
    """

    def __init__(self, *, cached: int = 2048) -> None:
        self.cache: dict[str, bytes] = {}
        self.room = cached

    def encode(self, chunks: Iterable[str]) -> bytes:
        out = []
        cache = self.cache
        for chunk in chunks:
            if not chunk:
                continue
            encoded = cache.get(chunk) if len(chunk) > 48 else None
            if encoded is None:
                encoded = qp(chunk)
                if not encoded.endswith(b"\r\n"):
                    encoded += b"=\r\n"
                if len(chunk) > 48 and self.room > 0:
                    cache[chunk] = encoded
                    self.room -= 1
            out.append(encoded)
        return b"".join(out)


def addr_spec(address: str) -> str:
    """`news@acme.example` of "Acme News <news@acme.example>"."""
    return parseaddr(address)[1]


def address_domain(address: str) -> str:
    return addr_spec(address).rpartition("@")[2].lower() or "localhost"


# --- the token in List-Unsubscribe's mailto ----------------------------------------------------------------------
# A link token is `<id in base 36>.<base64url signature>`; base64 needs both cases, and the part of an address
# before @ is not safe with case: an MTA or a mail client may lowercase it. In an address the signature is spelled
# in lowercase base32 instead (same bytes, 20 characters), which survives any casing; `address_tokens` turns it back
# into the token as signed, so it is verified as the one-click URL's is.

_ADDRESS_TOKEN = re.compile(r"\+([0-9a-z]{1,13})\.([a-z2-7]{20})@", re.IGNORECASE)
_BARE_TOKEN = re.compile(r"(?<![\w.-])([0-9a-z]{1,13}\.[A-Za-z0-9_-]{16})(?![\w-])")


def unsubscribe_mailto(mailbox: str, token: str) -> str:
    """`mailto:local+<token>@domain?subject=unsubscribe` for Settings `unsubscribe_address` (`mailbox`)."""
    ident, _, signature = token.partition(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    spelled = base64.b32encode(raw).decode().rstrip("=").lower()
    local, _, domain = mailbox.rpartition("@")
    return f"mailto:{local}+{ident}.{spelled}@{domain}?subject=unsubscribe"


def address_tokens(text: str) -> list[str]:
    """The tokens of every `…+<token>@…` address in `text` (however it was cased), as they were signed."""
    found = []
    for ident, spelled in _ADDRESS_TOKEN.findall(text):
        try:
            raw = base64.b32decode(spelled.upper() + "====")
        except binascii.Error:  # not what unsubscribe_mailto writes
            continue
        found.append(f"{ident.lower()}.{base64.urlsafe_b64encode(raw).decode()}")
    return found


def bare_tokens(text: str) -> list[str]:
    """Tokens written out as signed (`unsubscribe <token>`, the subject of the mailto to a reply-to)."""
    return _BARE_TOKEN.findall(text)


@dataclass(frozen=True)
class Skeleton:
    """The parts of a message that are the same for every recipient of one message definition."""

    from_: str
    reply_to: str | None
    list_id: tuple[str, str] | None
    """(title, id) of the list the mail is sent for."""
    feedback_id: str
    bulk: bool
    static: bytes = field(init=False)
    boundary: str = field(init=False)

    def __post_init__(self) -> None:
        lines = [_static_header("From", self.from_)]
        if self.reply_to:
            lines.append(_static_header("Reply-To", self.reply_to))
        if self.list_id:
            title, ident = self.list_id
            lines.append(f"List-Id: {phrase(title)} <{ident}>\r\n" if title else f"List-Id: <{ident}>\r\n")
        lines.append(f"Feedback-ID: {_check(self.feedback_id, 'Feedback-ID')}\r\n")
        if self.bulk:
            lines.append("Precedence: bulk\r\n")
        lines.append("MIME-Version: 1.0\r\n")
        digest = hashlib.sha256("".join(lines).encode()).hexdigest()[:24]
        # '=' never appears unescaped in quoted-printable, so "=_" can never occur inside an encoded body
        object.__setattr__(self, "boundary", f"=_rc{digest}")
        object.__setattr__(self, "static", "".join(lines).encode())

    def build(
        self,
        *,
        to: str,
        subject: str,
        message_id: str,
        date: datetime,
        html: bytes,
        text: bytes,
        unsubscribe: Sequence[str] = (),
    ) -> bytes:
        """The whole message for one recipient, from its quoted-printable bodies (`qp`, `QpEncoder`); `unsubscribe`
        is the https URL and the mailto of List-Unsubscribe."""
        head = [
            f"Date: {format_datetime(date)}\r\n",
            f"Message-ID: {_check(message_id, 'Message-ID')}\r\n",
            f"To: {to}\r\n",
            f"Subject: {header_text(subject, 'the subject')}\r\n",
        ]
        if unsubscribe:
            head.append("List-Unsubscribe: " + ", ".join(f"<{_check(u, 'List-Unsubscribe')}>" for u in unsubscribe))
            head.append(f"\r\nList-Unsubscribe-Post: {ONE_CLICK}\r\n")
        b = self.boundary
        return b"".join(
            (
                self.static,
                "".join(head).encode(),
                f'Content-Type: multipart/alternative; boundary="{b}"\r\n\r\n'
                f'--{b}\r\nContent-Type: text/plain; charset="utf-8"\r\n'
                "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode(),
                text,
                f'\r\n--{b}\r\nContent-Type: text/html; charset="utf-8"\r\n'
                "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode(),
                html,
                f"\r\n--{b}--\r\n".encode(),
            )
        )


DKIM_HEADERS = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"list-id",
    b"feedback-id",
    b"mime-version",
    b"content-type",
    # named twice: oversigned, so nobody can add a second one after signing (RFC 8058 §4 wants these signed)
    b"from",
    b"subject",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)


@dataclass(frozen=True)
class DkimKey:
    """A DKIM signing key; `sign` prepends the DKIM-Signature header to the finished bytes."""

    domain: str
    selector: str
    private_key: bytes

    def sign(self, message: bytes) -> bytes:
        import dkim  # imported on first use: most workspaces sign at their relay, not here

        signature = dkim.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=list(DKIM_HEADERS),
            linesep=b"\r\n",
        )
        return bytes(signature) + message
