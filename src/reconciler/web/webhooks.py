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
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from sqlite_utils import Database
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from reconciler.imports import normalise_email
from reconciler.state import subscribers
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
    """bounce | complaint"""
    hard: bool
    detail: str


def check_bearer(headers: Mapping[str, str], token: str | None) -> None:
    given = headers.get("authorization", "")
    if not token or not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].encode(), token.encode()):
        raise WebhookAuthError("a bearer token is required", 401)


def postmark(body: Any, headers: Mapping[str, str], token: str | None) -> list[ProviderEvent]:
    given = headers.get("authorization", "")
    try:
        _, _, password = base64.b64decode(given.removeprefix("Basic ")).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        password = ""
    if not token or not given.startswith("Basic ") or not hmac.compare_digest(password.encode(), token.encode()):
        raise WebhookAuthError("Postmark webhooks authenticate with basic auth; the password is the API token", 401)
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


def generic(body: Any, headers: Mapping[str, str], token: str | None) -> list[ProviderEvent]:
    """`{"id": "...", "type": "bounce" | "complaint", "email": "...", "bounce_type": "hard" | "soft",
    "detail": "..."}`, or a list of them; authenticated with the API bearer token."""
    check_bearer(headers, token)
    records = body if isinstance(body, list) else [body]
    events = []
    for record in records:
        if not isinstance(record, dict) or not {"id", "type", "email"} <= set(record):
            raise WebhookPayloadError("each event needs id, type (bounce or complaint) and email")
        if record["type"] not in ("bounce", "complaint"):
            raise WebhookPayloadError(f"type must be bounce or complaint, not {record['type']!r}")
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
        certificate = x509.load_pem_x509_certificate(fetch(url))
    except (binascii.Error, ValueError) as exc:
        raise WebhookAuthError(f"unreadable signature or certificate: {exc}", 403) from None
    algorithm = hashes.SHA256() if str(message.get("SignatureVersion")) == "2" else hashes.SHA1()
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise WebhookAuthError("the SNS certificate does not hold an RSA key", 403)
    try:
        key.verify(signature, _sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise WebhookAuthError("the SNS signature does not verify", 403) from None


def ses(body: Any, fetch: Callable[[str], bytes]) -> tuple[list[ProviderEvent], str | None]:
    """SES notifications in an SNS envelope; returns the events and, for a subscription confirmation, the URL to
    visit to confirm it."""
    if not isinstance(body, dict) or "Type" not in body:
        raise WebhookPayloadError("not an SNS message (no Type)")
    verify_sns(body, fetch)
    if body["Type"] == "SubscriptionConfirmation":
        url = str(body.get("SubscribeURL", ""))
        if not SNS_SUBSCRIBE_URL.match(url):
            raise WebhookAuthError("SubscribeURL is not an Amazon SNS URL", 403)
        return [], url
    if body["Type"] != "Notification":
        return [], None
    try:
        notification = json.loads(body["Message"])
    except (TypeError, ValueError):
        raise WebhookPayloadError("the SNS Message is not SES's JSON") from None
    kind = str(notification.get("notificationType") or notification.get("eventType") or "")
    message_id = str(body.get("MessageId", ""))
    events = []
    if kind == "Bounce":
        bounce = notification.get("bounce") or {}
        hard = bounce.get("bounceType") == "Permanent"
        for recipient in bounce.get("bouncedRecipients") or []:
            address = str(recipient.get("emailAddress", ""))
            detail = f"{bounce.get('bounceType')}/{bounce.get('bounceSubType')} {recipient.get('diagnosticCode', '')}"
            events.append(ProviderEvent(f"{message_id}:{address}", address, "bounce", hard, detail.strip()))
    elif kind == "Complaint":
        complaint = notification.get("complaint") or {}
        for recipient in complaint.get("complainedRecipients") or []:
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


async def endpoint(request: Request) -> Response:
    """POST /api/v1/webhooks/{provider}: bounces and complaints, recorded once per provider event id."""
    web = context(request)
    provider = request.path_params["provider"]
    body = await read_json(request)
    token = (await web.site()).api_token
    try:
        if provider == "ses":
            events = await anyio.to_thread.run_sync(_ses, web, body)  # fetches the certificate: not on the loop
        elif provider == "postmark":
            events = postmark(body, request.headers, token)
        elif provider == "generic":
            events = generic(body, request.headers, token)
        else:
            return JSONResponse({"error": "providers: ses, postmark, generic"}, 404)
    except WebhookAuthError as exc:
        return JSONResponse({"error": str(exc)}, exc.status)
    except WebhookPayloadError as exc:
        return JSONResponse({"error": str(exc)}, 400)
    recorded = await web.write(_record, provider, events, at=web.now())
    return JSONResponse({"events": len(events), "recorded": recorded, "repeated": len(events) - recorded})


def _ses(web: WebContext, body: Any) -> list[ProviderEvent]:
    def fetch(url: str) -> bytes:
        if url not in web.certificates:
            web.certificates[url] = web.fetch(url)
        return web.certificates[url]

    events, subscribe_url = ses(body, fetch)
    if subscribe_url:
        web.fetch(subscribe_url)  # confirms the SNS subscription
    return events


def _record(db: Database, provider: str, events: list[ProviderEvent], *, at: str) -> int:
    recorded = 0
    for event in events:
        try:
            email = normalise_email(event.email)
        except ValueError:
            continue
        recorded += subscribers.provider_event(
            db, provider, event.event_id, email=email, kind=event.kind, hard=event.hard, at=at, detail=event.detail
        )
    return recorded


async def read_json(request: Request) -> Any:
    """The body as JSON, or None when it is not JSON."""
    try:
        return json.loads(await request.body())
    except ValueError:
        return None
