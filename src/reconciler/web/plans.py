"""`POST /api/v1/plan`: the plan of a pull request's workspace against the live state, for CI.

CI has the files but must not have the state (contacts and consent are personal data), so it sends the files to
the daemon: a tar of the workspace (`archive`, checked member by member before anything is written) with the plan
token, which opens this endpoint and nothing else. The daemon unpacks it into a folder of its own, checks it as
`validate` does, and plans it as `reconciler plan` does, inside `state.db.snapshot`: one read transaction on a
connection that cannot write. The answer holds counts and names of documents, never a contact.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from reconciler.apply import plan_for
from reconciler.archive import ArchiveError, unpack
from reconciler.check import validate_workspace
from reconciler.clock import parse_instant
from reconciler.load import display_path
from reconciler.plan import FORMATS, Plan, render, render_invalid
from reconciler.remote_plan import CHANGES_HEADER, ERRORS_HEADER, MAX_COUNT_BUDGET, PLAN_TOKEN_ENV
from reconciler.spec import DesiredState
from reconciler.state.db import snapshot
from reconciler.state.postgres import StateDatabase
from reconciler.web.api import refused
from reconciler.web.context import PLANS_AT_ONCE, context, ip

log = logging.getLogger(__name__)

MEDIA_TYPES = {
    "text": "text/plain; charset=utf-8",
    "markdown": "text/markdown; charset=utf-8",
    "json": "application/json",
}
_COMMIT = re.compile(r"[0-9a-f]{4,40}(\+dirty)?")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,99}")


@dataclass(frozen=True)
class PlanOptions:
    """What the query string asks for, checked."""

    fmt: str
    now: datetime | None
    git_commit: str | None
    confirm: tuple[str, ...]
    budget: float


def options(query: QueryParams) -> PlanOptions:
    """The request's options, or a ValueError naming the parameter and what it takes."""
    fmt = query.get("format", "text")
    if fmt not in FORMATS:
        raise ValueError(f"format: one of {', '.join(FORMATS)}")
    now = None
    if "now" in query:
        try:
            now = parse_instant(query["now"])
        except ValueError as exc:
            raise ValueError(f"now: {exc}") from None
    commit = query.get("commit") or None
    if commit is not None and not _COMMIT.fullmatch(commit):
        raise ValueError("commit: a git commit's hexadecimal id (4 to 40 digits), with +dirty or not")
    confirm = tuple(query.getlist("confirm"))
    if len(confirm) > 100 or not all(_NAME.fullmatch(name) for name in confirm):
        raise ValueError("confirm: campaign names (lowercase letters, digits, - and _), at most 100")
    try:
        budget = float(query.get("count_budget", MAX_COUNT_BUDGET))
    except ValueError:
        raise ValueError("count_budget: seconds, a number") from None
    if not 0 <= budget <= MAX_COUNT_BUDGET:
        raise ValueError(f"count_budget: from 0 to {MAX_COUNT_BUDGET:.0f} seconds")
    return PlanOptions(fmt, now, commit, confirm, budget)


async def plan(request: Request) -> Response:
    """POST /api/v1/plan: the body is a tar (gzip-compressed or not) of the workspace; the answer is its plan
    against the state, with headers saying how many errors it has and whether it changes anything."""
    web = context(request)
    if (await web.site()).plan_token_is_api_token:
        if (answer := await refused(request)) is not None:
            return answer
        log.warning("a plan was refused: %s is the API token; give it a value of its own", PLAN_TOKEN_ENV)
        return JSONResponse(
            {
                "error": f"the daemon's {PLAN_TOKEN_ENV} is its API token, so plans are off: give {PLAN_TOKEN_ENV} "
                "a value of its own (CI must hold a token that can plan and do nothing else)"
            },
            403,
        )
    if not (await web.site()).plan_token:
        return JSONResponse(
            {"error": f"plans are off on this daemon: {PLAN_TOKEN_ENV} is not set in its environment"}, 403
        )
    if (answer := await refused(request, plan=True)) is not None:
        return answer
    try:
        asked = options(request.query_params)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, 400)
    try:
        web.plans.acquire_nowait()
    except anyio.WouldBlock:
        return JSONResponse(
            {"error": f"the daemon is making {PLANS_AT_ONCE} plans already; try again in a few seconds"},
            429,
            headers={"Retry-After": "10"},
        )
    try:
        return await _answer(request, await request.body(), asked)
    finally:
        web.plans.release()


async def _answer(request: Request, body: bytes, asked: PlanOptions) -> Response:
    web, started = context(request), time.monotonic()
    now = asked.now or parse_instant(web.now())
    with tempfile.TemporaryDirectory(prefix="reconciler-plan-") as folder:
        root = Path(folder)
        try:
            await anyio.to_thread.run_sync(unpack, body, root)
        except ArchiveError as exc:  # named as in the archive, never by the daemon's own folder
            return JSONResponse({"error": str(exc).replace(str(root) + "/", "").replace(str(root), "")}, exc.status)
        desired, problems = await anyio.to_thread.run_sync(validate_workspace, root)
        errors = sum(p.severity == "error" for p in problems)
        if errors:
            text = render_invalid(problems, asked.fmt, revision=desired.revision, git_commit=asked.git_commit)
            changes = False
        else:
            result = await web.read(_plan, desired, asked=asked, now=now)
            text, errors, changes = render(result, asked.fmt), len(result.errors), result.has_changes
        text = text.replace(display_path(root) + "/", "")  # paths as in the workspace: spec/lists.yaml
    log.info(
        "plan of revision %s (commit %s) for %s: %s, %d error(s), in %.1f s",
        desired.revision,
        asked.git_commit or "unknown",
        ip(request) or "?",
        "changes" if changes else "no changes",
        errors,
        time.monotonic() - started,
    )
    headers = {ERRORS_HEADER: str(errors), CHANGES_HEADER: "1" if changes else "0"}
    return Response(text, media_type=MEDIA_TYPES[asked.fmt], headers=headers)


def _plan(db: StateDatabase, desired: DesiredState, *, asked: PlanOptions, now: datetime) -> Plan:
    with snapshot(db):
        return plan_for(db, desired, now=now, budget=asked.budget, git_commit=asked.git_commit, confirm=asked.confirm)
