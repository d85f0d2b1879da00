"""What every endpoint of the web service shares: the state database through worker threads, the clock, the
Settings of the last good revision (with the signing key), and the rate limits (`web.limits`)."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import anyio
from starlette.requests import Request

from reconciler import geoip
from reconciler.clock import Clock, iso
from reconciler.health import Health
from reconciler.pages import PageSet, page_set
from reconciler.remote_plan import PLAN_TOKEN_ENV
from reconciler.spec.documents import MailingList
from reconciler.state import keys, pages, records
from reconciler.state import settings as runtime_settings
from reconciler.state.engine import StatePool
from reconciler.state.postgres import StateDatabase
from reconciler.state.settings import RuntimeSettings
from reconciler.tokens import Purpose, Signer
from reconciler.web.limits import WebLimits, in_memory
from reconciler.web.security import RateLimit

P = ParamSpec("P")
T = TypeVar("T")
SETTINGS_TTL = 5.0
"""Seconds the web service keeps the Settings it read (a new revision shows within this time)."""
PLANS_AT_ONCE = 2
"""Plans of `POST /api/v1/plan` made at the same time; a third request is answered 429 at once."""
DB_THREADS = 8
"""Worker threads for database work of each kind: reads never wait behind writes that wait for the write lock."""


def fetch_url(url: str) -> bytes:
    import httpx

    response = httpx.get(url, timeout=10, follow_redirects=False)
    response.raise_for_status()
    return response.content


CERTIFICATE_FAILURE_TTL = 60.0
"""Seconds a certificate URL that could not be fetched is not tried again."""
MAX_CERTIFICATES = 100


class Certificates:
    """SNS signing certificates by URL: each fetched once and kept; a failure is remembered for
    CERTIFICATE_FAILURE_TTL seconds, and at most 10 new URLs a minute are fetched, so forged messages naming ever new
    AWS-looking URLs cannot make the service fetch without end. Called from worker threads."""

    def __init__(self, fetch: Callable[[str], bytes]) -> None:
        self.fetch = fetch
        self.found: dict[str, bytes] = {}
        self.failed: dict[str, tuple[float, str]] = {}
        self.new_urls = RateLimit(10, 60.0)
        self.lock = threading.Lock()

    def get(self, url: str) -> bytes:
        """The certificate's bytes; raises CertificateUnavailable saying why not."""
        with self.lock:
            if url in self.found:
                return self.found[url]
            failed_at, why = self.failed.get(url, (0.0, ""))
            if time.monotonic() - failed_at < CERTIFICATE_FAILURE_TTL:
                raise CertificateUnavailable(f"{why} (not tried again for {CERTIFICATE_FAILURE_TTL:.0f} s)")
            if self.new_urls.retry_after("new"):
                raise CertificateUnavailable("too many new certificate URLs in a minute; SNS will deliver again")
        try:
            pem = self.fetch(url)
        except Exception as exc:  # any failure to fetch is the same to the caller: nothing verifies
            with self.lock:
                if len(self.failed) >= MAX_CERTIFICATES:
                    self.failed.pop(next(iter(self.failed)))
                self.failed[url] = (time.monotonic(), f"{type(exc).__name__}: {exc}")
            raise CertificateUnavailable(f"{type(exc).__name__}: {exc}") from None
        with self.lock:
            if len(self.found) >= MAX_CERTIFICATES:
                self.found.pop(next(iter(self.found)))
            self.found[url] = pem
        return pem


class CertificateUnavailable(Exception):
    """A signing certificate that could not be had (fetch failed, or too many new URLs)."""


@dataclass
class Site:
    """What the pages need from the last good revision, re-read every SETTINGS_TTL seconds."""

    runtime: RuntimeSettings
    signer: Signer
    api_token: str | None
    plan_token: str | None
    """RECONCILER_PLAN_TOKEN: it opens the plan endpoint and nothing else (None when unset, or when it is the API
    token: then a plan would need the key to everything, which CI must not hold)."""
    plan_token_is_api_token: bool
    lists: dict[str, MailingList]
    """Every list as last applied (removed ones too: a message sent for one can still be unsubscribed from)."""
    read_at: float
    pages: PageSet
    """The page templates: the workspace's own (as last applied) over the built-in ones."""


@dataclass
class WebContext:
    """What every endpoint shares: the database (through worker threads), the clock, the Settings, rate limits."""

    pool: StatePool
    clock: Clock
    root: Path
    fetch: Callable[[str], bytes]
    health: Health | None = None
    """The daemon's view of itself (None when the app runs without a daemon, as in tests of the pages)."""
    readers: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(DB_THREADS))
    writers: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(DB_THREADS))
    limits: WebLimits = field(default_factory=in_memory)
    """The rate limits (subscribe form, wrong tokens, sign-ins) and signed-out sessions: in memory, or in the
    PostgreSQL state shared by every daemon (`create_app` chooses by engine)."""
    plans: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(PLANS_AT_ONCE))
    """Plans being made (each reads every file of a workspace and counts audiences): more at once get 429."""
    site_cache: Site | None = None
    locator: geoip.Locator | None = None

    def __post_init__(self) -> None:
        self.certificates = Certificates(self.fetch)

    async def read(self, fn: Callable[Concatenate[StateDatabase, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(db, ...)`, which only reads, in a worker thread with a connection of its own (reads never wait for
        the write lock in WAL mode, and never queue behind writes here)."""
        call = functools.partial(self._with_db, fn, *args, **kwargs)
        return await anyio.to_thread.run_sync(call, limiter=self.readers)

    async def write(self, fn: Callable[Concatenate[StateDatabase, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(db, ...)`, which writes, in a worker thread with a connection of its own: waiting for the write lock
        stalls neither the event loop nor the reads."""
        call = functools.partial(self._with_db, fn, *args, **kwargs)
        return await anyio.to_thread.run_sync(call, limiter=self.writers)

    def _with_db(self, fn: Callable[Concatenate[StateDatabase, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        with self.pool.connection() as db:
            return fn(db, *args, **kwargs)

    async def site(self) -> Site:
        cached = self.site_cache
        if cached is None or time.monotonic() - cached.read_at > SETTINGS_TTL:
            cached = self.site_cache = await self.read(_read_site)
        return cached

    async def verified(self, purpose: Purpose, token: str, extra: str = "") -> int | None:
        return (await self.site()).signer.verify(purpose, token, extra)

    def now(self) -> str:
        return iso(self.clock.now())

    async def country(self, request: Request) -> str | None:
        """The country the request came from, when a GeoIP database is configured (Settings or environment).

        The lookup is in memory; once a second (`Locator.due`) it also looks at the file, and reads it again when
        it was replaced: that lookup runs in a worker thread, so reading a database of megabytes never stalls the
        event loop."""
        configured = (await self.site()).runtime.settings.tracking.geoip_database
        path = geoip.database_path(self.root, configured)
        if path is None:
            return None
        locator = self.locator
        if locator is None or locator.path != path:
            old, locator = locator, geoip.Locator(path)
            self.locator = locator
            if old is not None:
                await anyio.to_thread.run_sync(old.close)  # waits for a read of the old file in progress
        if locator.due():
            return await anyio.to_thread.run_sync(locator.country, ip(request))
        return locator.country(ip(request))


def _read_site(db: StateDatabase) -> Site:
    runtime = runtime_settings.load(db)
    settings = runtime.settings
    token = os.environ.get(settings.api.token_env)
    plan = os.environ.get(PLAN_TOKEN_ENV) or None
    clash = plan is not None and plan == token
    signer = keys.signer_for(db, settings.signing_key_env)
    overrides = page_set(tuple(sorted(pages.load(db).pages.items())))
    return Site(runtime, signer, token, None if clash else plan, clash, records.lists(db), time.monotonic(), overrides)


def context(request: Request) -> WebContext:
    found: WebContext = request.app.state.context
    return found


def ip(request: Request) -> str | None:
    return request.client.host if request.client else None
