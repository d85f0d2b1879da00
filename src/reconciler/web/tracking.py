"""Opens and clicks: who fetched (a person or a machine), and writing them in batches.

Privacy proxies that fetch every image on delivery (Apple Mail Privacy Protection, Yahoo's and Outlook's
prefetchers), security scanners that follow every link, and HEAD requests are machines: stored apart, they do not
satisfy `opened` / `clicked` conditions. Gmail's image proxy fetches when the reader opens the message: a person
(PRODUCT §4). We go by user agent and method, never by timing alone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

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


class EngagementWriter:
    """Collects opens and clicks and writes them together, every `interval` seconds or `batch` events, so a burst
    of opens costs a few transactions instead of one each (and never waits for the write lock per request)."""

    def __init__(
        self,
        write: Callable[[list[tuple[int, str, bool, str, str | None]]], Any],
        *,
        interval: float = 0.5,
        batch: int = 500,
    ) -> None:
        self.write, self.interval, self.batch = write, interval, batch
        self.pending: list[tuple[int, str, bool, str, str | None]] = []
        self.full = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def add(self, row_id: int, action: str, machine: bool, at: str, detail: str | None = None) -> None:
        self.pending.append((row_id, action, machine, at, detail))
        if len(self.pending) >= self.batch:
            self.full.set()

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        try:
            self.write(pending)
        except Exception:  # the database is busy or gone: keep the events for the next flush
            log.exception("could not record %d opens/clicks; trying again", len(pending))
            self.pending = pending + self.pending

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.full.wait(), timeout=self.interval)
            self.full.clear()
            self.flush()

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.flush()
