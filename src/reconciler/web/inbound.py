"""Inbound mail webhooks: opt-outs by email that Postmark or Amazon SES received for Settings `unsubscribe_address`.

Each provider authenticates as its bounce webhook does (`webhooks`): Postmark by basic auth whose password is the
API token, SES by the SNS signature. The provider's JSON gives the addresses the message was sent to and its
subject; `inbound` finds the token there and unsubscribes. Every answer to an authenticated delivery is a 200 (a
provider retries anything else), and every message without a valid token gets the same one.
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from reconciler.inbound import InboundMail, unsubscribe_row
from reconciler.web.context import WebContext, context
from reconciler.web.webhooks import (
    REFUSED,
    WebhookPayloadError,
    as_items,
    as_mapping,
    check_postmark,
    confirm_subscription,
    read_json,
    refused,
    sns_notification,
)

PROVIDERS = {"postmark": "Postmark", "ses": "Amazon SES"}
IGNORED = {"outcome": "ignored", "why": "no valid unsubscribe token in the recipient addresses or the subject"}


def postmark(body: Any) -> InboundMail:
    """Postmark's inbound JSON: OriginalRecipient, ToFull/CcFull, MailboxHash (what follows `+`), Subject."""
    if not isinstance(body, dict) or not ({"OriginalRecipient", "To", "ToFull"} & set(body)):
        raise WebhookPayloadError("a Postmark inbound message needs OriginalRecipient or To")
    recipients = [_text(body.get("OriginalRecipient"))]
    for key in ("ToFull", "CcFull"):
        recipients += [_text(as_mapping(item).get("Email")) for item in as_items(body.get(key))]
    recipients += [_text(body.get("To")), _text(body.get("Cc"))]
    if _text(body.get("MailboxHash")):
        recipients.append(f"+{_text(body.get('MailboxHash'))}@")  # the address's token alone
    return InboundMail(tuple(r for r in recipients if r), _text(body.get("Subject")))


def ses(notification: dict[str, Any]) -> InboundMail | None:
    """An SES receipt notification (a receipt rule's SNS action): the envelope recipients, the headers' To and
    Subject; None for notifications of other kinds (a bounce sent here by mistake changes nothing)."""
    if notification.get("notificationType") != "Received":
        return None
    receipt, mail = as_mapping(notification.get("receipt")), as_mapping(notification.get("mail"))
    headers = as_mapping(mail.get("commonHeaders"))
    recipients = [_text(r) for r in as_items(receipt.get("recipients")) + as_items(mail.get("destination"))]
    recipients += [_text(r) for r in as_items(headers.get("to"))]
    return InboundMail(tuple(r for r in recipients if r), _text(headers.get("subject")))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


async def endpoint(request: Request) -> Response:
    """POST /api/v1/inbound/{provider}: an opt-out by email, received by Postmark or Amazon SES."""
    web = context(request)
    provider = request.path_params["provider"]
    if provider not in PROVIDERS:
        return JSONResponse({"error": "providers: " + ", ".join(PROVIDERS)}, 404)
    site = await web.site()
    try:
        if provider == "postmark":
            check_postmark(request.headers, site.api_token)
        body = await read_json(request)
        if provider == "ses":
            mail = await anyio.to_thread.run_sync(_ses, web, body)  # fetches the certificate: not on the loop
            if mail is None:
                return JSONResponse({"outcome": "ignored", "why": "not a message SES received"})
        else:
            mail = postmark(body)
    except REFUSED as exc:
        return refused(exc)
    row_id = mail.verified_row(site.signer)  # verified before anything is read
    if row_id is None:
        return JSONResponse(IGNORED)
    outcome = await web.write(unsubscribe_row, row_id, at=web.now(), via=PROVIDERS[provider])
    return JSONResponse({"outcome": outcome.done})


def _ses(web: WebContext, body: Any) -> InboundMail | None:
    notification, subscribe_url = sns_notification(body, web.certificates.get)
    confirm_subscription(web, subscribe_url)
    return ses(notification) if notification is not None else None
