"""The OpenAPI 3 description of every route of the web service, served at `/api/v1/openapi.json`.

Written by hand, beside the route table it describes (tests/test_api_fuzz.py checks that both name the same paths
and methods, and fuzzes every operation from it). docs/web.md says in prose what each route does.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from reconciler.spec.contact import FREQUENCIES

TOKEN = {"name": "token", "in": "path", "required": True, "schema": {"type": "string"}, "description": "a link token"}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}


def _answers(*codes: int) -> dict[str, Any]:
    words = {
        200: "done",
        302: "redirect to the signed destination",
        303: "saved; back to the page",
        400: "a body that is not what this route reads",
        401: "no or wrong credentials",
        403: "refused: another site's form, an expired form, a signature that does not verify; a plan token that is "
        "the API token",
        404: "an invalid link token, or no such provider",
        413: "a body over 1 MB (an archive: over 20 MB unpacked, or over 5,000 members)",
        422: "values that are refused; nothing was written",
        429: "too many requests (or plans at once); Retry-After says when to try again",
        503: "degraded: the body lists what an operator should act on",
    }
    return {str(code): {"description": words[code]} for code in codes}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _form(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {"content": {"application/x-www-form-urlencoded": {"schema": schema}}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _one_or_many(name: str) -> dict[str, Any]:
    item = {"$ref": f"#/components/schemas/{name}"}
    return {"oneOf": [item, {"type": "array", "items": item}]}


CONTACT = {
    "type": "object",
    "required": ["email"],
    "properties": {
        "email": {"type": "string", "format": "email"},
        "first_name": {"type": "string"},
        "last_name": {"type": "string"},
        "timezone": {"type": "string", "example": "Europe/Warsaw"},
        "locale": {"type": "string", "example": "en-GB"},
        "country": {"type": "string", "example": "PL"},
        "tags": {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]},
        "created_at": {"type": "string", "format": "date-time"},
        "lists": {"type": "array", "items": {"type": "string"}, "description": "lists to subscribe to"},
        "consent": {"type": "string", "description": "the wording the person agreed to, or its version"},
        "preconfirmed": {"type": "boolean", "description": "confirmed elsewhere: no confirmation for double opt-in"},
    },
    "additionalProperties": {"description": "custom fields declared as Field documents, by name"},
}
EVENT = {
    "type": "object",
    "required": ["email", "type"],
    "properties": {
        "email": {"type": "string", "format": "email"},
        "type": {"type": "string", "maxLength": 200},
        "occurred_at": {"type": "string", "format": "date-time"},
        "properties": {"type": "object"},
        "id": {"oneOf": [{"type": "string", "maxLength": 200}, {"type": "integer"}]},
    },
}


def _pages() -> dict[str, Any]:
    """The routes links in emails and the subscribe form lead to."""
    form_lists = {"type": "array", "items": {"type": "string"}}
    return {
        "/u/{token}": {
            "parameters": [TOKEN],
            "get": {"summary": "The unsubscribe page", "responses": _answers(200, 404)},
            "post": {
                "summary": "RFC 8058 one-click unsubscribe",
                "requestBody": _form({"List-Unsubscribe": {"type": "string", "enum": ["One-Click"]}}),
                "responses": _answers(200, 400, 404, 413),
            },
        },
        "/p/{token}": {
            "parameters": [TOKEN],
            "get": {"summary": "The preference page", "responses": _answers(200, 404)},
            "post": {
                "summary": "Save preferences (needs the page's CSRF field)",
                "requestBody": _form(
                    {
                        "csrf": {"type": "string"},
                        "list": form_lists,
                        "frequency": {"type": "string", "enum": ["", *FREQUENCIES]},
                        "action": {"type": "string", "enum": ["save", "unsubscribe_all"]},
                    }
                ),
                "responses": _answers(303, 403, 404, 413),
            },
        },
        "/subscribe": {
            "post": {
                "summary": "The subscribe form (double opt-in lists get a confirmation email)",
                "requestBody": _form(
                    {
                        "email": {"type": "string"},
                        "first_name": {"type": "string"},
                        "list": form_lists,
                        "consent": {"type": "string"},
                        "website": {"type": "string", "description": "a honeypot people never fill in"},
                    },
                    ["email"],
                ),
                "responses": _answers(200, 413, 422, 429),
            }
        },
        "/confirm/{token}": {
            "parameters": [TOKEN],
            "get": {"summary": "The confirmation page", "responses": _answers(200, 404)},
            "post": {"summary": "Confirm a double opt-in subscription", "responses": _answers(200, 403, 404)},
        },
        "/v/{token}": {"parameters": [TOKEN], "get": {"summary": "View online", "responses": _answers(200, 404)}},
        "/o/{token}.gif": {
            "parameters": [TOKEN],
            "get": {"summary": "The open pixel", "responses": _answers(200)},
            "head": {"summary": "The open pixel (a machine)", "responses": _answers(200)},
        },
        "/c/{token}": {
            "parameters": [TOKEN, {"name": "u", "in": "query", "required": True, "schema": {"type": "string"}}],
            "get": {"summary": "The click redirect", "responses": _answers(302, 404)},
            "head": {"summary": "The click redirect (a machine)", "responses": _answers(302, 404)},
        },
    }


def _api() -> dict[str, Any]:
    """The API, the webhooks and what monitoring reads."""
    return {
        "/api/v1/contacts": {
            "post": {
                "summary": "Create or update contacts and subscribe them",
                "security": BEARER,
                "requestBody": _json(_one_or_many("Contact")),
                "responses": _answers(200, 400, 401, 413, 422),
            }
        },
        "/api/v1/events": {
            "post": {
                "summary": "Record custom events",
                "security": BEARER,
                "requestBody": _json(_one_or_many("Event")),
                "responses": _answers(200, 400, 401, 413, 422),
            }
        },
        "/api/v1/webhooks/{provider}": {
            "post": {
                "summary": "Bounces and complaints: Amazon SES (SNS), Postmark, generic (also unsubscribes)",
                "parameters": [
                    {"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "security": [*BEARER, {"basic": []}, {}],
                "requestBody": _json({"oneOf": [{"type": "object"}, {"type": "array"}]}),
                "responses": _answers(200, 400, 401, 403, 404, 413, 422),
            }
        },
        "/api/v1/inbound/{provider}": {
            "post": {
                "summary": "An opt-out by email (List-Unsubscribe's mailto) received by Postmark or Amazon SES (SNS)",
                "parameters": [
                    {"name": "provider", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "security": [{"basic": []}, {}],
                "requestBody": _json({"type": "object"}),
                "responses": _answers(200, 400, 401, 403, 404, 413, 422),
            }
        },
        "/api/v1/campaigns": {
            "get": {
                "summary": "Every campaign that started and every workflow, newest first, with their main figures",
                "security": BEARER,
                "responses": _answers(200, 401),
            }
        },
        "/api/v1/campaigns/{name}/report": {
            "get": {
                "summary": "Every figure of one campaign (as `reconciler report NAME --format json`)",
                "parameters": [NAME],
                "security": BEARER,
                "responses": _answers(200, 401, 404),
            }
        },
        "/api/v1/contacts/{email}": {
            "get": {
                "summary": "Everything held about one person (as `reconciler contacts export`)",
                "parameters": [{"name": "email", "in": "path", "required": True, "schema": {"type": "string"}}],
                "security": BEARER,
                "responses": _answers(200, 401, 404),
            }
        },
        "/healthz": {
            "get": {
                "summary": "Health, the applied revision and what needs an operator (503 when something does)",
                "responses": _answers(200, 503),
            }
        },
        "/livez": {"get": {"summary": "Liveness: the process answers", "responses": _answers(200)}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": BEARER, "responses": _answers(200, 401)}},
        "/api/v1/openapi.json": {"get": {"summary": "This description", "responses": _answers(200)}},
    }


def _plan() -> dict[str, Any]:
    """The plan endpoint, for CI: a workspace in, its plan against the live state out; its own token."""
    return {
        "post": {
            "summary": "The plan of a workspace (a tar of spec/, campaigns/, templates/) against the live state; "
            "changes nothing",
            "parameters": [
                _query("format", {"type": "string", "enum": ["text", "markdown", "json"], "default": "text"}),
                _query("now", {"type": "string", "format": "date-time"}),
                _query("commit", {"type": "string", "pattern": "^[0-9a-f]{4,40}(\\+dirty)?$"}),
                _query("confirm", {"type": "array", "items": {"type": "string"}}),
                _query("count_budget", {"type": "number", "minimum": 0, "maximum": 60, "default": 60}),
            ],
            "security": [{"plan": []}],
            "requestBody": {
                "required": True,
                "content": {
                    media: {"schema": {"type": "string", "format": "binary"}}
                    for media in ("application/gzip", "application/x-tar")
                },
            },
            "responses": _answers(200, 400, 401, 403, 413, 422, 429),
        }
    }


def _dashboard() -> dict[str, Any]:
    """The read-only dashboard: HTML pages behind a session cookie that the sign-in form sets."""
    return {
        "/dashboard": {
            "get": {"summary": "Campaigns and workflows (or a redirect to sign in)", "responses": _answers(200, 303)}
        },
        "/dashboard/sign-in": {
            "get": {"summary": "The sign-in form", "responses": _answers(200)},
            "post": {
                "summary": "Sign in with the API token; sets the session cookie",
                "requestBody": _form({"token": {"type": "string"}}, ["token"]),
                "responses": _answers(303, 401, 403, 413, 429),
            },
        },
        "/dashboard/sign-out": {"post": {"summary": "End the session", "responses": _answers(303)}},
        "/dashboard/{kind}/{name}": {
            "get": {
                "summary": "A campaign's or a workflow's report (kind: campaigns or workflows)",
                "parameters": [
                    {"name": "kind", "in": "path", "required": True, "schema": {"type": "string"}},
                    NAME,
                ],
                "responses": _answers(200, 303, 404),
            }
        },
    }


def _limited(paths: dict[str, Any]) -> dict[str, Any]:
    """Every route behind the API token answers 429 to an address that sent too many wrong tokens."""
    for operations in paths.values():
        for operation in operations.values():
            if isinstance(operation, dict) and operation.get("security") == BEARER:
                operation["responses"].setdefault("429", _answers(429)["429"])
    return paths


def description() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "reconciler web service", "version": "1", "description": "docs/web.md describes it in prose"},
        "paths": _limited({**_pages(), **_api(), "/api/v1/plan": _plan(), **_dashboard()}),
        "components": {
            "schemas": {"Contact": CONTACT, "Event": EVENT},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "RECONCILER_API_TOKEN"},
                "basic": {"type": "http", "scheme": "basic", "description": "Postmark: the password is the token"},
                "plan": {"type": "http", "scheme": "bearer", "description": "RECONCILER_PLAN_TOKEN: plans only"},
            },
        },
    }


async def openapi(request: Request) -> Response:
    """GET /api/v1/openapi.json: this description (open, like /healthz: it holds no data)."""
    return JSONResponse(description())
