"""The read-only dashboard: every campaign and workflow, and each one's report, behind a sign-in with the API token.

Signing in posts the token in a form (never in a URL, where logs and browser history would keep it) and sets a
session cookie: signed with the workspace key, bound to the token (a new token ends every session), valid for
SESSION_HOURS, HttpOnly (no script can read it), SameSite=Strict (no other site's page can send it) and Secure
when the public address is https. The pages hold no script; their charts are inline SVG. A page is rendered at
most once every FRESH_FOR seconds, however many people look at it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from html import escape
from urllib.parse import quote, urlsplit

import anyio
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from reconciler.errors import UsageError
from reconciler.report import figures
from reconciler.report.html import campaign_html, overview_html, workflow_html
from reconciler.web.context import Site, context, ip
from reconciler.web.pages import same_origin

COOKIE = "reconciler_session"
NONCE_BITS = 32
"""Random bits beside the minute a session was issued in: two sign-ins never share a cookie (signing out one
would end the other)."""
FRESH_FOR = 10.0
"""Seconds a rendered page is served again: twenty people watching a launch cost one count, not twenty."""
KEPT = 64
"""Rendered pages kept at most (the least recently made go first)."""
SESSION_HOURS = 12

SIGN_IN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Sign in · reconciler</title>
<style>body{{font-family:system-ui,sans-serif;max-width:420px;margin:3rem auto;padding:0 1rem;color:#212529}}
input{{width:100%;padding:.5rem;margin:.4rem 0 1rem;box-sizing:border-box}}button{{padding:.5rem 1rem}}
.error{{color:#c92a2a}}</style></head><body><h1>Reports</h1>{message}
<form method="post" action="/dashboard/sign-in"><label for="token">API token (RECONCILER_API_TOKEN)</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button></form></body></html>"""


def _bound(site: Site) -> str:
    """What a session is bound to: the token's digest (a new token ends every session)."""
    return hashlib.sha256((site.api_token or "").encode()).hexdigest()[:16]


def _expiry(session: str, site: Site) -> float | None:
    """When the session (its cookie) expires, seconds since the epoch; None when it is no session (no API token,
    a cookie not signed with the key, bound to another token, or expired)."""
    if not site.api_token or not session:
        return None
    ident = site.signer.verify("session", session, _bound(site))
    if ident is None:
        return None
    issued = ident >> NONCE_BITS
    if not 0 <= time.time() / 60 - issued <= SESSION_HOURS * 60:
        return None
    return float(issued * 60 + SESSION_HOURS * 3600)


async def _signed_in(request: Request, site: Site) -> bool:
    """The request's cookie is a session, and not one signed out (on any daemon, where they share PostgreSQL)."""
    session = request.cookies.get(COOKIE, "")
    if _expiry(session, site) is None:
        return False
    return not await context(request).limits.sessions.signed_out(session)


async def sign_in(request: Request) -> Response:
    """GET: the form. POST: check the token (constant time, rate limited) and set the session cookie."""
    web = context(request)
    site = await web.site()
    if request.method == "GET":
        return _form("")
    if not same_origin(request, site.runtime.public_url):
        return _form("This form must be sent from this site's own page.", 403)
    attempts, who = web.limits.sign_ins, ip(request) or "?"
    wait = await attempts.retry_after(who)  # counted before the form is read: requests at once cannot all slip through
    if wait:
        too_many = _form(f"Too many wrong tokens; try again in {wait} s.", 429)
        too_many.headers["Retry-After"] = str(wait)
        return too_many
    token = str((await request.form()).get("token", ""))
    if not site.api_token or not hmac.compare_digest(token.encode(), site.api_token.encode()):
        return _form("That is not the API token.", 401)
    await attempts.refund(who)  # only wrong tokens count
    response = RedirectResponse("/dashboard", 303)
    secure = urlsplit(site.runtime.settings.public_url).scheme == "https"
    ident = (int(time.time() // 60) << NONCE_BITS) | secrets.randbits(NONCE_BITS)  # each sign-in a session of its own
    session = site.signer.sign("session", ident, _bound(site))
    response.set_cookie(
        COOKIE, session, max_age=SESSION_HOURS * 3600, path="/", httponly=True, samesite="strict", secure=secure
    )
    return response


def _form(message: str, status: int = 200) -> HTMLResponse:
    shown = f'<p class="error">{escape(message)}</p>' if message else ""
    return HTMLResponse(SIGN_IN_PAGE.format(message=shown), status)


async def sign_out(request: Request) -> Response:
    """End the session: its cookie is cleared, and refused from now on should it be sent again, until it would
    have expired (on SQLite, until the daemon restarts; on PostgreSQL by every daemon, kept in the database; a new
    API token ends every session for good). A cookie that is no session is not kept."""
    web = context(request)
    site = await web.site()
    if not same_origin(request, site.runtime.public_url):
        return _form("This form must be sent from this site's own page.", 403)
    session = request.cookies.get(COOKIE, "")
    expires_at = _expiry(session, site)
    if expires_at is not None:
        await web.limits.sessions.sign_out(session, expires_at=expires_at)
    response = RedirectResponse("/dashboard/sign-in", 303)
    response.delete_cookie(COOKIE, path="/")
    return response


class _Pages:
    """Rendered dashboard pages for FRESH_FOR seconds; one request renders a page while the others wait for it."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[float, str]] = {}
        self.locks: dict[str, asyncio.Lock] = {}

    async def get(self, key: str, render: Callable[[], Awaitable[str]]) -> str:
        lock = self.locks.setdefault(key, asyncio.Lock())
        async with lock:
            made = self.pages.get(key)
            if made is None or time.monotonic() - made[0] > FRESH_FOR:
                try:
                    made = self.pages[key] = (time.monotonic(), await render())
                except Exception:
                    if key not in self.pages:  # no such page: keep nothing for it
                        self.locks.pop(key, None)
                    raise
                while len(self.pages) > KEPT:
                    oldest = min(self.pages, key=lambda k: self.pages[k][0])
                    del self.pages[oldest], self.locks[oldest]
            return made[1]


def _pages(request: Request) -> _Pages:
    """The rendered pages of this app (each daemon renders its own; the sign-ins and sessions are in
    `WebContext.limits`)."""
    state = request.app.state
    if not hasattr(state, "dashboard_pages"):
        state.dashboard_pages = _Pages()
    found: _Pages = state.dashboard_pages
    return found


async def overview(request: Request) -> Response:
    """GET /dashboard: every campaign and workflow."""
    web = context(request)
    if not await _signed_in(request, await web.site()):
        return RedirectResponse("/dashboard/sign-in", 303)

    async def render() -> str:
        rows = await web.read(figures.overview)
        return overview_html(rows, link=lambda row: f"/dashboard/{row.kind}s/{quote(row.name, safe='')}")

    return HTMLResponse(await _pages(request).get("", render))


async def report(request: Request) -> Response:
    """GET /dashboard/campaigns/{name} and /dashboard/workflows/{name}: one report."""
    web = context(request)
    if not await _signed_in(request, await web.site()):
        return RedirectResponse("/dashboard/sign-in", 303)
    name, kind = request.path_params["name"], request.path_params["kind"]

    async def render() -> str:
        if kind == "campaigns":
            found = await web.read(figures.campaign_report, name)
            return await anyio.to_thread.run_sync(lambda: campaign_html(found, back="/dashboard"))
        flow = await web.read(figures.workflow_report, name)
        return await anyio.to_thread.run_sync(lambda: workflow_html(flow, back="/dashboard"))

    try:
        if kind in ("campaigns", "workflows"):
            return HTMLResponse(await _pages(request).get(f"{kind}/{name}", render))
    except UsageError:
        pass
    return HTMLResponse("<!doctype html><title>Not found</title><p>No such campaign or workflow.</p>", 404)
