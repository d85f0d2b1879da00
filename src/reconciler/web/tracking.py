"""Opens and clicks: who fetched (a person or a machine), and writing them in batches.

Privacy proxies that fetch every image on delivery (Apple Mail Privacy Protection, Yahoo's and Outlook's
prefetchers), security scanners that follow every link, and HEAD requests are machines: stored apart, they do not
satisfy `opened` / `clicked` conditions. Gmail's image proxy fetches when the reader opens the message: a person.
We go by user agent and method, never by timing alone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from reconciler.state import subscribers
from reconciler.state.engagement import Engagement
from reconciler.web.context import WebContext, context
from reconciler.web.pages import invalid

log = logging.getLogger(__name__)

PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_MACHINE = re.compile(
    r"bot\b|crawler|spider|scanner|preview|prefetch|python-requests|python-urllib|curl/|wget/|go-http-client|"
    r"java/|okhttp|libwww|httpclient|headless|phantomjs|barracuda|mimecast|proofpoint|symantec|messagelabs|"
    r"trendmicro|sophos|forcepoint|fireeye|ironport|safelinks|microsoft office|ms-office|yahoomailproxy|"
    r"outlook-ios-android|ymailnorrin",
    re.I,
)
_APPLE_PROXY = re.compile(
    r"^Mozilla/5\.0 \(Macintosh; Intel Mac OS X 10_\d+_\d+\) AppleWebKit/605\.1\.15 \(KHTML, like Gecko\)$"
)
_HUMAN_PROXIES = ("googleimageproxy",)


def is_machine(user_agent: str, method: str) -> bool:
    """A request no person made: HEAD, no user agent, a known scanner or prefetcher, or Apple's privacy proxy (whose
    agent is Safari's without the version and browser parts)."""
    if method.upper() == "HEAD" or not user_agent.strip():
        return True
    lowered = user_agent.lower()
    if any(proxy in lowered for proxy in _HUMAN_PROXIES):
        return False
    return bool(_MACHINE.search(user_agent) or _APPLE_PROXY.match(user_agent.strip()))


async def _country(request: Request, machine: bool) -> str | None:
    """Where a person's open or click came from; none for machines, nor for an image proxy fetching for a person
    (the address is the proxy's, not theirs)."""
    agent = request.headers.get("user-agent", "").lower()
    if machine or any(proxy in agent for proxy in _HUMAN_PROXIES):
        return None
    return await context(request).country(request)


class EngagementWriter:
    """Collects opens and clicks and writes them together, every `interval` seconds or `batch` events, so a burst
    of opens costs a few transactions instead of one each, and no request ever waits for the write lock."""

    def __init__(self, web: WebContext, *, interval: float = 0.5, batch: int = 500) -> None:
        self.web, self.interval, self.batch = web, interval, batch
        self.pending: list[Engagement] = []
        self.full = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def add(self, fact: Engagement) -> None:
        self.pending.append(fact)
        if len(self.pending) >= self.batch:
            self.full.set()

    async def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        try:
            await self.web.write(subscribers.record_engagement, pending)
        except Exception:  # the database is busy or gone: keep the events for the next flush
            log.exception("could not record %d opens/clicks; trying again", len(pending))
            self.pending = pending + self.pending

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.full.wait(), timeout=self.interval)
            self.full.clear()
            await self.flush()

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.flush()


def writer(request: Request) -> EngagementWriter:
    found: EngagementWriter = request.app.state.writer
    return found


async def pixel(request: Request) -> Response:
    web = context(request)
    row_id = await web.verified("open", request.path_params["token"])
    if row_id is not None:
        machine = is_machine(request.headers.get("user-agent", ""), request.method)
        country = await _country(request, machine)
        writer(request).add(Engagement(row_id, "opened", web.now(), machine=machine, country=country))
    return Response(PIXEL_GIF, media_type="image/gif")


async def click(request: Request) -> Response:
    web = context(request)
    url = request.query_params.get("u", "")
    row_id = await web.verified("click", request.path_params["token"], url)
    if row_id is None or urlsplit(url).scheme not in ("http", "https"):
        return await invalid(request)
    machine = is_machine(request.headers.get("user-agent", ""), request.method)
    country = await _country(request, machine)
    writer(request).add(Engagement(row_id, "clicked", web.now(), machine=machine, detail=url, country=country))
    return RedirectResponse(url, 302)
