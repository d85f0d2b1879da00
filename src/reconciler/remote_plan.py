"""`reconciler plan --remote URL`: this workspace's plan, made by a running daemon against its state.

The state holds personal data and stays on the server; CI sends the files instead (`archive.pack`) to the daemon's
`POST /api/v1/plan` with the plan token, a token that can plan and do nothing else. The answer is the plan as the
daemon rendered it, with its number of errors and whether it has changes in headers, so the command exits as a
local plan does.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from reconciler.archive import MAX_PACKED, pack
from reconciler.errors import ReconcilerError, SpecErrors, UsageError

PLAN_TOKEN_ENV = "RECONCILER_PLAN_TOKEN"
"""The environment variable holding the plan token, on the daemon and where `plan --remote` runs."""
PLAN_PATH = "/api/v1/plan"
ERRORS_HEADER = "reconciler-plan-errors"
"""How many errors the plan has (the command exits 1 when any)."""
CHANGES_HEADER = "reconciler-plan-changes"
"""1 when the plan has changes, else 0 (for --detailed-exitcode)."""
MAX_COUNT_BUDGET = 60.0
"""Seconds a remote plan may spend counting audiences and segment sizes (as `reconciler plan`'s default)."""
WAIT_BEYOND_BUDGET = 120.0
"""Seconds the command waits for the answer beyond the counting budget (reading and checking the workspace)."""
LOOPBACK = {"localhost", "127.0.0.1", "::1"}


@dataclass(frozen=True)
class RemotePlan:
    """The daemon's answer: the plan in the format asked for, and what decides the exit code."""

    text: str
    errors: int
    changes: bool


def plan_url(url: str) -> str:
    """The plan endpoint of the daemon at `url`; plain http only to this machine (the token must not cross a
    network in clear)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--remote {url!r}: give the daemon's address, e.g. https://mail.example.com")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK:
        raise UsageError(
            f"--remote {url!r}: the plan token would cross the network in clear; use https:// (http:// is taken for "
            "localhost only)"
        )
    return url.rstrip("/") if parts.path.rstrip("/").endswith(PLAN_PATH) else url.rstrip("/") + PLAN_PATH


BUSY_PATIENCE = 120.0
"""Seconds `plan --remote` waits, in all, for a daemon busy with other plans before it gives up."""


def _busy_for(answer: httpx.Response) -> float | None:
    """How long to wait before asking again, when the daemon is busy with other plans (a short Retry-After); None
    for any other answer, a refused token's long wait among them."""
    if answer.status_code != 429:
        return None
    try:
        pause = float(answer.headers.get("retry-after", ""))
    except ValueError:
        return None
    return pause if 0 < pause <= 30 else None


def request_plan(
    root: Path,
    url: str,
    *,
    fmt: str,
    now: str | None,
    git_commit: str | None,
    confirm: tuple[str, ...],
    budget: float,
) -> RemotePlan:
    """Send the workspace at `root` to the daemon at `url` and return its plan. Raises SpecErrors for files that
    cannot be sent, UsageError without a token, and ReconcilerError saying what to do when the daemon refuses."""
    endpoint = plan_url(url)
    token = os.environ.get(PLAN_TOKEN_ENV)
    if not token:
        raise UsageError(f"--remote needs the daemon's plan token in {PLAN_TOKEN_ENV}")
    body, problems = pack(root)
    if problems:
        raise SpecErrors(problems)
    if len(body) > MAX_PACKED:
        raise ReconcilerError(
            f"the workspace packs to {len(body):,} bytes; the plan endpoint takes at most {MAX_PACKED:,}"
        )
    params: list[tuple[str, str | int | float | bool | None]] = [("format", fmt), ("count_budget", budget)]
    params += [("now", now)] if now else []
    params += [("commit", git_commit)] if git_commit else []
    params += [("confirm", name) for name in confirm]
    headers = {"authorization": f"Bearer {token}", "content-type": "application/gzip"}
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its line per request would come before the plan
    waited = 0.0
    while True:
        try:
            answer = httpx.post(
                endpoint, content=body, params=params, headers=headers, timeout=budget + WAIT_BEYOND_BUDGET
            )
        except httpx.HTTPError as exc:
            raise ReconcilerError(
                f"cannot reach {endpoint}: {exc or type(exc).__name__} (is the daemon running there?)"
            ) from None
        pause = _busy_for(answer)
        if pause is None or waited + pause > BUSY_PATIENCE:
            break
        time.sleep(pause)  # the daemon is making other plans (another pull request's): wait as it asks
        waited += pause
    if answer.status_code == 200:
        return RemotePlan(
            answer.text, int(answer.headers.get(ERRORS_HEADER, "0")), answer.headers.get(CHANGES_HEADER) == "1"
        )
    raise ReconcilerError(_refusal(endpoint, answer))


def _refusal(endpoint: str, answer: httpx.Response) -> str:
    try:
        said = str(answer.json().get("error", ""))
    except ValueError:
        said = answer.text.strip()[:300]
    status = answer.status_code
    if status == 401:
        return f"{endpoint} refused the plan token: set {PLAN_TOKEN_ENV} to the plan token in the daemon's environment"
    if status == 404:
        return f"{endpoint} has no plan endpoint: is the URL the daemon's address, and the daemon this version?"
    if status == 429:
        return f"{endpoint}: {said or 'too many requests'} (Retry-After: {answer.headers.get('retry-after', '?')} s)"
    if status in (400, 403, 413, 422):
        return f"{endpoint} refused the request ({status}): {said}"
    return f"{endpoint} answered {status}: {said or answer.reason_phrase}"
