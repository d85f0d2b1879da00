"""The API: contacts and events in (bearer token), `/healthz` (open) and `/metrics` (token).

A request that has anything wrong writes nothing: every item is checked first, and the answer lists each bad one
with its index.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from reconciler.audience import blocking_for
from reconciler.clock import iso, parse_instant
from reconciler.rows import RowParser, normalise_email
from reconciler.spec.documents import MailingList
from reconciler.state import records, subscribers
from reconciler.state import settings as runtime_settings
from reconciler.state.contacts import ContactRow, finish_import, import_batch, start_import
from reconciler.state.engine import unavailable_errors
from reconciler.state.postgres import StateDatabase
from reconciler.status import state_problems
from reconciler.strictjson import JsonInputError
from reconciler.web.context import context, ip
from reconciler.web.webhooks import WebhookAuthError, check_bearer, json_refused, read_json


async def authorized(request: Request, *, plan: bool = False) -> bool:
    """Whether the request carries the API token (`plan`: the plan token, which opens the plan endpoint only)."""
    site = await context(request).site()
    try:
        check_bearer(request.headers, site.plan_token if plan else site.api_token)
    except WebhookAuthError:
        return False
    return True


def unauthorized() -> Response:
    return JSONResponse({"error": "a valid bearer token is required"}, 401, headers={"WWW-Authenticate": "Bearer"})


async def refused(request: Request, *, plan: bool = False) -> Response | None:
    """None when the request carries the API token (`plan`: the plan token); else 401, or 429 once its address sent
    too many wrong ones (then even the right token waits: a guesser must not learn when it found it); wrong plan
    tokens and wrong API tokens are counted apart. A wrong token is counted in the same step that checks the limit
    (one transaction where daemons share it), so wrong tokens sent all at once cannot all pass a look made before
    any was counted; a right one only looks."""
    web, who = context(request), ip(request) or "?"
    limits = web.limits
    limit = limits.wrong_plan_tokens if plan else limits.wrong_tokens  # a CI runner's stale plan token: only plans
    right = await authorized(request, plan=plan)
    wait = await limit.retry_after(who, count=not right)
    if wait:
        return JSONResponse(
            {"error": f"too many requests without the right token; try again in {wait} s"},
            429,
            headers={"Retry-After": str(wait)},
        )
    return None if right else unauthorized()


async def authorized_json(request: Request) -> object:
    """The request's JSON body, or the answer to send instead: 401 without a valid token, 400 for a body that is
    not strict JSON (the check of the token comes first, so a stranger learns nothing about what the API reads)."""
    if (answer := await refused(request)) is not None:
        return answer
    try:
        return await read_json(request)
    except JsonInputError as exc:
        return json_refused(exc)


async def contacts(request: Request) -> Response:
    """POST /api/v1/contacts: upsert one contact or a list of them (fields, `lists` to subscribe to, `consent`,
    `preconfirmed` for double opt-in lists)."""
    body = await authorized_json(request)
    if isinstance(body, Response):
        return body
    web = context(request)
    status, answer = await web.write(_import_contacts, body if isinstance(body, list) else [body], at=web.now())
    return JSONResponse(answer, status)


@dataclass(frozen=True)
class _Wanted:
    """One contact of a request, checked: its row, the lists it asks for, and how it consented."""

    row: ContactRow
    lists: tuple[str, ...]
    consent: str | None
    preconfirmed: bool


def _wanted(item: Any, parser: RowParser, lists: Mapping[str, MailingList]) -> _Wanted:
    if not isinstance(item, dict):
        raise ValueError("a contact is a JSON object")
    wanted = item.get("lists") or []
    if not isinstance(wanted, list) or not all(isinstance(name, str) for name in wanted):
        raise ValueError('lists: expected a list of list names, e.g. ["newsletter"]')
    unknown = [name for name in wanted if name not in lists]
    if unknown:
        raise ValueError(f"lists: unknown lists: {', '.join(unknown)}")
    consent = item.get("consent")
    if consent is not None and not isinstance(consent, str):
        raise ValueError("consent: expected text (the wording the person agreed to, or its version)")
    preconfirmed = item.get("preconfirmed", False)
    if not isinstance(preconfirmed, bool):
        raise ValueError("preconfirmed: expected true or false")
    fields = {k: v for k, v in item.items() if k not in ("lists", "consent", "preconfirmed")}
    return _Wanted(parser.parse(fields), tuple(wanted), consent or None, preconfirmed)


def _import_contacts(db: StateDatabase, items: list[Any], *, at: str) -> tuple[int, dict[str, Any]]:
    lists = records.lists(db)
    parser = RowParser(records.field_types(db), timezone=runtime_settings.load(db).settings.timezone)
    wanted: list[_Wanted] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            wanted.append(_wanted(item, parser, lists))
        except ValueError as exc:
            errors.append({"index": index, "error": str(exc)})
    if errors:
        return 422, {"error": "nothing was written", "problems": errors}
    import_id = start_import(db, file="api:contacts", at=at)
    totals = {"created": 0, "updated": 0, "subscribed": 0, "pending": 0}
    for one in wanted:
        double = [n for n in one.lists if lists[n].opt_in == "double" and not one.preconfirmed]
        at_once = [n for n in one.lists if n not in double]
        confirmed = [n for n in at_once if lists[n].opt_in == "double"]
        result = import_batch(
            db,
            [one.row],
            import_id=import_id,
            at=at,
            source="api",
            lists=[(n, blocking_for(lists, [n])) for n in at_once],
            consent_text=one.consent,
            preconfirmed=confirmed,
        )
        totals["created"] += result.created
        totals["updated"] += result.updated
        totals["subscribed"] += result.subscribed
        if double:
            pending = subscribers.request_subscription(
                db, one.row.email, [(n, True) for n in double], at=at, ip=None, text=one.consent, source="api"
            )
            totals["pending"] += len(pending)
    created, updated = totals["created"], totals["updated"]
    finish_import(
        db, import_id, at=at, rows=len(wanted), created=created, updated=updated, rejected=0, file="api:contacts"
    )
    return 200, totals


async def events(request: Request) -> Response:
    """POST /api/v1/events: custom events (`email`, `type`, `occurred_at`, `properties`, `id`) that feed segments."""
    body = await authorized_json(request)
    if isinstance(body, Response):
        return body
    web = context(request)
    items = body if isinstance(body, list) else [body]
    found, errors = [], []
    for index, item in enumerate(items):
        try:
            found.append(_event(item, now=web.now()))
        except ValueError as exc:
            errors.append({"index": index, "error": str(exc)})
    if errors:
        return JSONResponse({"error": "nothing was written", "problems": errors}, 422)
    added, repeated = await web.write(subscribers.insert_events, found, at=web.now())
    return JSONResponse({"added": added, "repeated": repeated})


MAX_TEXT = 200
"""Characters of an event's type and id."""

FUTURE_SLACK = timedelta(hours=24)
"""How far ahead of the server's clock an event's occurred_at may be (clocks that are off, time zones got wrong)."""


def _event(item: Any, *, now: str) -> tuple[str, str, str, dict[str, Any], str | None]:
    """One event of a request as (email, type, occurred_at, properties, id), or a ValueError naming the key."""
    if not isinstance(item, dict):
        raise ValueError("an event is an object with email and type")
    kind = item.get("type")
    if not isinstance(kind, str) or not kind.strip() or len(kind) > MAX_TEXT or "\x00" in kind:
        raise ValueError(f"type: expected the event's type as text (at most {MAX_TEXT} characters)")
    when = _occurred_at(item.get("occurred_at"), now=now)
    properties = item.get("properties")
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        raise ValueError("properties: expected an object")
    if _holds_nul(properties):
        raise ValueError("properties: no key or text may hold a NUL character (\\u0000)")
    external = item.get("id")
    if isinstance(external, bool) or not isinstance(external, str | int | None):
        raise ValueError("id: expected text or a whole number")
    if external is not None and (len(str(external)) > MAX_TEXT or "\x00" in str(external)):
        raise ValueError(f"id: at most {MAX_TEXT} characters, no NUL")
    try:
        email = normalise_email(item.get("email", ""))
    except ValueError as exc:
        raise ValueError(f"email: {exc}") from None
    return email, kind, when, properties, None if external is None else str(external)


def _holds_nul(value: Any) -> bool:
    """Whether a NUL character is in any key or text of `value`: PostgreSQL's JSON cannot hold one, so an event
    carrying it is refused on both engines, before anything is stored."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


def _occurred_at(value: Any, *, now: str) -> str:
    """When an event happened, as stored: `now` when not given; refused beyond `FUTURE_SLACK` after `now` (one such
    event would count as recent in every "within" condition, and end every later run its `exit_when` names)."""
    if value is None:
        return now
    if not isinstance(value, str):
        raise ValueError("occurred_at: expected a date-time as text, e.g. 2026-11-24T09:00:00Z")
    try:
        when = parse_instant(value)
    except ValueError as exc:
        raise ValueError(f"occurred_at: {exc}") from None
    if when > parse_instant(now) + FUTURE_SLACK:
        raise ValueError(
            f"occurred_at is more than 24 hours in the future ({value}; the server's clock says {now}); "
            "send the time the event happened, with its offset"
        )
    return iso(when)


async def healthz(request: Request) -> Response:
    """GET /healthz: "ok" (200), or "degraded" (503) with each problem an operator should act on: passes failing,
    a relay that cannot be reached, messages that cannot be prepared, low disk space, a refused revision, campaigns
    that are not Ready, a state database that cannot be used. Point alerting at it; a load balancer wants /livez."""
    web = context(request)
    try:
        body = await web.read(_health)
    except unavailable_errors(web.pool.location) as exc:  # the daemon's own view still says what it knows
        problem = f"the state database cannot be used now: {' '.join(str(exc).split())}"
        body = {"revision": None, "last_error": None, "problems": [problem]}
    if web.health is not None:
        body["problems"] = list(web.health.report().problems) + body["problems"]
    status = "degraded" if body["problems"] else "ok"
    return JSONResponse({"status": status, **body}, 503 if status == "degraded" else 200)


async def livez(request: Request) -> Response:
    """GET /livez: 200 while the process serves requests, whatever else is wrong (for load balancers)."""
    return JSONResponse({"status": "live"})


def _health(db: StateDatabase) -> dict[str, Any]:
    last = records.revisions(db, limit=1)
    refused = records.refused_revision(db)
    return {
        "revision": {
            "applied": last[0]["revision"] if last else None,
            "git_commit": last[0]["git_commit"] if last else None,
        },
        "last_error": refused.as_dict() if refused else None,
        "problems": state_problems(db),
    }


async def metrics(request: Request) -> Response:
    """GET /metrics: Prometheus' text format (read from the ledger at scrape time)."""
    if (answer := await refused(request)) is not None:
        return answer
    metrics = request.app.state.metrics
    loop = asyncio.get_running_loop()
    metrics.watch_loop("web", lambda: loop)
    body, content_type = await anyio.to_thread.run_sync(metrics.render)
    return Response(body, media_type=content_type)
