"""The reconcile loop: one pass (`reconcile_once`, also `reconciler tick`) and the daemon around it (`run`).

A pass: load → check → plan → apply, then start what is due. A workspace with errors changes nothing: the
error is recorded (log and `status`) and the last good revision stays in force — its scheduled campaigns still
start on time, because starting reads the state, not the files.

The daemon sends in a task of its own beside the reconcile loop (each with its own database connection), so an
edit that pauses a campaign is applied while it sends, and the dispatcher's next claim sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database
from watchfiles import Change
from watchfiles._rust_notify import RustNotify  # watchfiles' documented Rust backend, which awatch wraps

from reconciler.apply import Applied, plan_and_apply
from reconciler.check import validate_workspace
from reconciler.clock import Clock, iso
from reconciler.dispatch import Dispatcher, DispatchReport
from reconciler.errors import Problem
from reconciler.load import YAML_FOLDERS, git_commit
from reconciler.plan import Plan
from reconciler.start import start_due
from reconciler.state import campaigns, ledger, records

if TYPE_CHECKING:
    from reconciler.web.metrics import Metrics

log = logging.getLogger(__name__)
WATCHED = (*YAML_FOLDERS, "templates")


@dataclass
class PassResult:
    """What one pass saw and did."""

    revision: str
    problems: list[Problem] = field(default_factory=list)
    plan: Plan | None = None
    applied: Applied | None = None
    started: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


def reconcile_once(
    root: Path,
    db: Database,
    *,
    now: datetime,
    confirm: Collection[str] = (),
    checked: dict[str, list[Problem]] | None = None,
) -> PassResult:
    """One pass. `checked` remembers the last revision's problems: the revision is a hash of every file, so an
    unchanged workspace is not compiled and rendered again on each periodic pass."""
    desired, problems = validate_workspace(root, checked=checked)
    result = PassResult(desired.revision, problems)
    if not result.valid:
        record_invalid(db, desired.revision, result.problems, now=now)
    else:
        result.plan, result.applied = plan_and_apply(db, desired, now=now, git_commit=git_commit(root), confirm=confirm)
    result.started = start_due(db, now=now)
    return result


def record_invalid(db: Database, revision: str, problems: list[Problem], *, now: datetime) -> None:
    """Remember why a revision was refused, for `status` (and /healthz): the first problems, formatted."""
    records.refuse_revision(db, revision, [p.format() for p in problems if p.severity == "error"], at=iso(now))


def _relevant(change: Change, path: str) -> bool:
    return path.endswith((".yaml", ".yml", ".mjml", ".txt"))


@dataclass(frozen=True)
class WebOptions:
    """Where the web service listens, and the state database it opens connections of its own to."""

    state: Path
    host: str = "127.0.0.1"
    port: int = 8025


def _web_server(web: WebOptions, *, clock: Clock, root: Path) -> tuple[Any, Metrics]:
    """uvicorn inside the daemon's event loop: the daemon owns SIGTERM and SIGINT and stops the server itself.
    Imported here, not at the top: `validate` and `plan` start without the web stack."""
    import uvicorn

    from reconciler.web import create_app

    class EmbeddedServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    app = create_app(web.state, clock=clock, root=root)
    config = uvicorn.Config(app, host=web.host, port=web.port, log_level="warning", lifespan="on", access_log=False)
    return EmbeddedServer(config), app.state.metrics


async def run(
    root: Path,
    db: Database,
    *,
    clock: Clock,
    interval: float = 30.0,
    dispatch_db: Database | None = None,
    web: WebOptions | None = None,
) -> None:
    """Watch the workspace and reconcile on every change, and at least every `interval` seconds; send what is due
    (with `dispatch_db`, a second connection to the same file); serve the web service (with `web`); on SIGTERM let
    messages on the wire finish, start no new ones, and stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    changed = asyncio.Event()
    wake = asyncio.Event()
    dispatcher = Dispatcher(dispatch_db, root=root, clock=clock, stop=stop) if dispatch_db is not None else None
    server, metrics = _web_server(web, clock=clock, root=root) if web is not None else (None, None)
    sender = asyncio.create_task(_send_loop(dispatcher, wake, stop, interval, metrics)) if dispatcher else None
    if server is not None and web is not None:
        serving = asyncio.create_task(server.serve())
        log.info("reconciler: serving http://%s:%d", web.host, web.port)
    last_logged: str | None = None
    checked: dict[str, list[Problem]] = {}
    watcher = _watch(root, changed, stop)
    log.info("reconciler: watching %s for changes (a full pass at least every %ss)", root, f"{interval:g}")
    try:
        while not stop.is_set():
            changed.clear()
            try:
                result = await asyncio.to_thread(reconcile_once, root, db, now=clock.now(), checked=checked)
                last_logged = _log_pass(result, last_logged)
                wake.set()
            except Exception:  # the daemon never dies of one bad pass; the next one tries again
                log.exception("reconcile pass failed; trying again in %ss", f"{interval:g}")
            await _sleep(db, clock, interval, changed, stop)
    finally:
        stop.set()
        watcher.cancel()
        if sender is not None:
            await sender  # in-flight SMTP transactions finish; nothing new starts
        if server is not None:
            server.should_exit = True
            await serving
        if dispatcher is not None:
            await dispatcher.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("reconciler: stopped")


async def _send_loop(
    dispatcher: Dispatcher, wake: asyncio.Event, stop: asyncio.Event, interval: float, metrics: Metrics | None = None
) -> None:
    """Dispatch passes: after every reconcile pass, when a retry or a local send time comes due, and every interval."""
    while not stop.is_set():
        wake.clear()
        try:
            started = time.monotonic()
            report = await dispatcher.run_pass()
            if metrics is not None:
                metrics.pass_seconds.observe(time.monotonic() - started)
            _log_dispatch(report)
        except Exception:  # a failing SMTP server or a bad row never ends the daemon
            log.exception("dispatch pass failed; trying again in %ss", f"{interval:g}")
        wait = interval
        upcoming = ledger.next_due(dispatcher.db)
        if upcoming is not None:
            wait = max(0.05, min(wait, (datetime.fromisoformat(upcoming) - dispatcher.clock.now()).total_seconds()))
        await _wait_any((wake, stop), timeout=wait)


def _log_dispatch(report: DispatchReport) -> None:
    for progress in report.sources:
        if progress.done:
            log.info(
                "Campaign %s: %s",
                progress.source,
                ", ".join(f"{state} {count:,}" for state, count in sorted(progress.outcomes.items())),
            )


async def _sleep(db: Database, clock: Clock, interval: float, changed: asyncio.Event, stop: asyncio.Event) -> None:
    wait = interval
    upcoming = campaigns.next_start(db)
    if upcoming is not None:
        wait = max(0.05, min(wait, (upcoming - clock.now()).total_seconds() + 0.01))
    await _wait_any((changed, stop), timeout=wait)


async def _wait_any(events: tuple[asyncio.Event, ...], *, timeout: float) -> None:
    """Until one of `events` is set or `timeout` seconds pass."""
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiters:
            task.cancel()


def _watch(root: Path, changed: asyncio.Event, stop: asyncio.Event) -> asyncio.Future[None]:
    """Watch the workspace's folders from now on and set `changed` after each burst of relevant changes (debounced
    over 300 ms), until `stop`. The watcher is in place when this returns, so no edit after it is missed, even one
    made during the first pass (watchfiles' `awatch` would only start watching when first iterated)."""
    folders = [str(root / name) for name in WATCHED if (root / name).is_dir()]
    polling = os.environ.get("WATCHFILES_FORCE_POLLING", "").lower() not in ("", "false", "disable", "disabled")
    notify = RustNotify(folders, False, polling, 300, True, False)
    loop = asyncio.get_running_loop()

    def wait_for_changes() -> None:
        with notify:  # closed in this thread, after its last watch() returned
            while not stop.is_set():  # watch() sees `stop` within one 50 ms step and returns "stop"
                try:
                    batch = notify.watch(300, 50, 0, stop)
                except Exception:
                    log.exception("watching %s failed; changes are seen by the periodic pass only", root)
                    return
                if isinstance(batch, set) and any(_relevant(Change(kind), path) for kind, path in batch):
                    loop.call_soon_threadsafe(changed.set)

    return loop.run_in_executor(None, wait_for_changes)


def _log_pass(result: PassResult, last_logged: str | None) -> str | None:
    if not result.valid:
        if last_logged != f"invalid {result.revision}":
            errors = [p for p in result.problems if p.severity == "error"]
            log.error(
                "revision %s has %d error(s); the last good revision stays in force:\n  %s",
                result.revision,
                len(errors),
                "\n  ".join(p.format() for p in errors[:10]),
            )
        return f"invalid {result.revision}"
    if result.applied and result.applied.actions and result.plan:
        for action in result.plan.actions:
            log.info("%s: %s", action.subject, action.summary)
        log.info("revision %s applied: %d change(s)", result.revision, result.applied.actions)
    for problem in result.plan.problems if result.plan else []:
        if last_logged != f"valid {result.revision}":
            log.warning("%s", problem.format())
    return f"valid {result.revision}"
