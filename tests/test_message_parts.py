"""The pieces a message is made of: headers, quoted-printable bodies, tokens, and reading SMTP replies."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.mime import HeaderValueError, QpEncoder, Skeleton, mailbox, qp
from reconciler.tokens import Signer
from reconciler.transports import classify, dot_stuff
from sending import body

pytestmark = pytest.mark.no_state  # the PostgreSQL pass of the suite leaves it out

SKELETON = Skeleton(
    from_="Sklep Łąka <news@example.com>",
    reply_to="help@example.com",
    list_id=("Nowości i oferty", "news.mail.example.com"),
    feedback_id="c:main:campaign:x",
    bulk=True,
)


def build(subject: str, name: str | None, html: str, text: str) -> email.message.EmailMessage:
    data = SKELETON.build(
        to=mailbox(name, "ola@example.net"),
        subject=subject,
        message_id="<1.a@example.com>",
        date=datetime(2026, 11, 24, tzinfo=UTC),
        html=QpEncoder().encode([html]),
        text=qp(text),
    )
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    assert not [d for part in message.walk() for d in part.defects]
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")
    return message


printable = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=200)


@given(subject=printable, name=printable, html=st.text(max_size=3000), text=st.text(max_size=1000))
def test_any_subject_name_and_body_round_trip_without_defects(subject: str, name: str, html: str, text: str) -> None:
    subject, name = " ".join(subject.split()), " ".join(name.split())  # as rendering leaves them
    message = build(subject, name or None, html, text)
    assert str(message["Subject"]) == subject
    if name:
        assert message["To"].addresses[0].display_name == name
    normal = html.replace("\r\n", "\n").replace("\r", "\n")
    assert body(message).replace("\r\n", "\n") == normal


def test_static_headers_are_encoded_once_and_correctly() -> None:
    message = build("Zażółć gęślą jaźń — 30% taniej", "Łucja Ęłk", "<p>x</p>", "x")
    assert message["From"].addresses[0].display_name == "Sklep Łąka"
    assert message["List-Id"] == "Nowości i oferty <news.mail.example.com>"
    assert message["Subject"] == "Zażółć gęślą jaźń — 30% taniej"


@pytest.mark.parametrize("value", ["Eve\r\nBcc: x@example.org", "Eve\nBcc", "a\rb", "nul\x00"])
def test_line_breaks_never_reach_a_header(value: str) -> None:
    with pytest.raises(HeaderValueError):
        mailbox(value, "ola@example.net")
    with pytest.raises(HeaderValueError):
        SKELETON.build(
            to="ola@example.net", subject=value, message_id="<1@x>", date=datetime.now(UTC), html=b"", text=b""
        )


def test_cached_constant_chunks_decode_to_the_same_html() -> None:
    encoder = QpEncoder()
    constant = "<table>" + "x" * 300 + "</table>\n<p>Żółw</p>\n"
    first = encoder.encode([constant, "Ola", constant])
    second = encoder.encode([constant, "Ala", constant])
    assert constant in encoder.cache
    import quopri

    def decoded(data: bytes) -> str:  # CRLF on the wire
        return quopri.decodestring(data).decode().replace("\r\n", "\n")

    assert decoded(first) == constant + "Ola" + constant
    assert decoded(second) == constant + "Ala" + constant


def test_dot_stuffing_doubles_leading_dots_only() -> None:
    assert dot_stuff(b".a\r\nb\r\n.c\r\n") == b"..a\r\nb\r\n..c\r\n.\r\n"
    assert dot_stuff(b"x") == b"x\r\n.\r\n"


def test_tokens_are_bound_to_purpose_key_and_content() -> None:
    signer = Signer(b"key one")
    token = signer.sign("unsubscribe", 12345)
    assert signer.verify("unsubscribe", token) == 12345
    assert signer.verify("preferences", token) is None
    assert Signer(b"key two").verify("unsubscribe", token) is None
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert signer.verify("unsubscribe", flipped) is None
    click = signer.sign("click", 7, "https://shop.example.com/a")
    assert signer.verify("click", click, "https://shop.example.com/a") == 7
    assert signer.verify("click", click, "https://evil.example.org/") is None
    for junk in ("", ".", "abc", "-1.xx", "zzzzzzzzzzzzzzzzzz.aaaa", token + "."):
        assert signer.verify("unsubscribe", junk) is None
    assert len(token) < 24


@pytest.mark.parametrize(
    ("code", "message", "status"),
    [
        (250, "2.0.0 ok", "sent"),
        (451, "4.3.0 try later", "deferred"),
        (421, "too busy", "deferred"),
        (450, "4.7.1 greylisted", "deferred"),
        (550, "5.1.1 no such user", "bounced"),
        (553, "5.1.3 bad address syntax", "bounced"),
        (550, "5.7.1 spam", "policy"),
        (554, "5.7.26 DMARC", "policy"),
        (552, "5.2.2 mailbox full", "failed"),
        (550, "mailbox unavailable", "failed"),
    ],
)
def test_smtp_replies_are_classified_by_their_enhanced_code(code: int, message: str, status: str) -> None:
    assert classify(code, message).status == status
