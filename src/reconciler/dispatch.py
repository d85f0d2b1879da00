"""Sending is one more reconciliation: every ledger row that is due should be sent, once.

A pass (`dispatch_due`): settle rows a crashed process left `sending` (uncertain), start the follow-up stages whose
time has come, then for each campaign stage with due rows render and send them, and mark campaigns whose every row
has an outcome `sent`. Per stage, one coroutine renders messages ahead (a bounded queue) and `max_connections`
workers each claim a row (its own short transaction, together with the outcome of the message before), hand it to
the transport, and keep the outcome for their next claim. Marketing mail honours quiet hours and the frequency cap
by postponing rows, never by dropping them.

Everything works from the state database (the content stored when the campaign was scheduled, the settings kept at
the last good revision), so a bad revision in the files never stops or changes a send.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import concurrent.futures.process
import contextlib
import json
import logging
import multiprocessing
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

from sqlite_utils import Database

from reconciler.clock import Clock, iso
from reconciler.mime import DkimKey, HeaderValueError, QpEncoder, Skeleton, addr_spec, address_domain, mailbox, qp
from reconciler.plan.content import ago
from reconciler.segments import MARKETING_BLOCKING, blocking_for
from reconciler.spec.documents import BUILTIN_FIELDS, FrequencyCap, QuietHours
from reconciler.state import ledger, records
from reconciler.state.contacts import BUILTIN_COLUMNS
from reconciler.state.db import get_meta, set_meta, write
from reconciler.state.ledger import Outcome, Source
from reconciler.state.subscribers import CONFIRMATION_SOURCE
from reconciler.templates import MessageTemplate, RenderedMessage, StrictFields, prepare_message
from reconciler.tokens import Signer, base36, new_key
from reconciler.transports import Delivery, Transport, make_transport

log = logging.getLogger(__name__)
PAGE = 500
CONFIRMATION_SUBJECT = "Please confirm your subscription to {{ list.title }}"
CONFIRMATION_MJML = """<mjml><mj-head><mj-attributes><mj-all font-family="Helvetica, Arial, sans-serif" />
</mj-attributes></mj-head><mj-body><mj-section><mj-column>
<mj-text font-size="20px">Please confirm your subscription</mj-text>
<mj-text>You, or someone using your address, asked to receive {{ list.title }} from {{ organization.name }}.
To confirm, open the link below and press the button. If it was not you, ignore this email: nothing happens.</mj-text>
<mj-button href="{{ confirm_url }}">Confirm my subscription</mj-button>
<mj-text font-size="12px">{{ organization.name }} · {{ organization.postal_address }}</mj-text>
</mj-column></mj-section></mj-body></mjml>"""
"""The confirmation email of double opt-in lists: no advertising, one button (MAIL-FACTS)."""
FREQUENCIES = {"weekly": timedelta(days=7), "monthly": timedelta(days=30)}
"""What a subscriber may choose on the preference page: at most one marketing message per period."""
DISPATCH_CACHE_KB = 16_000
RENDER_BATCH = 50
RENDER_POOL_MIN = 1000
"""Due messages from which a render process pays for its start (~0.5 s)."""
UTM_ORDER = ("source", "medium", "campaign", "term", "content")
HEARTBEAT = 10.0
STALE = timedelta(minutes=2)
"""A dispatcher on another host whose heartbeat is this old is gone; its `sending` rows become uncertain."""


class DispatchConfigError(Exception):
    """Something a send needs is missing from the environment (a DKIM key, a password): the rows wait."""


@dataclass
class Progress:
    """Counts for one campaign stage during a pass, for progress bars and log lines."""

    source: str
    total: int
    done: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def add(self, state: str) -> None:
        self.done += 1
        self.outcomes[state] = self.outcomes.get(state, 0) + 1


@dataclass
class DispatchReport:
    sources: list[Progress] = field(default_factory=list)
    stages_started: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    uncertain: int = 0

    def count(self, state: str) -> int:
        return sum(p.outcomes.get(state, 0) for p in self.sources)


def signer_for(db: Database) -> Signer:
    """The workspace's signing key from its environment variable; without one, a key generated once and kept in the
    state database (with a warning), so `make run` works and links stay valid across restarts."""
    variable = get_meta(db, "settings.signing_key_env") or "RECONCILER_SECRET"
    if os.environ.get(variable):
        return Signer.from_env(variable)
    fallback = get_meta(db, "signing_key")  # read first: the write lock only when the key must be made
    if fallback:
        return Signer.from_env(variable, fallback=fallback)
    with write(db):
        fallback = get_meta(db, "signing_key")
        if not fallback:
            fallback = new_key()
            set_meta(db, "signing_key", fallback)
            log.warning(
                "%s is not set: links are signed with a key generated into the state database; set %s "
                "to a long random secret on a server",
                variable,
                variable,
            )
    return Signer.from_env(variable, fallback=fallback)


def instance_id(db: Database) -> str:
    """A random id of this state database, so Message-IDs from two workspaces never collide."""
    value = get_meta(db, "instance_id")
    if value:
        return value
    with write(db):
        value = get_meta(db, "instance_id")
        if not value:
            value = secrets.token_hex(4)
            set_meta(db, "instance_id", value)
    return value


def transport_configs(db: Database) -> dict[str, dict[str, Any]]:
    configs: dict[str, dict[str, Any]] = json.loads(get_meta(db, "settings.transports") or "{}")
    return configs or {"outbox": {"type": "outbox", "path": ".state/outbox"}}


@dataclass(frozen=True)
class Message:
    row_id: int
    recipient: str
    data: bytes
    message_id: str
    attempts: int
    first_attempt_at: str | None


class Composer:
    """Builds one message definition's messages: its compiled template, its skeleton, and per recipient the
    context, the signed links, the bytes and (last) the DKIM signature."""

    def __init__(
        self,
        content: Mapping[str, Any],
        *,
        source: str,
        stage: str,
        lists: Mapping[str, Mapping[str, Any]],
        public_url: str,
        signer: Signer,
        instance: str,
        field_types: Mapping[str, str],
        dkim: DkimKey | None = None,
        kind: str = "campaign",
        bulk: bool = True,
    ) -> None:
        message = (
            content if kind != "campaign" or not stage else next(s for s in content["stages"] if s["name"] == stage)
        )
        tracking = content.get("tracking") or {}
        utm = content.get("utm") or {}
        website = (content.get("organization") or {}).get("website")
        self.template: MessageTemplate = prepare_message(
            message["mjml"],
            subject=message["subject"],
            preheader=message.get("preheader") or "",
            text_part=message.get("text_part"),
            opens=bool(tracking.get("opens")),
            clicks=bool(tracking.get("clicks")),
            utm=tuple((f"utm_{k}", str(utm[k])) for k in UTM_ORDER if utm.get(k)),
            utm_hosts=(urlsplit(website).hostname or "",) if website else (),
        )
        sender = content["sender"]
        self.reply_address = addr_spec(sender.get("reply_to") or sender["from"])
        self.domain = address_domain(sender["from"])
        first = next(iter(lists), "")
        self.list = StrictFields({"name": first, "title": (lists.get(first) or {}).get("title", "")})
        host = urlsplit(public_url).hostname or "localhost"
        self.skeleton = Skeleton(
            from_=sender["from"],
            reply_to=sender.get("reply_to"),
            list_id=(str(self.list["title"]), f"{first}.{host}") if first else None,
            feedback_id=f"{source}:{stage or 'main'}:{kind}:{host}",
            bulk=bulk,
        )
        self.organization = StrictFields(content.get("organization") or {})
        self.campaign = {"name": source}
        self.public_url = public_url.rstrip("/")
        self.signer = signer
        self.instance = instance
        self.field_types = field_types
        self.known_fields = frozenset(BUILTIN_FIELDS) | frozenset(field_types)
        self.dkim = dkim
        self.encoder = QpEncoder()
        self.confirms = "confirm_url" in message["mjml"]
        """Only a double opt-in confirmation has a confirm link: other messages skip signing one."""

    def message_id(self, row_id: int) -> str:
        return f"<{base36(row_id)}.{self.instance}.r@{self.domain}>"

    def contact(self, row: Mapping[str, Any]) -> StrictFields:
        values: dict[str, Any] = {k: row[k] for k in ("email", *BUILTIN_COLUMNS) if row.get(k) is not None}
        values["tags"] = json.loads(row.get("tags") or "[]")
        if row.get("created_at"):
            values["created_at"] = datetime.fromisoformat(row["created_at"])
        for name, value in json.loads(row.get("fields") or "{}").items():
            kind = self.field_types.get(name)
            if isinstance(value, str) and kind in ("date", "datetime"):
                with contextlib.suppress(ValueError):  # a stored value of an older type stays as it is
                    value = date.fromisoformat(value) if kind == "date" else datetime.fromisoformat(value)
            values[name] = value
        return StrictFields(values, known=self.known_fields)

    def render(self, row: Mapping[str, Any], *, unsubscribe_token: str | None = None) -> RenderedMessage:
        """One recipient's subject, HTML and text, with every link signed for their ledger row."""
        row_id = int(row["id"])
        base, sign = self.public_url, self.signer.sign
        context = {
            "contact": self.contact(row),
            "organization": self.organization,
            "campaign": self.campaign,
            "list": self.list,
            "unsubscribe_url": f"{base}/u/{unsubscribe_token or sign('unsubscribe', row_id)}",
            "preferences_url": f"{base}/p/{sign('preferences', int(row['contact_id']))}",
            "view_online_url": f"{base}/v/{sign('view', row_id)}",
        }
        if self.confirms:
            context["confirm_url"] = f"{base}/confirm/{sign('confirm', row_id)}"
        click = None
        if self.template.tracks_clicks:

            def click(url: str) -> str:
                if not url.lower().startswith(("http://", "https://")):
                    return url
                return f"{base}/c/{sign('click', row_id, url)}?u={quote(url, safe='')}"

        pixel = f"{base}/o/{sign('open', row_id)}.gif" if self.template.tracks_opens else ""
        return self.template.render(context, click_url=click, pixel_url=pixel)

    def compose(self, row: Mapping[str, Any], *, now: datetime) -> Message:
        """One recipient's message; raises HeaderValueError or a Jinja error for data that cannot be sent."""
        row_id = int(row["id"])
        token = self.signer.sign("unsubscribe", row_id)
        rendered = self.render(row, unsubscribe_token=token)
        name = " ".join(filter(None, (row.get("first_name"), row.get("last_name")))) or None
        message_id = row.get("message_id") or self.message_id(row_id)
        unsubscribe = (f"{self.public_url}/u/{token}", f"mailto:{self.reply_address}?subject=unsubscribe%20{token}")
        data = self.skeleton.build(
            to=mailbox(name, row["email"]),
            subject=rendered.subject,
            message_id=message_id,
            date=now,
            html=self.encoder.encode(rendered.html_chunks),
            text=qp(rendered.text),
            unsubscribe=unsubscribe,
        )
        if self.dkim is not None:
            data = self.dkim.sign(data)
        return Message(
            row_id, str(row["email"]), data, message_id, int(row.get("attempts") or 0), row.get("first_attempt_at")
        )


_COMPOSERS: dict[str, Composer] = {}


def compose_batch(
    key: str, args: Mapping[str, Any], rows: list[dict[str, Any]], now: datetime
) -> list[Message | tuple[int, str]]:
    """Messages for `rows`, or (row id, why not) for a contact whose data cannot be sent. Runs in this process or in
    a render process, which keeps one Composer per source (`key`)."""
    composer = _COMPOSERS.get(key)
    if composer is None:
        if len(_COMPOSERS) > 16:
            _COMPOSERS.clear()
        composer = _COMPOSERS[key] = Composer(**args)
    out: list[Message | tuple[int, str]] = []
    for row in rows:
        try:
            out.append(composer.compose(row, now=now))
        except HeaderValueError as exc:
            out.append((int(row["id"]), f"could not build the message: {exc}"))
        except Exception as exc:  # a template can fail on one contact's data in ways Jinja does not classify
            out.append((int(row["id"]), f"could not render the template for this contact: {exc}"))
    return out


def _render_process() -> None:
    """In the render process: the daemon decides when it stops (SIGTERM and Ctrl-C go to the daemon), and when the
    daemon dies (kill -9) this process follows it instead of waiting forever on its task queue."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()

    def follow_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=follow_parent, daemon=True, name="follow-parent").start()


def dkim_key(config: Mapping[str, Any]) -> DkimKey | None:
    dkim = config.get("dkim")
    if not dkim:
        return None
    pem = os.environ.get(dkim["private_key_env"], "")
    if not pem:
        raise DispatchConfigError(
            f"DKIM signing is on but {dkim['private_key_env']} is not set (it holds the PEM "
            "private key); messages wait until it is"
        )
    return DkimKey(dkim["domain"], dkim["selector"], pem.encode())


class Dispatcher:
    """Sends what is due, pass after pass; one per process (its id marks the rows it holds while sending)."""

    def __init__(
        self,
        db: Database,
        *,
        root: Path,
        clock: Clock,
        transports: Mapping[str, Transport] | None = None,
        stop: asyncio.Event | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.db, self.root, self.clock = db, root, clock
        # sending reads and updates rows by index: a small page cache keeps memory flat however large the audience
        db.conn.execute(f"PRAGMA cache_size = -{DISPATCH_CACHE_KB}")
        self.ident = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.fixed_transports = dict(transports or {})
        self.transports: dict[str, Transport] = {}
        self.stop = stop or asyncio.Event()
        self.on_progress = on_progress
        self.random = random.Random()
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None

    def transport(self, name: str) -> tuple[Transport, dict[str, Any]]:
        configs = transport_configs(self.db)
        config = configs.get(name) or configs.get("outbox") or {"type": "outbox"}
        if name in self.fixed_transports:
            return self.fixed_transports[name], config
        if name not in self.transports:
            self.transports[name] = make_transport(name, config, root=self.root)
        return self.transports[name], config

    async def close(self) -> None:
        for transport in self.transports.values():
            await transport.close()
        self.transports.clear()
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None

    async def run_pass(self) -> DispatchReport:
        """One dispatch pass over everything due now."""
        report = DispatchReport()
        now = self.clock.now()
        ledger.register(self.db, self.ident, host=socket.gethostname(), pid=os.getpid(), at=iso(now))
        beat = asyncio.create_task(self._heartbeat())
        try:
            report.uncertain = self.recover(now)
            report.stages_started = self.start_stages(now)
            for source in self.confirmations(now) + ledger.due_sources(self.db, now=iso(now)):
                if self.stop.is_set():
                    break
                try:
                    report.sources.append(await self.send_source(source, now=now))
                except DispatchConfigError as exc:
                    log.error(
                        "%s %s: %s", "Campaign" if source.kind == "campaign" else "Confirmation", source.name, exc
                    )
            report.finished = self.finish(now)
        finally:
            beat.cancel()
            ledger.unregister(self.db, self.ident)
        return report

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            ledger.heartbeat(self.db, self.ident, at=iso(datetime.now(UTC)))

    def confirmations(self, now: datetime) -> list[Source]:
        """Double opt-in confirmation emails (no advertising), sent through the ledger like everything else."""
        lists = records.list_specs(self.db)
        content = {
            "subject": CONFIRMATION_SUBJECT,
            "preheader": "",
            "mjml": CONFIRMATION_MJML,
            "text_part": None,
            "sender": json.loads(get_meta(self.db, "settings.default_sender") or "null")
            or {"from": "reconciler <noreply@localhost>"},
            "transport": get_meta(self.db, "settings.default_transport") or "outbox",
            "tracking": {"opens": False, "clicks": False},
            "utm": None,
            "organization": json.loads(get_meta(self.db, "settings.organization") or "{}"),
            "stages": [],
        }
        return [
            Source("workflow", CONFIRMATION_SOURCE, stage, content, (stage.split(":", 1)[0],), due, requires="pending")
            for stage, due in ledger.due_confirmations(self.db, now=iso(now))
            if stage.split(":", 1)[0] in lists
        ]

    def view_online(self, row_id: int) -> str | None:
        """A sent message's HTML as its recipient got it (the "view in your browser" link)."""
        found = ledger.row_for_view(self.db, row_id)
        if found is None:
            return None
        row, content, lists = found
        source = Source("campaign", row["source"], row["stage"], content, lists, 1)
        try:
            return Composer(**self.composer_args(source, {})).render(row).html
        except Exception:  # a message that cannot be rendered again is shown as an invalid link, never a 500
            log.exception("view online: cannot render ledger row %d", row_id)
            return None

    def recover(self, now: datetime) -> int:
        """Settle rows another process left `sending` when it died: uncertain, or queued again to resend."""
        rows = ledger.interrupted(
            self.db, host=socket.gethostname(), alive=_alive, stale_before=iso(datetime.now(UTC) - STALE)
        )
        uncertain: list[int] = []
        resend: list[int] = []
        for row in rows:
            transport, _ = self.transport(json.loads(row["content"] or "{}").get("transport") or "outbox")
            (resend if transport.on_uncertain == "resend" else uncertain).append(row["id"])
        if rows:
            ledger.settle_interrupted(self.db, uncertain=uncertain, resend=resend, at=iso(now))
            log.warning(
                "%d message(s) were on the wire when a dispatcher stopped: %d marked uncertain (not sent "
                "again), %d queued to resend",
                len(rows),
                len(uncertain),
                len(resend),
            )
        return len(uncertain)

    def start_stages(self, now: datetime) -> list[str]:
        started = []
        categories = records.list_categories(self.db)
        for campaign in ledger.sending_campaigns(self.db):
            content = json.loads(campaign["content"])
            stages = content.get("stages") or []
            done = ledger.started_stages(self.db, campaign["name"])
            previous_at = campaign["started_at"]
            for stage in stages:
                if stage["name"] not in done:
                    if datetime.fromisoformat(previous_at) + timedelta(seconds=stage["after"]) <= now:
                        lists = json.loads(campaign["spec"])["audience"]["lists"]
                        count = ledger.start_stage(
                            self.db,
                            campaign["name"],
                            stage["name"],
                            only=stage.get("only"),
                            blocking=blocking_for(categories, lists),
                            content_hash=campaign["content_hash"],
                            revision=campaign["last_applied_revision"] or "",
                            at=iso(now),
                        )
                        log.info("Campaign %s: stage %s started, %d recipients", campaign["name"], stage["name"], count)
                        started.append(f"{campaign['name']}/{stage['name']}")
                    break
                previous_at = done[stage["name"]]
        return started

    def finish(self, now: datetime) -> list[str]:
        finished = []
        for campaign in ledger.sending_campaigns(self.db):
            stages = json.loads(campaign["content"]).get("stages") or []
            if len(ledger.started_stages(self.db, campaign["name"])) < len(stages):
                continue
            counts = ledger.finish(self.db, campaign["name"], at=iso(now))
            if counts is not None:
                log.info(
                    "Campaign %s: finished (%s)",
                    campaign["name"],
                    ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())),
                )
                finished.append(campaign["name"])
        return finished

    def composer_args(self, source: Source, config: Mapping[str, Any]) -> dict[str, Any]:
        """What a Composer is built from: plain values, so a render process can build the same one."""
        lists = records.list_specs(self.db)
        fields = records.field_types(self.db)
        return {
            "content": source.content,
            "source": source.name,
            "stage": source.stage,
            "lists": {name: lists.get(name, {}) for name in source.lists},
            "public_url": get_meta(self.db, "settings.public_url") or "http://localhost:8025",
            "signer": signer_for(self.db),
            "instance": instance_id(self.db),
            "field_types": fields,
            "dkim": dkim_key(config),
            "kind": source.kind,
            "bulk": source.kind == "campaign",
        }

    def render_pool(self, due: int) -> concurrent.futures.ProcessPoolExecutor | None:
        """A process that renders while this one talks SMTP (the second core of a small server), for sends large
        enough to pay for its start; RECONCILER_RENDER_PROCESSES=0 keeps rendering in this process."""
        wanted = int(os.environ.get("RECONCILER_RENDER_PROCESSES", "1" if (os.cpu_count() or 1) > 1 else "0"))
        if wanted <= 0 or due < RENDER_POOL_MIN:
            return None
        if self.pool is None:
            self.pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=wanted, mp_context=multiprocessing.get_context("spawn"), initializer=_render_process
            )
        return self.pool

    async def send_source(self, source: Source, *, now: datetime) -> Progress:
        """Send every due row of one campaign stage (or stop early: SIGTERM, or the campaign was paused)."""
        transport, config = self.transport(source.content.get("transport") or "outbox")
        args = self.composer_args(source, config)
        envelope_from = addr_spec(source.content["sender"]["from"])
        key = f"{source.name}/{source.stage}/{id(self)}"
        try:  # prepare the definition here first: a message that cannot be built waits, its rows untouched
            compose_batch(key, args, [], self.clock.now())
        except Exception as exc:
            raise DispatchConfigError(f"cannot prepare the message: {exc}") from exc
        pool = self.render_pool(source.due)
        loop = asyncio.get_running_loop()
        categories = records.list_categories(self.db)
        blocking = blocking_for(categories, source.lists)
        marketing = blocking == MARKETING_BLOCKING and source.kind == "campaign"  # not a confirmation request
        holds = _Holds(self.db, marketing=marketing, default_zone=get_meta(self.db, "settings.timezone") or "UTC")
        progress = Progress(f"{source.name}{'/' + source.stage if source.stage else ''}", source.due)
        queue: asyncio.Queue[Message | None] = asyncio.Queue(maxsize=transport.max_connections * 4)
        halt = asyncio.Event()
        last_log = time.monotonic()

        def note(state: str) -> None:
            nonlocal last_log
            progress.add(state)
            if self.on_progress is not None:
                self.on_progress(progress)
            elif time.monotonic() - last_log > 5:
                last_log = time.monotonic()
                log.info(
                    "Campaign %s: %d/%d handled (%s)",
                    progress.source,
                    progress.done,
                    progress.total,
                    ", ".join(f"{k} {v}" for k, v in sorted(progress.outcomes.items())),
                )

        async def deliver(results: list[Message | tuple[int, str]]) -> None:
            for result in results:
                if isinstance(result, Message):
                    await queue.put(result)
                else:  # one contact's bad data never stops a campaign (MAIL-FACTS)
                    row_id, reason = result
                    ledger.record(self.db, Outcome(row_id, "failed", reason, iso(self.clock.now())), source=source)
                    note("failed")

        async def produce() -> None:
            after = 0
            ahead: collections.deque[asyncio.Future[list[Message | tuple[int, str]]]] = collections.deque()
            try:
                while not (self.stop.is_set() or halt.is_set()):
                    rows = ledger.due_rows(self.db, source, now=iso(now), after_id=after, limit=PAGE)
                    if not rows:
                        break
                    after = rows[-1]["id"]
                    held = holds.check(rows, now=self.clock.now())
                    for _ in held:
                        note("postponed")
                    rows = [row for row in rows if row["id"] not in held]
                    size = RENDER_BATCH if pool else 1
                    for start in range(0, len(rows), size):
                        if self.stop.is_set() or halt.is_set():
                            break
                        batch = rows[start : start + size]
                        if pool is None:
                            await deliver(compose_batch(key, args, batch, self.clock.now()))
                            continue
                        ahead.append(loop.run_in_executor(pool, compose_batch, key, args, batch, self.clock.now()))
                        if len(ahead) >= 3:
                            await deliver(await ahead.popleft())
                while ahead and not (self.stop.is_set() or halt.is_set()):
                    await deliver(await ahead.popleft())
            except concurrent.futures.process.BrokenProcessPool:
                log.error("the render process stopped; unsent messages wait for the next pass")
                self.pool = None
            finally:
                for future in ahead:
                    future.cancel()
                for _ in range(transport.max_connections):
                    await queue.put(None)

        async def work() -> None:
            previous: Outcome | None = None
            while True:
                if previous is not None and queue.empty():
                    try:  # normally the next claim writes this outcome; if nothing comes soon, write it alone
                        message = await asyncio.wait_for(queue.get(), timeout=0.2)
                    except TimeoutError:
                        ledger.record(self.db, previous, source=source)
                        previous = None
                        message = await queue.get()
                else:
                    message = await queue.get()
                if message is None or self.stop.is_set() or halt.is_set():
                    if message is None:
                        break
                    continue  # unclaimed: it stays queued for the next pass
                at = self.clock.now()
                result = ledger.claim(
                    self.db,
                    message.row_id,
                    source=source,
                    dispatcher=self.ident,
                    message_id=message.message_id,
                    blocking=blocking,
                    at=iso(at),
                    previous=previous,
                )
                previous = None
                if result == "paused":
                    halt.set()
                    continue
                if result != "claimed":
                    note(result)
                    continue
                delivery = await transport.send(envelope_from, message.recipient, message.data)
                previous = self.outcome(message, delivery, transport=transport)
                note(previous.state)
            if previous is not None:
                ledger.record(self.db, previous, source=source)

        async with asyncio.TaskGroup() as group:  # a failing task cancels the others instead of leaving them waiting
            group.create_task(produce())
            for _ in range(transport.max_connections):
                group.create_task(work())
        if halt.is_set():
            log.info("Campaign %s: paused; %d message(s) wait", source.name, progress.total - progress.done)
        return progress

    def outcome(self, message: Message, delivery: Delivery, *, transport: Transport) -> Outcome:
        """What a delivery attempt means for the row (MAIL-FACTS: bounces, policy blocks, backoff, uncertainty)."""
        now = self.clock.now()
        at = iso(now)
        reply = delivery.reply
        if delivery.status == "sent":
            return Outcome(message.row_id, "sent", reply, at)
        if delivery.status == "deferred":
            first = datetime.fromisoformat(message.first_attempt_at) if message.first_attempt_at else now
            if now - first >= transport.retry_for:
                return Outcome(
                    message.row_id, "failed", f"gave up after {ago(transport.retry_for)}: {reply}", at, soft=True
                )
            retry = now + ledger.backoff(message.attempts + 1, jitter=self.random.random())
            return Outcome(message.row_id, "deferred", reply, at, next_attempt_at=iso(retry))
        if delivery.status == "bounced":
            return Outcome(message.row_id, "failed", reply, at, suppress="bounced")
        if delivery.status == "policy":
            return Outcome(message.row_id, "failed", reply, at, policy=True)
        if delivery.status == "uncertain":
            if transport.on_uncertain == "resend":
                return Outcome(message.row_id, "queued", f"{reply}; sent again with the same Message-ID", at)
            return Outcome(message.row_id, "uncertain", f"{reply}; not sent again", at)
        return Outcome(message.row_id, "failed", reply, at, soft=delivery.soft_bounce)


class _Holds:
    """Quiet hours and the frequency cap, for marketing mail: rows that must wait get a later attempt time."""

    def __init__(self, db: Database, *, marketing: bool, default_zone: str) -> None:
        self.db = db
        quiet = json.loads(get_meta(db, "settings.quiet_hours") or "null")
        cap = json.loads(get_meta(db, "settings.frequency_cap") or "null")
        self.quiet = QuietHours.model_validate(quiet) if quiet and marketing else None
        self.cap = FrequencyCap.model_validate(cap) if cap and marketing else None
        self.marketing = marketing
        self.default_zone = default_zone

    def check(self, rows: list[dict[str, Any]], *, now: datetime) -> set[int]:
        if self.quiet is None and self.cap is None and not (self.marketing and any(r.get("frequency") for r in rows)):
            return set()
        postponed: list[tuple[int, str, str]] = []
        for row in rows:
            until = self._quiet_until(row, now) if self.quiet else None
            why = "quiet hours in the contact's time zone"
            if until is None and self.cap is not None:
                recent = ledger.recent_sends(self.db, row["contact_id"], since=iso(now - self.cap.per))
                if len(recent) >= self.cap.max:
                    until = datetime.fromisoformat(recent[len(recent) - self.cap.max]) + self.cap.per
                    why = f"frequency cap: at most {self.cap.max} marketing message(s) per {ago(self.cap.per)}"
            chosen = FREQUENCIES.get(row.get("frequency") or "") if self.marketing else None
            if until is None and chosen is not None:
                recent = ledger.recent_sends(self.db, row["contact_id"], since=iso(now - chosen))
                if recent:
                    until = datetime.fromisoformat(recent[-1]) + chosen
                    why = f"the contact chose at most one email a {row['frequency'].removesuffix('ly')}"
            if until is not None:
                postponed.append((int(row["id"]), iso(until), f"postponed: {why}"))
        if postponed:
            ledger.postpone(self.db, postponed, at=iso(now))
        return {row_id for row_id, _, _ in postponed}

    def _quiet_until(self, row: Mapping[str, Any], now: datetime) -> datetime | None:
        assert self.quiet is not None
        try:
            zone = ZoneInfo(row.get("timezone") or self.default_zone)
        except (KeyError, ValueError):
            zone = ZoneInfo(self.default_zone)
        local = now.astimezone(zone)
        start, end, clock = self.quiet.start, self.quiet.end, local.time()
        inside = (start <= clock < end) if start < end else (clock >= start or clock < end)
        if not inside:
            return None
        day = local.date() if clock < end else local.date() + timedelta(days=1)
        return datetime.combine(day, end, tzinfo=zone).astimezone(UTC)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
