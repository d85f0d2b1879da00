"""Sending is one more reconciliation: every ledger row that is due should be sent, once.

A pass (`Dispatcher.run_pass`): write the outcomes an earlier failed pass could not, settle rows left `sending`
(by a process that died, or by this one's failed pass), start the follow-up stages whose time has come, then send
each message definition with due rows (`send.SourceSender`), and mark campaigns whose every row has an outcome
`sent`. A relay that cannot be reached is probed with backoff before any of its rows are claimed again.

Everything works from the state database (the content stored when the campaign was scheduled, the Settings kept at
the last good revision), so a bad revision in the files never stops or changes a send. Transports follow the
Settings: when a revision changes a transport's settings, the next pass sends through the new ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from reconciler.audience import TRANSACTIONAL_BLOCKING, blocking_for, is_marketing
from reconciler.clock import Clock, iso
from reconciler.compose import CannotPrepare, RenderPool, confirmation_content, definition_for
from reconciler.errors import ReconcilerError
from reconciler.holds import Holds
from reconciler.ratelimits import SharedRateLimiter
from reconciler.send import Pending, Progress, SendRun, SourceSender
from reconciler.spec.documents import OutboxTransport, SmtpTransport
from reconciler.start import start_stages
from reconciler.state import campaigns, dispatchers, keys, ledger, pages, processes, records, settings, workflows
from reconciler.state.db import keep_cache
from reconciler.state.ledger import CONFIRMATION_SOURCE, Source
from reconciler.state.portable import is_postgres
from reconciler.state.postgres import StateDatabase
from reconciler.state.settings import RuntimeSettings
from reconciler.transports import Transport, make_transport

log = logging.getLogger(__name__)
DISPATCH_CACHE_SHARE = 1 / 4
"""The sending connection's page cache: sending reads and updates rows by index, so a small cache keeps memory
flat however large the audience."""
HEARTBEAT = 10.0
STALE = timedelta(minutes=2)
"""A dispatcher on another host whose heartbeat is this old is gone; its `sending` rows are settled."""

__all__ = ["DispatchFailed", "DispatchReport", "Dispatcher", "Progress"]


class DispatchFailed(ReconcilerError):
    """The state database failed during a pass; the next pass carries on from where it stopped."""


@dataclass
class DispatchReport:
    sources: list[Progress] = field(default_factory=list)
    stages_started: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    uncertain: int = 0
    relays_down: dict[str, str] = field(default_factory=dict)
    """Transports that cannot be reached, with why: their messages wait."""
    blocked: dict[str, str] = field(default_factory=dict)
    """Message definitions that cannot be prepared ("Campaign x"), with why: their messages wait."""

    def count(self, state: str) -> int:
        return sum(p.outcomes.get(state, 0) for p in self.sources)


@dataclass
class _Built:
    transport: Transport
    config: SmtpTransport | OutboxTransport


class Dispatcher:
    """Sends what is due, pass after pass; one per process (its id marks the rows it holds while sending)."""

    def __init__(
        self,
        db: StateDatabase,
        *,
        root: Path,
        clock: Clock,
        transports: Mapping[str, Transport] | None = None,
        stop: asyncio.Event | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_beat: Callable[[DispatchReport], None] | None = None,
    ) -> None:
        self.db, self.root, self.clock = db, root, clock
        self.on_beat = on_beat
        """Called every HEARTBEAT seconds of a pass that sends, with the pass so far (`live`)."""
        self.current: Progress | None = None
        keep_cache(db, DISPATCH_CACHE_SHARE)
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.ident = f"{self.host}:{self.pid}:{secrets.token_hex(3)}"
        self.fixed_transports = dict(transports or {})
        self.built: dict[str, _Built] = {}
        self.retired: list[Transport] = []
        self.stop = stop or asyncio.Event()
        self.run = SendRun(db, clock, self.ident, self.stop, RenderPool(), Pending(), on_progress)

    def transport(self, name: str, runtime: RuntimeSettings) -> Transport:
        """The transport `name` as the Settings applied now describe it; one built from older Settings is
        replaced (and closed after the pass)."""
        if name in self.fixed_transports:
            return self.fixed_transports[name]
        config = runtime.transport(name)
        if config is None:
            known = ", ".join(sorted(runtime.settings.transports))
            raise CannotPrepare(
                f"transport {name!r} is not in the Settings any more (transports: {known}); its messages wait until "
                "it is added back"
            )
        built = self.built.get(name)
        if built is not None and built.config != config:
            self.retired.append(built.transport)
            log.info("transport %s: settings changed; sending through the new ones", name)
            built = None
        if built is None:
            limiter = None
            if is_postgres(self.db) and isinstance(config, SmtpTransport):  # daemons sending side by side share it
                limiter = SharedRateLimiter(self.db, name, config.rate)
            built = self.built[name] = _Built(make_transport(name, config, root=self.root, limiter=limiter), config)
        return built.transport

    async def close(self) -> None:
        for transport in [*(b.transport for b in self.built.values()), *self.retired]:
            await transport.close()
        self.built.clear()
        self.retired.clear()
        self.run.pool.close()

    async def run_pass(self) -> DispatchReport:
        """One dispatch pass over everything due now; raises DispatchFailed when the state database fails. A pass
        with nothing to send writes nothing (an idle daemon does not write)."""
        report = DispatchReport()
        now = self.clock.now()
        try:
            self.run.pending.flush(self.db)
            runtime = settings.load(self.db)
            report.uncertain = self.recover(now, runtime)
            report.stages_started = start_stages(self.db, now=now)
            sources = (
                self.confirmations(now, runtime) + ledger.due_sources(self.db, now=iso(now)) + self.workflow_steps(now)
            )
            if sources:
                await self._send_all(sources, runtime, now, report)
            report.finished = self.finish(now)
        except DispatchFailed:
            raise
        except Exception as exc:
            raise DispatchFailed(f"the pass failed: {exc}") from exc
        finally:
            await self._retire()
        return report

    async def _send_all(
        self, sources: list[Source], runtime: RuntimeSettings, now: datetime, report: DispatchReport
    ) -> None:
        """Send each source, registered (with a heartbeat) while rows may be on the wire."""
        # by the real time, as its heartbeat and other daemons' recovery go (not `now`: `tick --now` in the past
        # beside a running daemon would look gone to it, its messages on the wire settled as uncertain)
        dispatchers.register(self.db, self.ident, host=self.host, pid=self.pid, at=iso(datetime.now(UTC)))
        beat = asyncio.create_task(self._heartbeat(report))
        try:
            for source in sources:
                if self.stop.is_set():
                    break
                await self._send(source, runtime, now, report)
        finally:
            beat.cancel()
            try:
                dispatchers.unregister(self.db, self.ident)
            except Exception:
                log.warning("could not remove this dispatcher's registration; the next pass renews it")

    async def _send(self, source: Source, runtime: RuntimeSettings, now: datetime, report: DispatchReport) -> None:
        try:
            transport = self.transport(source.content.transport, runtime)
            if not await self._reachable(transport, report):
                return
            definition = definition_for(self.db, source, runtime=runtime)
            keys.note_signing(self.db, definition.signer)  # a later start with another key can say what breaks
            sender = SourceSender(
                self.run,
                source,
                definition,
                transport,
                Holds(self.db, runtime.settings, marketing=self._marketing(source)),
                blocking=TRANSACTIONAL_BLOCKING
                if source.transactional
                else blocking_for(records.lists(self.db), source.lists),
                now=now,
            )
            self.current = sender.progress
            try:
                report.sources.append(await sender.run())
            finally:
                self.current = None
            if transport.breaker.down:
                report.relays_down[transport.name] = transport.breaker.last_error
            if source.kind == "campaign":
                campaigns.unblock(self.db, source.name, at=iso(now))
        except CannotPrepare as exc:
            log.error("%s: %s", source.label, exc)
            report.blocked[source.label] = str(exc)
            if source.kind == "campaign":
                campaigns.block(self.db, source.name, why=str(exc), at=iso(now))
        except Exception as exc:
            raise DispatchFailed(f"{source.label}: the state database failed: {exc}") from exc

    def _marketing(self, source: Source) -> bool:
        """Quiet hours and caps hold marketing campaigns and workflows, never transactional mail or opt-in
        confirmations."""
        if source.transactional or (source.name == CONFIRMATION_SOURCE and source.kind == "workflow"):
            return False
        return is_marketing(records.lists(self.db), source.lists)

    async def _reachable(self, transport: Transport, report: DispatchReport) -> bool:
        """False while the transport's relay is down; a probe (with backoff) brings it back."""
        breaker = transport.breaker
        if breaker.down and breaker.probe_due():
            problem = await transport.probe()
            if problem is None:
                log.info("transport %s: the relay answers again; sending resumes", transport.name)
                breaker.success()
            else:
                breaker.probe_failed(problem)
        if breaker.down:
            report.relays_down[transport.name] = breaker.last_error
            return False
        return True

    async def _retire(self) -> None:
        while self.retired:
            await self.retired.pop().close()
        for built in self.built.values():
            await built.transport.close_idle()

    async def _heartbeat(self, report: DispatchReport) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            if self.on_beat is not None:  # a long pass says how it goes while it goes, not only at its end
                self.on_beat(self.live(report))
            at = iso(datetime.now(UTC))
            try:
                dispatchers.heartbeat(self.db, self.ident, host=self.host, pid=self.pid, at=at)
            except Exception as exc:  # the pass will find out; a missed beat only ages the registration
                log.warning("dispatcher heartbeat not written: %s", exc)

    def live(self, report: DispatchReport) -> DispatchReport:
        """The pass so far: relays as their breakers say now, and the source being sent with its progress."""
        built = [b.transport for b in self.built.values()]
        relays = {t.name: t.breaker.last_error for t in built if t.breaker.down}
        sources = [*report.sources, *([self.current] if self.current is not None else [])]
        return DispatchReport(sources=sources, relays_down=relays, blocked=dict(report.blocked))

    def next_probe(self) -> float | None:
        """Seconds until the earliest probe of a relay that is down, if any."""
        probes = [b.transport.breaker.next_probe for b in self.built.values() if b.transport.breaker.down]
        return max(0.0, min(probes) - time.monotonic()) if probes else None

    def confirmations(self, now: datetime, runtime: RuntimeSettings) -> list[Source]:
        """Double opt-in confirmation emails (no advertising), sent through the ledger like everything else."""
        lists = records.lists(self.db)
        content = confirmation_content(runtime, pages.load(self.db))
        return [
            Source("workflow", CONFIRMATION_SOURCE, stage, content, (stage.split(":", 1)[0],), due, requires="pending")
            for stage, due in ledger.due_confirmations(self.db, now=iso(now))
            if stage.split(":", 1)[0] in lists
        ]

    def workflow_steps(self, now: datetime) -> list[Source]:
        """Messages of workflow runs, one source per send step. A paused workflow's messages wait with its runs;
        those of a step that no longer exists are skipped."""
        stored = workflows.load_workflows(self.db)
        sources = []
        for name, step, due in ledger.due_steps(self.db, now=iso(now)):
            record = stored.get(name)
            if record is None or record.workflow.status == "paused":
                continue
            content = record.contents.get(step)
            if content is None:
                why = f"not sent: step {step} was removed from workflow {name}"
                ledger.skip_waiting(self.db, name, step, why=why, at=iso(now))
                continue
            lists = (record.list_name,) if record.list_name else ()
            requires: Literal["subscribed", "none"] = "none" if record.transactional or not lists else "subscribed"
            sources.append(Source("workflow", name, step, content, lists, due, requires, record.transactional))
        return sources

    def recover(self, now: datetime, runtime: RuntimeSettings) -> int:
        """Settle rows left `sending` (past the point of no return) by a process that stopped, or by this one's
        earlier pass that failed: uncertain, or queued again where the transport says `on_uncertain: resend`.
        Returns how many became uncertain."""
        found = dispatchers.interrupted(
            self.db,
            host=self.host,
            alive=processes.pid_alive,
            stale_before=iso(datetime.now(UTC) - STALE),
            own=self.ident,
        )
        uncertain: list[int] = []
        resend: list[int] = []
        for row in found.rows:
            try:
                transport = self.transport(row.transport or runtime.settings.defaults.transport, runtime)
                again = transport.on_uncertain == "resend"
            except CannotPrepare:  # its transport is gone: the careful answer
                again = False
            (resend if again else uncertain).append(row.row_id)
        if found.rows or found.gone:
            dispatchers.settle_interrupted(self.db, uncertain=uncertain, resend=resend, forget=found.gone, at=iso(now))
        if found.rows:
            log.warning(
                "%d message(s) were on the wire when a dispatcher stopped: %d marked uncertain (not sent again), "
                "%d queued to resend",
                len(found.rows),
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
