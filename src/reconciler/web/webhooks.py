"""Bounce and complaint webhooks: Amazon SES (through SNS), Postmark, and a documented generic format.

Each provider authenticates as it does: SNS by the message signature (its certificate fetched only from an
`sns.<region>.amazonaws.com` https URL), Postmark by HTTP basic auth whose password is the API token, the generic
format by the bearer token. Each event carries the provider's id, so a redelivery changes nothing (a UNIQUE key in
`webhook_events`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from reconciler import strictjson
from reconciler.rows import normalise_email
from reconciler.state import subscribers
from reconciler.state.postgres import StateDatabase
from reconciler.strictjson import JsonInputError, NonFiniteNumber
from reconciler.web.context import WebContext, context

SNS_CERT_URL = re.compile(
    r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/SimpleNotificationService-[A-Za-z0-9]+\.pem$"
)
SNS_SUBSCRIBE_URL = re.compile(r"^https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/")
POSTMARK_HARD = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "Blocked", "DMARCPolicy"}


class WebhookAuthError(Exception):
    """Missing or wrong credentials (401) or a signature that does not verify (403)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class WebhookPayloadError(ValueError):
    """A body we cannot read as the provider's format (400)."""


@dataclass(frozen=True)
class ProviderEvent:
    event_id: str
    email: str
    kind: str
    """bounce | complaint | unsubscribe (the generic format only)"""
    hard: bool
    detail: str


def check_bearer(headers: Mapping[str, str], token: str | None) -> None:
    given = headers.get("authorization", "")
    scheme, _, credentials = given.partition(" ")
    if not token or scheme.lower() != "bearer" or not hmac.compare_digest(credentials.encode(), token.encode()):
        raise WebhookAuthError("a bearer token is required", 401)


def check_postmark(headers: Mapping[str, str], token: str | None) -> None:
    given = headers.get("authorization", "")
    try:
        _, _, password = base64.b64decode(given.removeprefix("Basic ")).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        password = ""
    if not token or not given.startswith("Basic ") or not hmac.compare_digest(password.encode(), token.encode()):
        raise WebhookAuthError("Postmark webhooks authenticate with basic auth; the password is the API token", 401)


def postmark(body: Any) -> list[ProviderEvent]:
    """Postmark's bounce and spam complaint records (one or a list), once `check_postmark` passed."""
    records = body if isinstance(body, list) else [body]
    events = []
    for record in records:
        if not isinstance(record, dict) or "Email" not in record or "ID" not in record:
            raise WebhookPayloadError("a Postmark record needs RecordType, ID and Email")
        kind = {"Bounce": "bounce", "SpamComplaint": "complaint"}.get(str(record.get("RecordType")))
        if kind is None:
            continue  # deliveries, opens ... are not ours to record from Postmark
        hard = kind == "bounce" and str(record.get("Type")) in POSTMARK_HARD
        detail = f"{record.get('Type', '')} {record.get('Description') or record.get('Details') or ''}".strip()
        events.append(ProviderEvent(str(record["ID"]), str(record["Email"]), kind, hard, detail))
    return events


GENERIC_TYPES = ("bounce", "complaint", "unsubscribe")


def generic(body: Any) -> list[ProviderEvent]:
    """`{"id": "...", "type": "bounce" | "complaint" | "unsubscribe", "email": "...", "bounce_type": "hard" |
    "soft", "detail": "..."}`, or a list of them; authenticated with the API bearer token (`check_bearer`)."""
    records = body if isinstance(body, list) else [body]
    events = []
    for record in records:
        if not isinstance(record, dict) or not {"id", "type", "email"} <= set(record):
            raise WebhookPayloadError(f"each event needs id, type ({', '.join(GENERIC_TYPES)}) and email")
        if record["type"] not in GENERIC_TYPES:
            raise WebhookPayloadError(f"type must be one of {', '.join(GENERIC_TYPES)}, not {record['type']!r}")
        hard = record["type"] == "bounce" and record.get("bounce_type", "hard") == "hard"
        events.append(
            ProviderEvent(str(record["id"]), str(record["email"]), record["type"], hard, str(record.get("detail", "")))
        )
    return events


def _sns_string_to_sign(message: Mapping[str, Any]) -> bytes:
    if message.get("Type") == "Notification":
        keys = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        keys = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{key}\n{message[key]}\n" for key in keys if message.get(key) is not None).encode()


def verify_sns(message: Mapping[str, Any], fetch: Callable[[str], bytes]) -> None:
    """Check an SNS message's signature with the certificate at its SigningCertURL (an AWS https URL only)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    url = str(message.get("SigningCertURL", ""))
    if not SNS_CERT_URL.match(url):
        raise WebhookAuthError("SigningCertURL is not an Amazon SNS certificate URL", 403)
    try:
        signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookAuthError(f"unreadable signature: {exc}", 403) from None
    try:
        pem = fetch(url)
    except Exception as exc:  # unreachable, refused, not found, too many new URLs: nothing verifies
        raise WebhookAuthError(f"the SNS certificate could not be fetched: {exc}", 403) from None
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise WebhookAuthError(f"unreadable certificate: {exc}", 403) from None
    algorithm = hashes.SHA256() if str(message.get("SignatureVersion")) == "2" else hashes.SHA1()
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise WebhookAuthError("the SNS certificate does not hold an RSA key", 403)
    try:
        key.verify(signature, _sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise WebhookAuthError("the SNS signature does not verify", 403) from None


TOPICS_ENV = "RECONCILER_SNS_TOPICS"
"""The SNS topics (ARNs, comma-separated) whose messages are taken: SNS signs every AWS account's messages with the
same certificate, so a valid signature alone would let anyone's topic subscribe and report bounces and complaints
that suppress any address. `*` takes every topic (a test bench)."""


def _check_topic(body: Mapping[str, Any]) -> None:
    allowed = {topic.strip() for topic in os.environ.get(TOPICS_ENV, "").split(",") if topic.strip()}
    topic = str(body.get("TopicArn", ""))
    if "*" in allowed or topic in allowed:
        return
    if not allowed:
        raise WebhookAuthError(
            f"SNS messages are refused until {TOPICS_ENV} names your topics (their ARNs, comma-separated, e.g. "
            "arn:aws:sns:eu-west-1:123456789012:ses-events): any AWS account can sign an SNS message",
            403,
        )
    raise WebhookAuthError(f"topic {topic[:200]!r} is not one of {TOPICS_ENV}", 403)


def sns_notification(body: Any, fetch: Callable[[str], bytes]) -> tuple[dict[str, Any] | None, str | None]:
    """An SES notification in an SNS envelope, once its signature verified: (the notification, None); for a
    subscription confirmation (None, the URL to visit to confirm it); (None, None) for any other SNS message."""
    if not isinstance(body, dict) or "Type" not in body:
        raise WebhookPayloadError("not an SNS message (no Type)")
    verify_sns(body, fetch)
    _check_topic(body)
    if body["Type"] == "SubscriptionConfirmation":
        url = str(body.get("SubscribeURL", ""))
        if not SNS_SUBSCRIBE_URL.match(url):
            raise WebhookAuthError("SubscribeURL is not an Amazon SNS URL", 403)
        return None, url
    if body["Type"] != "Notification":
        return None, None
    try:
        notification = strictjson.loads(str(body.get("Message")))
    except ValueError:
        raise WebhookPayloadError("the SNS Message is not SES's JSON") from None
    if not isinstance(notification, dict):
        raise WebhookPayloadError("the SNS Message is not an SES notification")
    return notification, None


def ses(body: Any, fetch: Callable[[str], bytes]) -> tuple[list[ProviderEvent], str | None]:
    """SES bounce and complaint notifications in an SNS envelope; returns the events and, for a subscription
    confirmation, the URL to visit to confirm it."""
    notification, subscribe_url = sns_notification(body, fetch)
    if notification is None:
        return [], subscribe_url
    kind = str(notification.get("notificationType") or notification.get("eventType") or "")
    message_id = str(body.get("MessageId", ""))
    events = []
    if kind == "Bounce":
        bounce = as_mapping(notification.get("bounce"))
        hard = bounce.get("bounceType") == "Permanent"
        for recipient in map(as_mapping, as_items(bounce.get("bouncedRecipients"))):
            address = str(recipient.get("emailAddress", ""))
            detail = f"{bounce.get('bounceType')}/{bounce.get('bounceSubType')} {recipient.get('diagnosticCode', '')}"
            events.append(ProviderEvent(f"{message_id}:{address}", address, "bounce", hard, detail.strip()))
    elif kind == "Complaint":
        complaint = as_mapping(notification.get("complaint"))
        for recipient in map(as_mapping, as_items(complaint.get("complainedRecipients"))):
            events.append(
                ProviderEvent(
                    f"{message_id}:{recipient.get('emailAddress')}",
                    str(recipient.get("emailAddress", "")),
                    "complaint",
                    False,
                    str(complaint.get("complaintFeedbackType", "")),
                )
            )
    return events, None


def as_mapping(value: Any) -> dict[str, Any]:
    """A JSON object of a provider's payload, or {} when it is something else."""
    return value if isinstance(value, dict) else {}


def as_items(value: Any) -> list[Any]:
    """A JSON array of a provider's payload, or [] when it is something else."""
    return value if isinstance(value, list) else []


async def endpoint(request: Request) -> Response:
    """POST /api/v1/webhooks/{provider}: bounces and complaints, recorded once per provider event id. Credentials
    in headers are checked before the body is read; SNS messages carry theirs inside (the signature)."""
    web = context(request)
    provider = request.path_params["provider"]
    if provider not in ("ses", "postmark", "generic"):
        return JSONResponse({"error": "providers: ses, postmark, generic"}, 404)
    token = (await web.site()).api_token
    try:
        if provider == "postmark":
            check_postmark(request.headers, token)
        elif provider == "generic":
            check_bearer(request.headers, token)
        body = await read_json(request)
        if provider == "ses":
            events = await anyio.to_thread.run_sync(_ses, web, body)  # fetches the certificate: not on the loop
        else:
            events = postmark(body) if provider == "postmark" else generic(body)
    except REFUSED as exc:
        return refused(exc)
    recorded, invalid = await web.write(_record, provider, events, at=web.now())
    repeated = len(events) - recorded - invalid
    return JSONResponse({"events": len(events), "recorded": recorded, "repeated": repeated, "invalid": invalid})


def _ses(web: WebContext, body: Any) -> list[ProviderEvent]:
    events, subscribe_url = ses(body, web.certificates.get)
    confirm_subscription(web, subscribe_url)
    return events


def confirm_subscription(web: WebContext, subscribe_url: str | None) -> None:
    """Visit an SNS subscription's (AWS) SubscribeURL, which confirms it. In a worker thread."""
    if subscribe_url:
        try:
            web.fetch(subscribe_url)
        except Exception as exc:  # any failure to reach AWS: SNS sends the confirmation again
            raise WebhookPayloadError(f"could not confirm the subscription at SubscribeURL: {exc}") from None


def _record(db: StateDatabase, provider: str, events: list[ProviderEvent], *, at: str) -> tuple[int, int]:
    """(recorded, invalid): events for an address that is not one are counted apart, never as repeated."""
    recorded = invalid = 0
    for event in events:
        try:
            email = normalise_email(event.email)
        except ValueError:
            invalid += 1
            continue
        recorded += subscribers.provider_event(
            db, provider, event.event_id, email=email, kind=event.kind, hard=event.hard, at=at, detail=event.detail
        )
    return recorded, invalid


async def read_json(request: Request) -> Any:
    """The body as strict JSON (no NaN or Infinity, at most MAX_DEPTH levels); raises JsonInputError."""
    return strictjson.loads(await request.body())


REFUSED = (WebhookAuthError, JsonInputError, WebhookPayloadError)
"""What a delivery is refused for: its credentials, its JSON, its shape."""


def refused(exc: WebhookAuthError | JsonInputError | WebhookPayloadError) -> Response:
    """The answer to a delivery that is not accepted: wrong credentials (401, or 403 for a signature), a body that
    is not JSON (`json_refused`), or not the provider's format (400)."""
    if isinstance(exc, WebhookAuthError):
        return JSONResponse({"error": str(exc)}, exc.status)
    if isinstance(exc, JsonInputError):
        return json_refused(exc)
    return JSONResponse({"error": str(exc)}, 400)


def json_refused(exc: JsonInputError) -> Response:
    """Non-finite numbers are values we refuse (422); a body that is not JSON, or nested too deep, is a 400."""
    status = 422 if isinstance(exc, NonFiniteNumber) else 400
    return JSONResponse({"error": f"the body is not accepted: {exc}"}, status)
