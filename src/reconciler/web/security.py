"""What every response of the web service carries, and the limits every request meets.

Pages behind tokens must not leak the token (Referrer-Policy), be cached (Cache-Control) or be framed (CSP
frame-ancestors); bodies are capped before they are read; forms carry a signed CSRF field; rate limits answer
429 with Retry-After.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.datastructures import MutableHeaders

from reconciler.state.web_limits import window_wait
from reconciler.tokens import Signer

SECURITY_HEADERS = {
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}
MAX_BODY = 1_000_000
INBOUND_MAX_BODY = 40_000_000
"""An opt-out by email arrives whole, attachments and all (Postmark's inbound JSON, an SES receipt): a person who
unsubscribes by replying to a newsletter with its images attached is still unsubscribed. Refusing it would have
the provider deliver it again and again."""
"""Bytes a request body may have (a batch of events fits; a webhook is a few KB)."""
CSRF_TTL = 24 * 3600

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class SecurityMiddleware:
    """Adds SECURITY_HEADERS to every response and refuses bodies over MAX_BODY with 413 (ASGI, so a streamed
    body is cut off as soon as it passes the limit, not after it was read whole)."""

    def __init__(self, app: App, *, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        limit = INBOUND_MAX_BODY if str(scope.get("path", "")).startswith("/api/v1/inbound/") else self.max_body
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _plain(send, 413, b"request body too large\n")
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def secured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    response_headers.setdefault(name, value)
            await send(message)

        try:
            await self.app(scope, limited_receive, secured_send)
        except BodyTooLarge:
            await _plain(send, 413, b"request body too large\n")


class BodyTooLarge(Exception):
    pass


async def _plain(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RateLimit:
    """At most `limit` events per key in any `window` seconds (a sliding window in memory)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.events: dict[str, deque[float]] = {}

    def refund(self, key: str) -> None:
        """Take back the last event counted for `key` (it turned out not to be one that counts)."""
        events = self.events.get(key)
        if events:
            events.pop()

    def retry_after(self, key: str, *, now: float | None = None, count: bool = True) -> int:
        """0 and count the event when allowed (`count=False`: only look); else the seconds until it would be."""
        now = time.monotonic() if now is None else now
        events = self.events.setdefault(key, deque())
        while events and events[0] <= now - self.window:
            events.popleft()
        seconds = window_wait(events, limit=self.limit, window=self.window, now=now)
        if seconds or not count:
            return seconds
        events.append(now)
        if len(self.events) > 100_000:  # forget idle keys so a flood of addresses cannot grow memory forever
            for stale in [k for k, v in self.events.items() if not v or v[-1] <= now - self.window][:50_000]:
                del self.events[stale]
        return 0


def csrf_token(signer: Signer, contact_id: int, *, now: float | None = None) -> str:
    """A form field binding the form to one contact and an issue time (minutes since the epoch)."""
    minute = int((time.time() if now is None else now) // 60)
    return signer.sign("csrf", minute, str(contact_id))


def csrf_valid(signer: Signer, token: str, contact_id: int, *, now: float | None = None) -> bool:
    minute = signer.verify("csrf", token, str(contact_id))
    current = (time.time() if now is None else now) / 60
    return minute is not None and 0 <= current - minute <= CSRF_TTL / 60
