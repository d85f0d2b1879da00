"""The API: contacts and events in (bearer token), `/healthz` (open) and `/metrics` (token).

A request that has anything wrong writes nothing: every item is checked first, and the answer lists each bad one
with its index.
"""

from __future__ import annotations

from typing import Any

import anyio
from sqlite_utils import Database
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from reconciler.audience import blocking_for
from reconciler.clock import iso, parse_instant
from reconciler.imports import RowParser, normalise_email
from reconciler.state import records, subscribers
from reconciler.state import settings as runtime_settings
from reconciler.state.campaigns import campaign_records
from reconciler.state.contacts import ContactRow, finish_import, import_batch, start_import
from reconciler.web.context import context
from reconciler.web.webhooks import WebhookAuthError, check_bearer, read_json


async def authorized(request: Request) -> bool:
    try:
        check_bearer(request.headers, (await context(request).site()).api_token)
    except WebhookAuthError:
        return False
    return True


def unauthorized() -> Response:
    return JSONResponse({"error": "a valid bearer token is required"}, 401, headers={"WWW-Authenticate": "Bearer"})


async def contacts(request: Request) -> Response:
    """POST /api/v1/contacts: upsert one contact or a list of them (fields, `lists` to subscribe to, `consent`)."""
    if not await authorized(request):
        return unauthorized()
    web = context(request)
    body = await read_json(request)
    if body is None:
        return JSONResponse({"error": "the body must be JSON: a contact or a list of contacts"}, 400)
    status, answer = await web.write(_import_contacts, body if isinstance(body, list) else [body], at=web.now())
    return JSONResponse(answer, status)


def _import_contacts(db: Database, items: list[Any], *, at: str) -> tuple[int, dict[str, Any]]:
    lists = records.lists(db)
    parser = RowParser(records.field_types(db), timezone=runtime_settings.load(db).settings.timezone)
    rows: list[tuple[ContactRow, tuple[str, ...], Any]] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append({"index": index, "error": "a contact is a JSON object"})
            continue
        wanted = item.get("lists") or []
        unknown = [n for n in wanted if n not in lists]
        if unknown:
            errors.append({"index": index, "error": f"unknown lists: {', '.join(map(str, unknown))}"})
            continue
        try:
            fields = {k: v for k, v in item.items() if k not in ("lists", "consent")}
            rows.append((parser.parse(fields), tuple(wanted), item.get("consent")))
        except ValueError as exc:
            errors.append({"index": index, "error": str(exc)})
    if errors:
        return 422, {"error": "nothing was written", "problems": errors}
    import_id = start_import(db, file="api:contacts", at=at)
    totals = {"created": 0, "updated": 0, "subscribed": 0}
    for row, names, consent in rows:
        result = import_batch(
            db,
            [row],
            import_id=import_id,
            at=at,
            source="api",
            lists=[(n, blocking_for(lists, [n])) for n in names],
            consent_text=str(consent) if consent else None,
        )
        totals["created"] += result.created
        totals["updated"] += result.updated
        totals["subscribed"] += result.subscribed
    created, updated = totals["created"], totals["updated"]
    finish_import(
        db, import_id, at=at, rows=len(rows), created=created, updated=updated, rejected=0, file="api:contacts"
    )
    return 200, totals


async def events(request: Request) -> Response:
    """POST /api/v1/events: custom events (`email`, `type`, `occurred_at`, `properties`, `id`) that feed segments."""
    if not await authorized(request):
        return unauthorized()
    web = context(request)
    body = await read_json(request)
    items = body if isinstance(body, list) else [body]
    found, errors = [], []
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict) or not isinstance(item.get("type"), str) or not item["type"]:
                raise ValueError("an event is an object with email and type")
            occurred = item.get("occurred_at")
            when = iso(parse_instant(occurred)) if occurred else web.now()
            properties = item.get("properties") or {}
            if not isinstance(properties, dict):
                raise ValueError("properties must be an object")
            external = item.get("id")
            email = normalise_email(str(item.get("email", "")))
            found.append((email, item["type"], when, properties, str(external) if external is not None else None))
        except ValueError as exc:
            errors.append({"index": index, "error": str(exc)})
    if errors:
        return JSONResponse({"error": "nothing was written", "problems": errors}, 422)
    added, repeated = await web.write(subscribers.insert_events, found, at=web.now())
    return JSONResponse({"added": added, "repeated": repeated})


async def healthz(request: Request) -> Response:
    """GET /healthz: "ok" (200), or "degraded" (503) with each problem an operator should act on: passes failing,
    a relay that cannot be reached, messages that cannot be prepared, low disk space, a refused revision, campaigns
    that are not Ready. Point alerting at it; a load balancer wants /livez."""
    web = context(request)
    body = await web.read(_health)
    if web.health is not None:
        body["problems"] = list(web.health.report().problems) + body["problems"]
    status = "degraded" if body["problems"] or body["last_error"] else "ok"
    return JSONResponse({"status": status, **body}, 503 if status == "degraded" else 200)


async def livez(request: Request) -> Response:
    """GET /livez: 200 while the process serves requests, whatever else is wrong (for load balancers)."""
    return JSONResponse({"status": "live"})


def _health(db: Database) -> dict[str, Any]:
    last = records.revisions(db, limit=1)
    refused = records.refused_revision(db)
    waiting = [
        f"campaign {record.name} is not ready ({record.reason}): {record.message}"
        for record in campaign_records(db)
        if not record.ready and record.removed_at is None
    ]
    return {
        "revision": {
            "applied": last[0]["revision"] if last else None,
            "git_commit": last[0]["git_commit"] if last else None,
        },
        "last_error": refused.as_dict() if refused else None,
        "problems": waiting,
    }


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus' text format (read from the ledger at scrape time)."""
    if not await authorized(request):
        return unauthorized()
    body, content_type = await anyio.to_thread.run_sync(request.app.state.metrics.render)
    return Response(body, media_type=content_type)
