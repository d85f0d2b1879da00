"""The subscriber-facing web service and the API, a Starlette app served inside `reconciler run`.

It only records facts (an unsubscribe, a preference, an open, an event, a bounce) into the state database; the
daemon's next pass sees them. Every link token is checked before anything is read, and every invalid token gets
the same answer, whatever was wrong with it.

Endpoints are plain functions grouped by concern (`pages`, `tracking`, `api`, `reads`, `plans`, `webhooks`,
`inbound`, `dashboard`), registered here and described in `openapi`. They share one `WebContext`; its `read` and
`write` run database work in a worker thread with a connection of its own, so a request waiting for the write lock
never stalls the event loop that the dispatcher and every other request share.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from reconciler.clock import Clock
from reconciler.health import Health
from reconciler.state.engine import connection_pool, place_of, unavailable_errors
from reconciler.state.location import StateLocation
from reconciler.web import api, dashboard, inbound, limits, openapi, pages, plans, reads, tracking, webhooks
from reconciler.web.context import WebContext, fetch_url
from reconciler.web.metrics import Metrics
from reconciler.web.security import SecurityMiddleware

log = logging.getLogger(__name__)


def create_app(
    state: StateLocation | Path,
    *,
    clock: Clock,
    root: Path | None = None,
    fetch: Callable[[str], bytes] = fetch_url,
    metrics: Metrics | None = None,
    health: Health | None = None,
) -> Starlette:
    """The app over the state database at `state` (a SQLite file or a PostgreSQL database; connections of its
    own). `fetch` gets SNS certificates and subscription confirmation URLs."""
    pool = connection_pool(state)
    web = WebContext(pool, clock, root or Path("."), fetch, health)
    if place_of(state).is_postgres:  # daemons behind one load balancer count together; SQLite's stay in memory
        web.limits = limits.in_database(web)
    metrics = metrics or Metrics(pool)
    writer = tracking.EngagementWriter(web)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        writer.start()
        try:
            yield
        finally:
            await writer.stop()
            pool.close()

    routes = [
        Route("/u/{token}", pages.unsubscribe, methods=["GET", "POST"]),
        Route("/p/{token}", pages.preferences, methods=["GET", "POST"]),
        Route("/subscribe", pages.subscribe, methods=["POST"]),
        Route("/confirm/{token}", pages.confirm, methods=["GET", "POST"]),
        Route("/v/{token}", pages.view, methods=["GET"]),
        Route("/o/{token}.gif", tracking.pixel, methods=["GET", "HEAD"]),
        Route("/c/{token}", tracking.click, methods=["GET", "HEAD"]),
        Route("/api/v1/contacts", api.contacts, methods=["POST"]),
        Route("/api/v1/contacts/{email}", reads.contact, methods=["GET"]),
        Route("/api/v1/campaigns", reads.campaigns, methods=["GET"]),
        Route("/api/v1/campaigns/{name}/report", reads.campaign_report, methods=["GET"]),
        Route("/dashboard", dashboard.overview, methods=["GET"]),
        Route("/dashboard/sign-in", dashboard.sign_in, methods=["GET", "POST"]),
        Route("/dashboard/sign-out", dashboard.sign_out, methods=["POST"]),
        Route("/dashboard/{kind}/{name}", dashboard.report, methods=["GET"]),
        Route("/api/v1/events", api.events, methods=["POST"]),
        Route("/api/v1/plan", plans.plan, methods=["POST"]),
        Route("/api/v1/webhooks/{provider}", webhooks.endpoint, methods=["POST"]),
        Route("/api/v1/inbound/{provider}", inbound.endpoint, methods=["POST"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/livez", api.livez, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/api/v1/openapi.json", openapi.openapi, methods=["GET"]),
    ]
    middleware = [Middleware(SecurityMiddleware), Middleware(metrics.middleware)]
    handlers = dict.fromkeys(unavailable_errors(place_of(state)), _busy)
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware, exception_handlers=handlers)
    app.state.context = web
    app.state.writer = writer
    app.state.metrics = metrics
    return app


async def _busy(request: Request, exc: Exception) -> Response:
    """The state database cannot take the request now (the write lock held too long, a full disk, a PostgreSQL
    server that cannot be reached): nothing was changed; the client may try again."""
    log.warning("%s %s: the state database is unavailable: %s", request.method, request.url.path, exc)
    return PlainTextResponse("the service is busy; try again in a minute\n", 503, headers={"Retry-After": "60"})
