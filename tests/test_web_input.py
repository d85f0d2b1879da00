"""Hostile or odd input to the web service: every bad body is a 4xx that writes nothing, never a 500, never a
traceback in the log, and nothing it stores can stop planning or sending later."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import reconciler
from reconciler import strictjson
from sending import query, workspace
from web_server import WebServer

TOKEN = "test-api-token"
BEARER = {"authorization": f"Bearer {TOKEN}"}
FIELDS = """\
kind: Field
name: city
type: string
---
kind: Field
name: orders_count
type: integer
---
kind: Field
name: total_spend
type: number
---
kind: Field
name: interests
type: list
"""


@pytest.fixture(autouse=True)
def api_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_API_TOKEN", TOKEN)


@pytest.fixture
def applied(tmp_path: Path) -> Path:
    """A workspace applied to its state database (lists `news`, double opt-in `offers`, `receipts`; typed fields)."""
    root = workspace(tmp_path, 1)
    (root / "spec/fields.yaml").write_text(FIELDS)
    result = reconciler("apply", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


class ErrorLog(logging.Handler):
    """Records of level ERROR and above, and any with a traceback, from uvicorn and from our own loggers."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def text(self) -> str:
        formatter = logging.Formatter()
        return "\n".join(formatter.format(record) for record in self.records)


@contextmanager
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error", "reconciler")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def post(client: httpx.Client, url: str, body: str | bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post(url, content=body, headers={"content-type": "application/json", **(headers or {})})


def events_stored(root: Path) -> int:
    return int(str(query(root, "SELECT count(*) FROM events")[0][0]))


def test_non_finite_numbers_are_refused_wherever_json_comes_in(applied: Path) -> None:
    with error_log() as log, WebServer(applied) as base, httpx.Client() as client:
        for number in ("NaN", "Infinity", "-Infinity", "1e999"):
            event = f'{{"email": "a@example.org", "type": "purchase", "properties": {{"revenue": {number}}}}}'
            answer = post(client, f"{base}/api/v1/events", event, BEARER)
            assert answer.status_code == 422, (number, answer.text)
            assert "number" in answer.json()["error"]
            contact = f'{{"email": "a@example.org", "total_spend": {number}}}'
            assert post(client, f"{base}/api/v1/contacts", contact, BEARER).status_code == 422
            generic = f'{{"id": "x", "type": "bounce", "email": "a@example.org", "detail": {number}}}'
            assert post(client, f"{base}/api/v1/webhooks/generic", generic, BEARER).status_code == 422
    assert not log.records, log.text()
    assert events_stored(applied) == 0
    assert query(applied, "SELECT count(*) FROM contacts") == [(0,)]


def test_json_nested_too_deep_is_a_400_on_every_route_even_before_authentication(applied: Path) -> None:
    deep = "[" * 1000 + "]" * 1000
    deeper = '{"a":' * 100_000 + "1" + "}" * 100_000
    with error_log() as log, WebServer(applied) as base, httpx.Client() as client:
        for body in (deep, deeper):
            for route in ("contacts", "events", "webhooks/generic"):
                answer = post(client, f"{base}/api/v1/{route}", body, BEARER)
                assert answer.status_code == 400, (route, answer.text)
                assert "nested deeper than" in answer.json()["error"]
            assert post(client, f"{base}/api/v1/webhooks/ses", body).status_code == 400
            # without credentials a webhook that authenticates by header says so before reading the body
            assert post(client, f"{base}/api/v1/webhooks/generic", body).status_code == 401
            assert post(client, f"{base}/api/v1/webhooks/postmark", body).status_code == 401
            assert post(client, f"{base}/api/v1/events", body).status_code == 401
    assert not log.records, log.text()


BAD_CONTACTS = [
    ({"email": "a@example.org", "lists": [["news"]]}, "lists"),
    ({"email": "a@example.org", "lists": "news"}, "lists"),
    ({"email": "a@example.org", "first_name": ["x"]}, "first_name"),
    ({"email": "a@example.org", "first_name": "Ada\x00"}, "first_name"),
    ({"email": "a@example.org", "last_name": "Line\nbreak"}, "last_name"),
    ({"email": "a@example.org", "tags": {"a": 1}}, "tags"),
    ({"email": "a@example.org", "tags": [["a"]]}, "tags"),
    ({"email": "a@example.org", "city": {"name": "x"}}, "city"),
    ({"email": "a@example.org", "city": "Ber\x00lin"}, "city"),
    ({"email": "a@example.org", "orders_count": 1e300}, "orders_count"),
    ({"email": "a@example.org", "orders_count": 10**30}, "orders_count"),
    ({"email": "a@example.org", "consent": {"text": "yes"}}, "consent"),
    ({"email": ["a@example.org"]}, "email"),
    ({"email": "zoë@example.org"}, "SMTPUTF8"),
]


@pytest.mark.parametrize(("contact", "named"), BAD_CONTACTS, ids=[str(c) for c, _ in BAD_CONTACTS])
def test_contact_values_of_the_wrong_type_are_422_and_nothing_is_stored(
    applied: Path, contact: dict[str, object], named: str
) -> None:
    with error_log() as log, WebServer(applied) as base, httpx.Client() as client:
        answer = client.post(f"{base}/api/v1/contacts", json=contact, headers=BEARER)
    assert answer.status_code == 422, answer.text
    assert named in answer.text
    assert not log.records, log.text()
    assert query(applied, "SELECT count(*) FROM contacts") == [(0,)]


BAD_EVENTS = [
    ({"email": "a@example.org", "type": "purchase", "occurred_at": 1700000000}, "occurred_at"),
    ({"email": "a@example.org", "type": "purchase", "occurred_at": "yesterday"}, "occurred_at"),
    ({"email": "a@example.org", "type": "purchase", "id": {"order": 1}}, "id"),
    ({"email": "a@example.org", "type": "purchase", "id": True}, "id"),
    ({"email": "a@example.org", "type": ["purchase"]}, "type"),
    ({"email": "a@example.org", "type": "purchase", "properties": [1]}, "properties"),
    # PostgreSQL's JSON holds no NUL character: refused on both engines alike, never a 500
    ({"email": "a@example.org", "type": "purchase", "properties": {"\x00": None}}, "properties"),
    ({"email": "a@example.org", "type": "purchase", "properties": {"sku": ["a", {"b": "c\x00"}]}}, "properties"),
    ({"email": 5, "type": "purchase"}, "email"),
    ({"email": "zoë@example.org", "type": "purchase"}, "SMTPUTF8"),
]


@pytest.mark.parametrize(("event", "named"), BAD_EVENTS, ids=[str(e) for e, _ in BAD_EVENTS])
def test_event_values_of_the_wrong_type_are_422_and_nothing_is_stored(
    applied: Path, event: dict[str, object], named: str
) -> None:
    with error_log() as log, WebServer(applied) as base, httpx.Client() as client:
        answer = client.post(
            f"{base}/api/v1/events", json=[{"email": "b@example.org", "type": "ok"}, event], headers=BEARER
        )
    assert answer.status_code == 422, answer.text
    assert named in answer.text and answer.json()["problems"][0]["index"] == 1
    assert not log.records, log.text()
    assert events_stored(applied) == 0


def test_good_values_are_stored_as_their_type(applied: Path) -> None:
    contact = {
        "email": "ada@bücher.example",
        "first_name": "Ada",
        "tags": ["vip", "beans"],
        "orders_count": 3.0,
        "total_spend": 120.5,
        "interests": ["espresso", 2],
        "consent": "at the till",
    }
    with WebServer(applied) as base, httpx.Client() as client:
        answer = client.post(f"{base}/api/v1/contacts", json=contact, headers=BEARER)
        assert answer.status_code == 200, answer.text
        event = {"email": "ada@bücher.example", "type": "purchase", "id": 1001, "properties": {"revenue": 1.5}}
        assert client.post(f"{base}/api/v1/events", json=event, headers=BEARER).json() == {"added": 1, "repeated": 0}
    ((fields, tags),) = query(applied, "SELECT fields, tags FROM contacts")
    assert json.loads(str(fields)) == {"orders_count": 3, "total_spend": 120.5, "interests": ["espresso", "2"]}
    assert json.loads(str(tags)) == ["beans", "vip"]
    assert query(applied, "SELECT external_id FROM events") == [("1001",)]


CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-{}.pem"


def _sns_notification(cert: str) -> dict[str, object]:
    return {
        "Type": "Notification",
        "MessageId": "m-1",
        "Timestamp": "2026-11-24T10:00:00.000Z",
        "TopicArn": "arn:aws:sns:eu-west-1:123:ses",
        "Message": "{}",
        "SignatureVersion": "1",
        "Signature": "c2lnbmF0dXJl",
        "SigningCertURL": cert,
    }


def test_a_certificate_that_cannot_be_fetched_is_a_403_and_is_not_fetched_again(applied: Path) -> None:
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        raise httpx.ConnectError("no route to host")

    with error_log() as log, WebServer(applied, fetch=fetch) as base, httpx.Client() as client:
        ses = f"{base}/api/v1/webhooks/ses"
        for _ in range(3):
            answer = client.post(ses, json=_sns_notification(CERT_URL.format("a")))
            assert answer.status_code == 403 and "certificate" in answer.json()["error"]
        assert fetched == [CERT_URL.format("a")]  # a failure is remembered too
        answers = [client.post(ses, json=_sns_notification(CERT_URL.format(n))).status_code for n in range(40)]
        assert set(answers) == {403}
    assert len(fetched) <= 11  # new certificate URLs are fetched at a bounded rate
    assert not log.records, log.text()


def test_an_invalid_address_in_a_webhook_is_counted_as_invalid_not_as_repeated(applied: Path) -> None:
    events = [
        {"id": "g-1", "type": "bounce", "email": "not an address"},
        {"id": "g-2", "type": "bounce", "email": "b@example.org"},
    ]
    with WebServer(applied) as base, httpx.Client() as client:
        answer = client.post(f"{base}/api/v1/webhooks/generic", json=events, headers=BEARER)
    assert answer.status_code == 200
    assert answer.json() == {"events": 2, "recorded": 1, "repeated": 0, "invalid": 1}


def _confirm_url(root: Path, base: str, email: str) -> str:
    from reconciler.tokens import Signer

    (key,) = query(root, "SELECT value FROM meta WHERE key = 'signing_key'")[0]
    (row_id,) = query(
        root, "SELECT l.id FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE c.email = ?", email
    )[0]
    return f"{base}/confirm/{Signer(str(key).encode()).sign('confirm', int(str(row_id)))}"


def test_the_confirm_button_accepts_posts_from_our_own_pages_only(applied: Path) -> None:
    def status() -> list[tuple[object, ...]]:
        return query(applied, "SELECT status FROM subscriptions")

    with WebServer(applied) as base, httpx.Client() as client:
        client.post(f"{base}/subscribe", data={"email": "new@example.org", "list": "offers"})
        url = _confirm_url(applied, base, "new@example.org")
        assert status() == [("pending",)]
        hostile = client.post(url, headers={"origin": "https://evil.example"})
        assert hostile.status_code == 403 and status() == [("pending",)]
        assert client.post(url, headers={"origin": base}).status_code == 200
    assert status() == [("subscribed",)]


def test_the_api_subscribes_to_a_double_opt_in_list_only_after_confirmation_unless_preconfirmed(
    applied: Path,
) -> None:
    with WebServer(applied) as base, httpx.Client() as client:
        url = f"{base}/api/v1/contacts"
        asked = {"email": "ask@example.org", "lists": ["news", "offers"], "consent": "at the till"}
        answer = client.post(url, json=asked, headers=BEARER)
        assert answer.json() == {"created": 1, "updated": 0, "subscribed": 1, "pending": 1}
        told = {"email": "told@example.org", "lists": ["offers"], "consent": "paper form", "preconfirmed": True}
        answer = client.post(url, json=told, headers=BEARER)
        assert answer.json() == {"created": 1, "updated": 0, "subscribed": 1, "pending": 0}
        assert client.post(url, json=dict(told, preconfirmed="yes"), headers=BEARER).status_code == 422
    rows = query(
        applied,
        "SELECT c.email, s.list, s.status FROM subscriptions s JOIN contacts c ON c.id = s.contact_id ORDER BY 1, 2",
    )
    assert rows == [
        ("ask@example.org", "news", "subscribed"),
        ("ask@example.org", "offers", "pending"),
        ("told@example.org", "offers", "subscribed"),
    ]
    confirmations = query(applied, "SELECT c.email, l.stage FROM ledger l JOIN contacts c ON c.id = l.contact_id")
    assert confirmations == [("ask@example.org", "offers:1")]
    consent = query(
        applied,
        "SELECT c.email, k.list, k.action, k.source, k.text FROM consent k JOIN contacts c ON c.id = k.contact_id",
    )
    assert sorted(consent) == [
        ("ask@example.org", "news", "subscribe", "api", "at the till"),
        ("ask@example.org", "offers", "subscribe", "api", "at the till"),
        ("told@example.org", "offers", "preconfirmed", "api", "paper form"),
    ]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("events", '[{"email": "a@example.org", "type": "purchase", "properties": {"sku": "A\\ud800"}}]'),
        ("events", '[{"email": "a@example.org", "type": "purchase", "properties": {"\\udfff": 1}}]'),
        ("contacts", '{"email": "a@example.org", "first_name": "Ada\\udbff"}'),
    ],
)
def test_half_of_a_utf16_pair_is_refused_by_name_and_nothing_is_stored(applied: Path, path: str, body: str) -> None:
    """JSON's escapes can write half of a UTF-16 pair, which is no character: no database stores it (it was a 500)."""
    with error_log() as log, WebServer(applied) as base, httpx.Client() as client:
        headers = {**BEARER, "content-type": "application/json"}
        answer = client.post(f"{base}/api/v1/{path}", content=body.encode(), headers=headers)
    assert answer.status_code in (400, 422), answer.text
    assert "half of a UTF-16 pair" in answer.text
    assert not log.records, log.text()
    assert events_stored(applied) == 0 and query(applied, "SELECT count(*) FROM contacts") == [(0,)]


def test_half_of_a_utf16_pair_is_refused_in_any_encoding_json_reads() -> None:
    """`json` reads UTF-16 and UTF-32 bodies too, where the escape's characters have NUL bytes between them."""
    body = '{"first_name": "Ada\\udbff"}'
    for encoding in ("utf-8", "utf-16-le", "utf-16", "utf-32"):
        with pytest.raises(strictjson.JsonInputError, match="half of a UTF-16 pair"):
            strictjson.loads(body.encode(encoding))
    assert strictjson.loads('{"a": "\\ud83d\\ude00"}'.encode("utf-16")) == {"a": "😀"}
