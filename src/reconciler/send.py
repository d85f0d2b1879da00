"""Sending one message definition's due rows in one pass, and what each SMTP answer means for its row.

One producer renders messages ahead into a bounded queue (in a render process for large sends); `max_connections`
workers each hand a message to the transport, which calls back at the point of no return (the server said "go
ahead" to DATA): only then is the row claimed, in one short transaction together with the outcome of the message
the connection sent before. A server that refuses or cannot be reached before that point leaves the row unclaimed:
refusals are written as an attempt (`ledger.refused`), an unreachable server counts nothing. Marketing mail honours
quiet hours and the frequency cap (`holds`).

A failure of the state database stops the definition: no new row is claimed, the messages already on the wire
finish, and the outcomes that could not be written are kept for the next pass (`Pending`). Rows are never lost:
a row that was claimed but whose outcome is unknown is settled by the next pass's recovery.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import concurrent.futures.process
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from reconciler.clock import Clock, iso
from reconciler.compose import RENDER_BATCH, CannotPrepare, Definition, Message, RenderPool, compose_batch
from reconciler.holds import Holds
from reconciler.mime import addr_spec
from reconciler.plan.when import ago
from reconciler.state import ledger, sharing
from reconciler.state.ledger import DueRow, Outcome, Source
from reconciler.state.postgres import StateDatabase
from reconciler.state.sharing import Reservation
from reconciler.transports import Delivery, Transport

log = logging.getLogger(__name__)
PAGE = 500
_IDLE = object()
"""What a worker gets when no message came within its wait: time to write its last outcome on its own."""


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
class Pending:
    """Outcomes the state database refused to take (it failed mid-pass): written first thing next pass, so a row
    whose fate we know is never settled as uncertain."""

    outcomes: list[tuple[Outcome, Source]] = field(default_factory=list)

    def flush(self, db: StateDatabase) -> None:
        while self.outcomes:
            outcome, source = self.outcomes[0]
            ledger.record(db, outcome, source=source)
            self.outcomes.pop(0)


@dataclass
class SendRun:
    """What the sender of one definition needs from the pass around it."""

    db: StateDatabase
    clock: Clock
    ident: str
    stop: asyncio.Event
    pool: RenderPool
    pending: Pending
    on_progress: Callable[[Progress], None] | None = None
    jitter: random.Random = field(default_factory=random.Random)


class SourceSender:
    """Sends every due row of one message definition, or stops early: SIGTERM, the campaign was paused, the relay
    went down, or the state database failed (then `run` raises the failure once the wire is quiet)."""

    def __init__(
        self,
        run: SendRun,
        source: Source,
        definition: Definition,
        transport: Transport,
        holds: Holds,
        *,
        blocking: tuple[str, ...],
        now: datetime,
    ) -> None:
        self.run_, self.source, self.definition, self.transport, self.holds = run, source, definition, transport, holds
        self.blocking, self.now = blocking, now
        self.db = run.db
        self.envelope_from = addr_spec(source.content.sender.from_)
        self.key = f"{source.name}/{source.stage}/{run.ident}"
        self.progress = Progress(source.label, source.due)
        self.queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=transport.max_connections * 4)
        self.produced = asyncio.Event()
        self.halt = asyncio.Event()
        self.failure: BaseException | None = None
        self.last_log = time.monotonic()

    @property
    def stopping(self) -> bool:
        return self.run_.stop.is_set() or self.halt.is_set() or self.transport.breaker.down

    def fail(self, exc: BaseException) -> None:
        """The state database failed: claim nothing more; the first failure is what the pass reports."""
        if self.failure is None:
            self.failure = exc
            log.error("%s: the state database failed (%s); sending stops for this pass", self.source.label, exc)
        self.halt.set()

    async def run(self) -> Progress:
        try:  # prepare the definition here first: a message that cannot be built waits, its rows untouched
            compose_batch(self.key, self.definition, [], self.run_.clock.now())
        except Exception as exc:
            raise CannotPrepare(f"cannot prepare the message: {exc}") from exc
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.produce())
                for _ in range(self.transport.max_connections):
                    group.create_task(self.work())
        finally:
            self.release()
        if self.failure is not None:
            raise self.failure
        if self.halt.is_set():
            waiting = self.progress.total - self.progress.done
            log.info("%s: paused; %d message(s) wait", self.source.label, waiting)
        return self.progress

    def release(self) -> None:
        """The rows of this definition reserved and not claimed (held back, or left when sending stopped) are
        anyone's again, for the dispatchers of other daemons (PostgreSQL); else their reservation runs out."""
        try:
            sharing.release(self.db, [self.run_.ident])
        except Exception as exc:
            log.warning("%s: reserved rows not released (%s); their reservation runs out", self.source.label, exc)

    def note(self, state: str) -> None:
        self.progress.add(state)
        if self.run_.on_progress is not None:
            self.run_.on_progress(self.progress)
        elif time.monotonic() - self.last_log > 5:
            self.last_log = time.monotonic()
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.progress.outcomes.items()))
            progress = self.progress
            log.info("%s: %d/%d handled (%s)", progress.source, progress.done, progress.total, outcomes)

    # --- the producer -----------------------------------------------------------------------------------------

    async def produce(self) -> None:
        pool = self.run_.pool.for_send(self.source.due)
        ahead: collections.deque[asyncio.Future[list[Message | tuple[int, str]]]] = collections.deque()
        loop = asyncio.get_running_loop()
        clock = self.run_.clock
        try:
            for rows in self.pages():
                for start in range(0, len(rows), RENDER_BATCH if pool else 1):
                    if self.stopping:
                        break
                    batch = rows[start : start + (RENDER_BATCH if pool else 1)]
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
            self.run_.pool.broken()
        except Exception as exc:  # the state database failed while reading or postponing rows
            self.fail(exc)
        finally:
            for future in ahead:
                future.cancel()
            self.produced.set()

    def pages(self) -> Iterator[list[DueRow]]:
        """Due rows a page at a time, without those held back (quiet hours, caps)."""
        after = 0
        while not self.stopping:
            reserve = Reservation(self.run_.ident, iso(self.run_.clock.now()))
            rows = ledger.due_rows(self.db, self.source, now=iso(self.now), after_id=after, limit=PAGE, reserve=reserve)
            if not rows:
                return
            after = rows[-1].id
            held = self.holds.check(rows, now=self.run_.clock.now())
            for _ in held:
                self.note("postponed")
            yield [row for row in rows if row.id not in held]

    async def deliver(self, results: list[Message | tuple[int, str]]) -> None:
        for result in results:
            if isinstance(result, Message):
                await self.queue.put(result)
            else:  # one contact's bad data never stops a campaign
                row_id, reason = result
                outcome = Outcome(row_id, "failed", reason, iso(self.run_.clock.now()))
                self.write(outcome)
                self.note("failed")

    # --- the workers ------------------------------------------------------------------------------------------

    async def work(self) -> None:
        previous: Outcome | None = None
        while True:
            taken = await self.take(wait=0.2 if previous is not None else None)
            if taken is _IDLE:  # normally the next claim writes the outcome; nothing came soon: write it alone
                assert previous is not None
                self.write(previous)
                previous = None
                continue
            if taken is None:
                break
            if self.stopping:
                continue  # unclaimed: it stays queued for the next pass
            assert isinstance(taken, Message)
            previous = await self.send(taken, previous)
        if previous is not None:
            self.write(previous)

    async def take(self, *, wait: float | None) -> Message | object | None:
        """The next message; None when the producer is done and the queue empty; _IDLE after `wait` seconds."""
        if not self.queue.empty():
            return self.queue.get_nowait()
        if self.produced.is_set():
            return None
        getter = asyncio.ensure_future(self.queue.get())
        finished = asyncio.ensure_future(self.produced.wait())
        try:
            await asyncio.wait((getter, finished), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            finished.cancel()
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        if self.produced.is_set():
            return None if self.queue.empty() else self.queue.get_nowait()
        return _IDLE

    def write(self, outcome: Outcome) -> None:
        """Record one outcome on its own; if the database refuses, keep it for the next pass."""
        try:
            ledger.record(self.db, outcome, source=self.source)
        except Exception as exc:
            self.run_.pending.outcomes.append((outcome, self.source))
            self.fail(exc)

    async def send(self, message: Message, previous: Outcome | None) -> Outcome | None:
        """Hand the message to the transport, claiming its row at the point of no return (together with the
        previous outcome); returns the outcome still to be written, if any."""
        claimed: list[str] = []

        def at_point_of_no_return() -> bool:
            claimed.append(self.claim(message, previous))
            return claimed[0] == "claimed"

        try:
            delivery = await self.transport.send(
                self.envelope_from, message.recipient, message.data, on_wire=at_point_of_no_return
            )
        except Exception as exc:  # the claim failed: nothing was sent, the previous outcome was not written
            if previous is not None:
                self.run_.pending.outcomes.append((previous, self.source))
            self.fail(exc)
            return None
        clock, jitter = self.run_.clock, self.run_.jitter
        if not claimed:  # refused or unreachable before the point of no return: the row was never claimed
            if delivery.status == "unreachable":
                self.note("waiting")
                return previous  # nothing happened to this row; the previous outcome is still to be written
            outcome = judge(message, delivery, transport=self.transport, now=clock.now(), jitter=jitter)
            try:
                if ledger.refused(self.db, outcome, source=self.source, previous=previous) == "paused":
                    self.halt.set()
                    return None
            except Exception as exc:
                if previous is not None:
                    self.run_.pending.outcomes.append((previous, self.source))
                self.fail(exc)
                return None
            self.note(outcome.state)
            return None
        if claimed[0] == "paused":
            self.halt.set()
            return None
        if claimed[0] == "held":  # another daemon sent to this contact meanwhile: the row waits, as held rows do
            self.note("postponed")
            return None
        if claimed[0] != "claimed":
            self.note(claimed[0])
            return None
        outcome = judge(message, delivery, transport=self.transport, now=clock.now(), jitter=jitter)
        self.note(outcome.state)
        return outcome

    def claim(self, message: Message, previous: Outcome | None) -> str:
        return ledger.claim(
            self.db,
            message.row_id,
            source=self.source,
            dispatcher=self.run_.ident,
            message_id=message.message_id,
            blocking=self.blocking,
            marketing=self.holds.marketing,
            at=iso(self.run_.clock.now()),
            previous=previous,
            caps=self.holds.take_caps(message.row_id),
        )


async def send_once(transport: Transport, envelope_from: str, message: Message) -> Delivery:
    """One message that has no ledger row (`reconciler send-test`): nothing is claimed at the point of no return,
    no outcome is written and nothing is counted; the transport's connections are closed after it."""
    try:
        return await transport.send(envelope_from, message.recipient, message.data)
    finally:
        await transport.close()


def judge(
    message: Message, delivery: Delivery, *, transport: Transport, now: datetime, jitter: random.Random
) -> Outcome:
    """What a delivery attempt means for the row: sent; retried with backoff until `retry_for` has passed; a
    bounce (the address is suppressed); a policy refusal (counted against the campaign); or uncertain when the
    connection broke after the message was written (not sent again unless the transport says resend)."""
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
        retry = now + ledger.backoff(message.attempts + 1, jitter=jitter.random())
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
