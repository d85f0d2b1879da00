"""Sending is one more reconciliation: every ledger row that is due should be sent, once.

A pass (`Dispatcher.run_pass`): settle rows a stopped process left `sending`, start the follow-up stages whose
time has come, then for each message definition with due rows render and send them, and mark campaigns whose every
row has an outcome `sent`. Per definition, one coroutine renders messages ahead (a bounded queue) and
`max_connections` workers each claim a row (its own short transaction, together with the outcome of the message
before), hand it to the transport, and keep the outcome for their next claim. Marketing mail honours quiet hours
and the frequency cap by postponing rows (`holds`), never by dropping them.

Everything works from the state database (the content stored when the campaign was scheduled, the Settings kept at
the last good revision), so a bad revision in the files never stops or changes a send.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import concurrent.futures.process
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlite_utils import Database

from reconciler.clock import Clock, iso
from reconciler.compose import (
    RENDER_BATCH,
    CannotPrepare,
    Message,
    RenderPool,
    compose_batch,
    confirmation_content,
    definition_for,
)
from reconciler.holds import Holds
from reconciler.mime import addr_spec
from reconciler.plan.when import ago
from reconciler.segments import MARKETING_BLOCKING, blocking_for
from reconciler.start import start_stages
from reconciler.state import campaigns, dispatchers, ledger, records, settings
from reconciler.state.ledger import CONFIRMATION_SOURCE, DueRow, Outcome, Source
from reconciler.state.settings import RuntimeSettings
from reconciler.transports import Delivery, Transport, make_transport

log = logging.getLogger(__name__)
PAGE = 500
DISPATCH_CACHE_KB = 16_000
"""The sending connection's page cache: sending reads and updates rows by index, so a small cache keeps memory
flat however large the audience."""
HEARTBEAT = 10.0
STALE = timedelta(minutes=2)
"""A dispatcher on another host whose heartbeat is this old is gone; its `sending` rows become uncertain."""


@dataclass
class Progress:
    """Counts for one message definition during a pass, for progress bars and log lines."""

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
        db.conn.execute(f"PRAGMA cache_size = -{DISPATCH_CACHE_KB}")
        self.ident = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.fixed_transports = dict(transports or {})
        self.transports: dict[str, Transport] = {}
        self.stop = stop or asyncio.Event()
        self.on_progress = on_progress
        self.random = random.Random()
        self.pool = RenderPool()

    def transport(self, name: str, runtime: RuntimeSettings) -> Transport:
        if name in self.fixed_transports:
            return self.fixed_transports[name]
        if name not in self.transports:
            self.transports[name] = make_transport(name, runtime.transport(name), root=self.root)
        return self.transports[name]

    async def close(self) -> None:
        for transport in self.transports.values():
            await transport.close()
        self.transports.clear()
        self.pool.close()

    async def run_pass(self) -> DispatchReport:
        """One dispatch pass over everything due now."""
        report = DispatchReport()
        now = self.clock.now()
        runtime = settings.load(self.db)
        dispatchers.register(self.db, self.ident, host=socket.gethostname(), pid=os.getpid(), at=iso(now))
        beat = asyncio.create_task(self._heartbeat())
        try:
            report.uncertain = self.recover(now, runtime)
            report.stages_started = start_stages(self.db, now=now)
            for source in self.confirmations(now, runtime) + ledger.due_sources(self.db, now=iso(now)):
                if self.stop.is_set():
                    break
                try:
                    sender = SourceSender(self, source, runtime=runtime, now=now)
                    report.sources.append(await sender.run())
                except CannotPrepare as exc:
                    kind = "Campaign" if source.kind == "campaign" else "Confirmation"
                    log.error("%s %s: %s", kind, source.name, exc)
            report.finished = self.finish(now)
        finally:
            beat.cancel()
            dispatchers.unregister(self.db, self.ident)
        return report

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            dispatchers.heartbeat(self.db, self.ident, at=iso(datetime.now(UTC)))

    def confirmations(self, now: datetime, runtime: RuntimeSettings) -> list[Source]:
        """Double opt-in confirmation emails (no advertising), sent through the ledger like everything else."""
        lists = records.lists(self.db)
        content = confirmation_content(runtime)
        return [
            Source("workflow", CONFIRMATION_SOURCE, stage, content, (stage.split(":", 1)[0],), due, requires="pending")
            for stage, due in ledger.due_confirmations(self.db, now=iso(now))
            if stage.split(":", 1)[0] in lists
        ]

    def recover(self, now: datetime, runtime: RuntimeSettings) -> int:
        """Settle rows another process left `sending` when it died: uncertain, or queued again to resend."""
        rows = dispatchers.interrupted(
            self.db, host=socket.gethostname(), alive=_alive, stale_before=iso(datetime.now(UTC) - STALE)
        )
        uncertain: list[int] = []
        resend: list[int] = []
        for row in rows:
            transport = self.transport(row.transport or runtime.settings.defaults.transport, runtime)
            (resend if transport.on_uncertain == "resend" else uncertain).append(row.row_id)
        if rows:
            dispatchers.settle_interrupted(self.db, uncertain=uncertain, resend=resend, at=iso(now))
            log.warning(
                "%d message(s) were on the wire when a dispatcher stopped: %d marked uncertain (not sent "
                "again), %d queued to resend",
                len(rows),
                len(uncertain),
                len(resend),
            )
        return len(uncertain)

    def finish(self, now: datetime) -> list[str]:
        finished = []
        for campaign in campaigns.sending_campaigns(self.db):
            if len(campaigns.started_stages(self.db, campaign.name)) < len(campaign.content.stages):
                continue
            counts = campaigns.finish(self.db, campaign.name, at=iso(now))
            if counts is not None:
                summary = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
                log.info("Campaign %s: finished (%s)", campaign.name, summary)
                finished.append(campaign.name)
        return finished

    def outcome(self, message: Message, delivery: Delivery, *, transport: Transport) -> Outcome:
        """What a delivery attempt means for the row: sent; retried with backoff until `retry_for` has passed; a
        bounce (the address is suppressed); a policy refusal (counted against the campaign); or uncertain when the
        connection broke after the message was written (not sent again unless the transport says resend)."""
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
            return Outcome(message.row_id, "failed", reply, at, suppress=True)
        if delivery.status == "policy":
            return Outcome(message.row_id, "failed", reply, at, policy=True)
        if delivery.status == "uncertain":
            if transport.on_uncertain == "resend":
                return Outcome(message.row_id, "queued", f"{reply}; sent again with the same Message-ID", at)
            return Outcome(message.row_id, "uncertain", f"{reply}; not sent again", at)
        return Outcome(message.row_id, "failed", reply, at, soft=delivery.soft_bounce)


class SourceSender:
    """Sends every due row of one message definition in one pass, or stops early (SIGTERM, or the campaign was
    paused): one producer renders ahead into a bounded queue, `max_connections` workers claim and send."""

    def __init__(self, dispatcher: Dispatcher, source: Source, *, runtime: RuntimeSettings, now: datetime) -> None:
        self.dispatcher, self.source, self.now = dispatcher, source, now
        self.db = dispatcher.db
        self.transport = dispatcher.transport(source.content.transport, runtime)
        self.definition = definition_for(self.db, source, runtime=runtime)
        self.envelope_from = addr_spec(source.content.sender.from_)
        self.key = f"{source.name}/{source.stage}/{id(dispatcher)}"
        self.blocking = blocking_for(records.lists(self.db), source.lists)
        marketing = self.blocking == MARKETING_BLOCKING and source.kind == "campaign"  # not a confirmation request
        self.holds = Holds(self.db, runtime.settings, marketing=marketing)
        self.progress = Progress(source.label, source.due)
        self.queue: asyncio.Queue[Message | None] = asyncio.Queue(maxsize=self.transport.max_connections * 4)
        self.halt = asyncio.Event()
        self.last_log = time.monotonic()

    @property
    def stopping(self) -> bool:
        return self.dispatcher.stop.is_set() or self.halt.is_set()

    async def run(self) -> Progress:
        try:  # prepare the definition here first: a message that cannot be built waits, its rows untouched
            compose_batch(self.key, self.definition, [], self.dispatcher.clock.now())
        except Exception as exc:
            raise CannotPrepare(f"cannot prepare the message: {exc}") from exc
        async with asyncio.TaskGroup() as group:  # a failing task cancels the others instead of leaving them waiting
            group.create_task(self.produce())
            for _ in range(self.transport.max_connections):
                group.create_task(self.work())
        if self.halt.is_set():
            waiting = self.progress.total - self.progress.done
            log.info("Campaign %s: paused; %d message(s) wait", self.source.name, waiting)
        return self.progress

    def note(self, state: str) -> None:
        self.progress.add(state)
        if self.dispatcher.on_progress is not None:
            self.dispatcher.on_progress(self.progress)
        elif time.monotonic() - self.last_log > 5:
            self.last_log = time.monotonic()
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.progress.outcomes.items()))
            log.info(
                "Campaign %s: %d/%d handled (%s)",
                self.progress.source,
                self.progress.done,
                self.progress.total,
                outcomes,
            )

    async def deliver(self, results: list[Message | tuple[int, str]]) -> None:
        for result in results:
            if isinstance(result, Message):
                await self.queue.put(result)
            else:  # one contact's bad data never stops a campaign
                row_id, reason = result
                at = iso(self.dispatcher.clock.now())
                ledger.record(self.db, Outcome(row_id, "failed", reason, at), source=self.source)
                self.note("failed")

    async def produce(self) -> None:
        pool = self.dispatcher.pool.for_send(self.source.due)
        ahead: collections.deque[asyncio.Future[list[Message | tuple[int, str]]]] = collections.deque()
        loop = asyncio.get_running_loop()
        clock = self.dispatcher.clock
        try:
            for rows in self.pages():
                size = RENDER_BATCH if pool else 1
                for start in range(0, len(rows), size):
                    if self.stopping:
                        break
                    batch = rows[start : start + size]
                    if pool is None:
                        await self.deliver(compose_batch(self.key, self.definition, batch, clock.now()))
                        continue
                    ahead.append(
                        loop.run_in_executor(pool, compose_batch, self.key, self.definition, batch, clock.now())
                    )
                    if len(ahead) >= 3:
                        await self.deliver(await ahead.popleft())
            while ahead and not self.stopping:
                await self.deliver(await ahead.popleft())
        except concurrent.futures.process.BrokenProcessPool:
            log.error("the render process stopped; unsent messages wait for the next pass")
            self.dispatcher.pool.broken()
        finally:
            for future in ahead:
                future.cancel()
            for _ in range(self.transport.max_connections):
                await self.queue.put(None)

    def pages(self) -> Iterator[list[DueRow]]:
        """Due rows a page at a time, without those held back (quiet hours, caps)."""
        after = 0
        while not self.stopping:
            rows = ledger.due_rows(self.db, self.source, now=iso(self.now), after_id=after, limit=PAGE)
            if not rows:
                return
            after = rows[-1].id
            held = self.holds.check(rows, now=self.dispatcher.clock.now())
            for _ in held:
                self.note("postponed")
            yield [row for row in rows if row.id not in held]

    async def work(self) -> None:
        previous: Outcome | None = None
        while True:
            if previous is not None and self.queue.empty():
                try:  # normally the next claim writes this outcome; if nothing comes soon, write it alone
                    message = await asyncio.wait_for(self.queue.get(), timeout=0.2)
                except TimeoutError:
                    ledger.record(self.db, previous, source=self.source)
                    previous = None
                    message = await self.queue.get()
            else:
                message = await self.queue.get()
            if message is None:
                break
            if self.stopping:
                continue  # unclaimed: it stays queued for the next pass
            previous = await self.send(message, previous)
        if previous is not None:
            ledger.record(self.db, previous, source=self.source)

    async def send(self, message: Message, previous: Outcome | None) -> Outcome | None:
        """Claim the row (writing the previous outcome with it), hand it to the transport; its outcome, if sent."""
        result = ledger.claim(
            self.db,
            message.row_id,
            source=self.source,
            dispatcher=self.dispatcher.ident,
            message_id=message.message_id,
            blocking=self.blocking,
            at=iso(self.dispatcher.clock.now()),
            previous=previous,
        )
        if result == "paused":
            self.halt.set()
            return None
        if result != "claimed":
            self.note(result)
            return None
        delivery = await self.transport.send(self.envelope_from, message.recipient, message.data)
        outcome = self.dispatcher.outcome(message, delivery, transport=self.transport)
        self.note(outcome.state)
        return outcome


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
