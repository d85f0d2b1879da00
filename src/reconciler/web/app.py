"""The subscriber-facing web service and the API (PRODUCT §4), a Starlette app served inside `reconciler run`.

It only records facts (an unsubscribe, a preference, an open, an event, a bounce) into the state database; the
daemon's next pass sees them. Every link token is checked before anything is read, and every invalid token gets
the same answer, whatever was wrong with it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlite_utils import Database
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from reconciler.clock import Clock, iso, parse_instant
from reconciler.contacts import RowParser, normalise_email
from reconciler.dispatch import FREQUENCIES, Dispatcher, signer_for
from reconciler.segments import blocking_for
from reconciler.state import records, subscribers
from reconciler.state.contacts import import_batch, start_import
from reconciler.state.db import get_meta
from reconciler.tokens import Purpose, Signer
from reconciler.web import webhooks
from reconciler.web.metrics import Metrics
from reconciler.web.security import RateLimit, SecurityMiddleware, csrf_token, csrf_valid
from reconciler.web.tracking import PIXEL_GIF, EngagementWriter, is_machine

log = logging.getLogger(__name__)
PAGES = Environment(loader=PackageLoader("reconciler.web", "templates"), autoescape=select_autoescape(["html"]))
FREQUENCY_LABELS = [
    ("", "Every email on the topics I chose"),
    ("weekly", "At most one email a week"),
    ("monthly", "At most one email a month"),
]
ONE_CLICK = "List-Unsubscribe=One-Click"


@dataclass
class Site:
    """What the pages need from Settings (as last applied), re-read every few seconds."""

    organization: dict[str, Any] = field(default_factory=dict)
    public_url: str = ""
    api_token: str | None = None
    signer: Signer | None = None
    read_at: float = 0.0


def fetch_url(url: str) -> bytes:
    import httpx

    response = httpx.get(url, timeout=10, follow_redirects=False)
    response.raise_for_status()
    return response.content


def create_app(
    db: Database,
    *,
    clock: Clock,
    root: Path | None = None,
    fetch: Callable[[str], bytes] = fetch_url,
    metrics: Metrics | None = None,
) -> Starlette:
    """The app over one database connection of its own. `fetch` gets SNS certificates and confirmation URLs."""
    site = Site()
    certificates: dict[str, bytes] = {}
    writer = EngagementWriter(lambda rows: subscribers.record_engagement(db, rows))
    per_ip, per_address = RateLimit(10, 600.0), RateLimit(3, 3600.0)
    metrics = metrics or Metrics(db)
    viewer = Dispatcher(db, root=root or Path("."), clock=clock)

    def current() -> Site:
        if time.monotonic() - site.read_at > 5:
            organization = json.loads(get_meta(db, "settings.organization") or "{}")
            site.organization = organization or {"name": "", "postal_address": ""}
            site.public_url = get_meta(db, "settings.public_url") or ""
            site.api_token = os.environ.get(get_meta(db, "settings.api_token_env") or "RECONCILER_API_TOKEN")
            site.signer = signer_for(db)
            site.read_at = time.monotonic()
        return site

    def page(name: str, *, status: int = 200, **values: Any) -> HTMLResponse:
        html = PAGES.get_template(name).render(organization=current().organization, **values)
        return HTMLResponse(html, status_code=status)

    def invalid() -> HTMLResponse:
        return page("invalid.html", status=404)

    def verified(purpose: Purpose, token: str, extra: str = "") -> int | None:
        signer = current().signer
        return signer.verify(purpose, token, extra) if signer else None

    def ip(request: Request) -> str | None:
        return request.client.host if request.client else None

    def now() -> str:
        return iso(clock.now())

    def list_titles(names: tuple[str, ...]) -> str:
        specs = records.list_specs(db)
        titles = [specs.get(n, {}).get("title") or n for n in names]
        return ", ".join(titles) or "these emails"

    # --- unsubscribe -------------------------------------------------------------------------------------------

    async def unsubscribe(request: Request) -> Response:
        row_id = verified("unsubscribe", request.path_params["token"])
        target = subscribers.message_target(db, row_id) if row_id is not None else None
        if target is None:
            return invalid()
        signer = current().signer
        assert signer is not None
        preferences_url = f"{current().public_url}/p/{signer.sign('preferences', target.contact_id)}"
        values: dict[str, Any] = {
            "email": target.email,
            "titles": list_titles(target.lists),
            "preferences_url": preferences_url,
        }
        if request.method == "GET":  # link scanners fetch every URL: a GET never changes anything
            return page("unsubscribe.html", done=False, **values)
        form = await request.form()
        if form.get("List-Unsubscribe") != "One-Click":  # RFC 8058's body, which the page's button sends too
            return PlainTextResponse("expected List-Unsubscribe=One-Click\n", 400)
        source = "unsubscribe page" if "text/html" in request.headers.get("accept", "") else "one-click"
        subscribers.unsubscribe(db, target, at=now(), source=source, ip=ip(request))
        return page("unsubscribe.html", done=True, **values)

    # --- preferences -------------------------------------------------------------------------------------------

    async def preferences(request: Request) -> Response:
        token = request.path_params["token"]
        contact_id = verified("preferences", token)
        prefs = subscribers.preferences(db, contact_id) if contact_id is not None else None
        if contact_id is None or prefs is None:
            return invalid()
        signer = current().signer
        assert signer is not None
        specs = {n: s for n, s in records.list_specs(db).items() if s.get("visibility", "public") == "public"}
        if request.method == "POST":
            if not _same_origin(request, current().public_url):
                return PlainTextResponse("forms are accepted from this site only\n", 403)
            form = await request.form()
            if not csrf_valid(signer, str(form.get("csrf", "")), contact_id):
                return PlainTextResponse("this form has expired; open the link from your email again\n", 403)
            if form.get("action") == "unsubscribe_all":
                marketing = [
                    n for n, s in records.list_specs(db).items() if s.get("category", "marketing") == "marketing"
                ]
                subscribers.unsubscribe_all(
                    db, contact_id, marketing_lists=marketing, at=now(), source="preferences", ip=ip(request)
                )
                return RedirectResponse(f"{request.url.path}?saved=all", 303)
            chosen = set(form.getlist("list"))
            frequency = str(form.get("frequency") or "") or None
            if frequency is not None and frequency not in FREQUENCIES:
                frequency = None
            subscribers.save_preferences(
                db, contact_id, lists={n: n in chosen for n in specs}, frequency=frequency, at=now(), ip=ip(request)
            )
            return RedirectResponse(f"{request.url.path}?saved=1", 303)
        items = [
            {
                "name": n,
                "title": s.get("title", n),
                "description": s.get("description", ""),
                "subscribed": prefs.subscriptions.get(n) == "subscribed" and not prefs.unsubscribed_from_all,
            }
            for n, s in sorted(specs.items(), key=lambda item: item[1].get("title", item[0]))
        ]
        return page(
            "preferences.html",
            email=prefs.email,
            lists=items,
            frequency=prefs.frequency or "",
            frequencies=FREQUENCY_LABELS,
            csrf=csrf_token(signer, contact_id),
            saved=request.query_params.get("saved"),
        )

    # --- double opt-in -----------------------------------------------------------------------------------------

    async def subscribe(request: Request) -> Response:
        address = ip(request) or "unknown"
        wait = per_ip.retry_after(address)
        if wait:
            return _too_many(wait)
        form = await request.form()
        if form.get("website"):  # the honeypot field people never see
            return page("subscribed.html", email="you")
        try:
            email = normalise_email(str(form.get("email", "")))
        except ValueError as exc:
            return PlainTextResponse(f"email: {exc}\n", 422)
        wait = per_address.retry_after(email)
        if wait:
            return _too_many(wait)
        specs = records.list_specs(db)
        wanted = [str(n) for n in form.getlist("list")]
        unknown = [n for n in wanted if n not in specs or specs[n].get("visibility", "public") != "public"]
        if not wanted or unknown:
            return PlainTextResponse(f"list: choose one of the public lists (unknown: {', '.join(unknown)})\n", 422)
        consent = str(form.get("consent") or "subscribe form")[:500]
        first_name = str(form.get("first_name") or "")[:100] or None
        subscribers.request_subscription(
            db,
            email,
            [(n, specs[n].get("opt_in", "single") == "double") for n in wanted],
            first_name=first_name,
            at=now(),
            ip=ip(request),
            text=consent,
        )
        return page("subscribed.html", email=email)

    async def confirm(request: Request) -> Response:
        row_id = verified("confirm", request.path_params["token"])
        target = subscribers.message_target(db, row_id) if row_id is not None else None
        if target is None or target.source != subscribers.CONFIRMATION_SOURCE:
            return invalid()
        title = list_titles(target.lists)
        if request.method == "GET":  # a scanner following the link must not confirm: the button POSTs
            done = subscribers.subscription_status(db, target.contact_id, target.lists[0]) == "subscribed"
            return page("confirm.html", email=target.email, title=title, done=done)
        subscribers.confirm(db, target, at=now(), ip=ip(request))
        return page("confirm.html", email=target.email, title=title, done=True)

    # --- tracking ----------------------------------------------------------------------------------------------

    async def pixel(request: Request) -> Response:
        row_id = verified("open", request.path_params["token"])
        if row_id is not None:
            writer.add(row_id, "opened", is_machine(request.headers.get("user-agent", ""), request.method), now())
        return Response(PIXEL_GIF, media_type="image/gif")

    async def click(request: Request) -> Response:
        url = request.query_params.get("u", "")
        row_id = verified("click", request.path_params["token"], url)
        if row_id is None or urlsplit(url).scheme not in ("http", "https"):
            return invalid()
        writer.add(row_id, "clicked", is_machine(request.headers.get("user-agent", ""), request.method), now(), url)
        return RedirectResponse(url, 302)

    async def view(request: Request) -> Response:
        row_id = verified("view", request.path_params["token"])
        html = viewer.view_online(row_id) if row_id is not None else None
        if html is None:
            return invalid()
        # the newsletter's own images and fonts load from the web; nothing may run or frame it
        policy = (
            "default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline' https:; font-src https:; "
            "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
        )
        return HTMLResponse(html, headers={"content-security-policy": policy})

    # --- API ---------------------------------------------------------------------------------------------------

    def authorized(request: Request) -> bool:
        try:
            webhooks.check_bearer(request.headers, current().api_token)
        except webhooks.WebhookAuthError:
            return False
        return True

    async def api_contacts(request: Request) -> Response:
        if not authorized(request):
            return _unauthorized()
        body = await _json(request)
        if body is None:
            return JSONResponse({"error": "the body must be JSON: a contact or a list of contacts"}, 400)
        items = body if isinstance(body, list) else [body]
        parser = RowParser(records.field_types(db), timezone=get_meta(db, "settings.timezone") or "UTC")
        specs, rows, errors, wanted = records.list_specs(db), [], [], set()
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                errors.append({"index": index, "error": "a contact is a JSON object"})
                continue
            lists = item.get("lists") or []
            unknown = [n for n in lists if n not in specs]
            if unknown:
                errors.append({"index": index, "error": f"unknown lists: {', '.join(map(str, unknown))}"})
                continue
            wanted |= set(lists)
            try:
                rows.append(
                    (
                        parser.parse({k: v for k, v in item.items() if k not in ("lists", "consent")}),
                        tuple(lists),
                        item.get("consent"),
                    )
                )
            except ValueError as exc:
                errors.append({"index": index, "error": str(exc)})
        if errors:
            return JSONResponse({"error": "nothing was written", "problems": errors}, 422)
        categories = {n: s.get("category", "marketing") for n, s in specs.items()}
        import_id = start_import(db, file="api:contacts", at=now())
        totals = {"created": 0, "updated": 0, "subscribed": 0}
        for row, lists, consent in rows:
            result = import_batch(
                db,
                [row],
                import_id=import_id,
                at=now(),
                source="api",
                lists=[(n, blocking_for(categories, [n])) for n in lists],
                consent_text=str(consent) if consent else None,
            )
            totals["created"] += result.created
            totals["updated"] += result.updated
            totals["subscribed"] += result.subscribed
        return JSONResponse(totals)

    async def api_events(request: Request) -> Response:
        if not authorized(request):
            return _unauthorized()
        body = await _json(request)
        items = body if isinstance(body, list) else [body]
        events, errors = [], []
        for index, item in enumerate(items):
            try:
                if not isinstance(item, dict) or not isinstance(item.get("type"), str) or not item["type"]:
                    raise ValueError("an event is an object with email and type")
                occurred = item.get("occurred_at")
                when = iso(parse_instant(occurred)) if occurred else now()
                properties = item.get("properties") or {}
                if not isinstance(properties, dict):
                    raise ValueError("properties must be an object")
                external = item.get("id")
                events.append(
                    (
                        normalise_email(str(item.get("email", ""))),
                        item["type"],
                        when,
                        properties,
                        str(external) if external is not None else None,
                    )
                )
            except ValueError as exc:
                errors.append({"index": index, "error": str(exc)})
        if errors:
            return JSONResponse({"error": "nothing was written", "problems": errors}, 422)
        added, repeated = subscribers.insert_events(db, events, at=now())
        return JSONResponse({"added": added, "repeated": repeated})

    async def api_webhook(request: Request) -> Response:
        provider = request.path_params["provider"]
        body = await _json(request)
        try:
            if provider == "ses":
                events, subscribe_url = webhooks.ses(body, lambda url: _cached(certificates, url, fetch))
                if subscribe_url:
                    fetch(subscribe_url)  # confirms the SNS subscription
            elif provider == "postmark":
                events = webhooks.postmark(body, request.headers, current().api_token)
            elif provider == "generic":
                events = webhooks.generic(body, request.headers, current().api_token)
            else:
                return JSONResponse({"error": "providers: ses, postmark, generic"}, 404)
        except webhooks.WebhookAuthError as exc:
            return JSONResponse({"error": str(exc)}, exc.status)
        except webhooks.WebhookPayloadError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        recorded = 0
        for event in events:
            try:
                email = normalise_email(event.email)
            except ValueError:
                continue
            recorded += subscribers.provider_event(
                db,
                provider,
                event.event_id,
                email=email,
                kind=event.kind,
                hard=event.hard,
                at=now(),
                detail=event.detail,
            )
        return JSONResponse({"events": len(events), "recorded": recorded, "repeated": len(events) - recorded})

    async def healthz(request: Request) -> Response:
        last = records.revisions(db, limit=1)
        error = json.loads(get_meta(db, "last_error") or "null")
        return JSONResponse(
            {
                "status": "degraded" if error else "ok",
                "revision": {
                    "applied": last[0]["revision"] if last else None,
                    "git_commit": last[0]["git_commit"] if last else None,
                },
                "last_error": {
                    "revision": get_meta(db, "last_error_revision"),
                    "since": get_meta(db, "last_error_at"),
                    **error,
                }
                if error
                else None,
            }
        )

    async def metrics_endpoint(request: Request) -> Response:
        if not authorized(request):
            return _unauthorized()
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        writer.start()
        try:
            yield
        finally:
            await writer.stop()

    routes = [
        Route("/u/{token}", unsubscribe, methods=["GET", "POST"]),
        Route("/p/{token}", preferences, methods=["GET", "POST"]),
        Route("/subscribe", subscribe, methods=["POST"]),
        Route("/confirm/{token}", confirm, methods=["GET", "POST"]),
        Route("/o/{token}.gif", pixel, methods=["GET", "HEAD"]),
        Route("/c/{token}", click, methods=["GET", "HEAD"]),
        Route("/v/{token}", view, methods=["GET"]),
        Route("/api/v1/contacts", api_contacts, methods=["POST"]),
        Route("/api/v1/events", api_events, methods=["POST"]),
        Route("/api/v1/webhooks/{provider}", api_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, middleware=[Middleware(SecurityMiddleware), Middleware(metrics.middleware)]
    )
    app.state.writer = writer
    app.state.metrics = metrics
    return app


def _same_origin(request: Request, public_url: str) -> bool:
    """A browser's Origin (or Referer) header must name our public host (or the Host a proxy passed on) when it
    sends one: a page elsewhere cannot post our forms (with the CSRF field, the second guard)."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return True
    ours = {urlsplit(public_url).netloc, request.headers.get("host", ""), urlsplit(str(request.url)).netloc}
    return urlsplit(origin).netloc in ours - {""}


def _too_many(wait: int) -> Response:
    return PlainTextResponse("too many requests; try again later\n", 429, headers={"Retry-After": str(wait)})


def _unauthorized() -> Response:
    return JSONResponse({"error": "a valid bearer token is required"}, 401, headers={"WWW-Authenticate": "Bearer"})


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        return None


def _cached(cache: dict[str, bytes], url: str, fetch: Callable[[str], bytes]) -> bytes:
    if url not in cache:
        cache[url] = fetch(url)
    return cache[url]
