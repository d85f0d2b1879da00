"""The reconcile loop: one pass (`reconcile_once`, also `reconciler tick`) and the daemon around it (`run`).

A pass: load → check → plan → apply, then start what is due and run the workflows. A workspace with errors changes
nothing: the error is recorded (log and `status`) and the last good revision stays in force — its scheduled
campaigns still start on time and its workflows still run, because both read the state, not the files.

The daemon sends in a thread of its own beside the reconcile loop (each with its own database connection and event
loop, `sendloop`), so an edit that pauses a campaign is applied while it sends, and the sender's next claim sees
it; neither loop, nor the web service, ever waits for the other's database work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watchfiles import Change
from watchfiles._rust_notify import RustNotify  # watchfiles' documented Rust backend, which awatch wraps

from reconciler import DEFAULT_PORT, allocator
from reconciler.apply import Applied, plan_and_apply
from reconciler.check import validate_workspace
from reconciler.clock import Clock, iso
from reconciler.errors import PermanentError, Problem
from reconciler.gitrepo import git_commit
from reconciler.health import Health
from reconciler.leader import LeaseKeeper
from reconciler.load import YAML_FOLDERS
from reconciler.plan import Plan
from reconciler.sendloop import SendLoop, wait_any
from reconciler.start import start_due
from reconciler.state import campaigns, keys, records, workflows
from reconciler.state.db import GIVING_UP
from reconciler.state.engine import StatePool, place_of, revive
from reconciler.state.lease import LeaseLost
from reconciler.state.location import StateLocation
from reconciler.state.postgres import StateDatabase
from reconciler.state.records import HEARTBEAT_SECONDS
from reconciler.workflow_runs import RunReport, run_workflows

if TYPE_CHECKING:
    from reconciler.web.metrics import Metrics

log = logging.getLogger(__name__)
STOP_GRACE = 10
"""Seconds after SIGTERM that messages on the wire and requests being answered have to finish."""
WATCHED = (*YAML_FOLDERS, "templates")
PRUNE_SECONDS = 24 * 3600.0
"""How often the daemon forgets old provider event ids and dead dispatcher registrations (and once at start)."""


@dataclass
class PassResult:
    """What one pass saw and did."""

    revision: str
    problems: list[Problem] = field(default_factory=list)
    plan: Plan | None = None
    applied: Applied | None = None
    started: list[str] = field(default_factory=list)
    workflows: RunReport = field(default_factory=RunReport)

    @property
    def valid(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


def reconcile_once(
    root: Path,
    db: StateDatabase,
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
        commit = git_commit(root)  # the pass shows only the plan's actions: no runs of unchanged workflows
        result.plan, result.applied = plan_and_apply(
            db, desired, now=now, git_commit=commit, confirm=confirm, whole=False
        )
    result.started = start_due(db, now=now)
    result.workflows = run_workflows(db, now=now)
    return result


def log_key_changes(db: StateDatabase) -> tuple[str, ...]:
    """At start: say when links in mail already sent no longer verify because the signing key changed (and when a
    new key signs while the previous ones still verify); the warnings, for /healthz and `status` to keep saying."""
    try:
        warnings, notes = keys.key_changes(db)
    except Exception as exc:  # a start is never stopped by this look back
        log.warning("could not compare the signing key with the keys that signed mail already sent: %s", exc)
        return ()
    for line in warnings:
        log.warning("%s", line)
    for line in notes:
        log.info("%s", line)
    return tuple(warnings)


def record_invalid(db: StateDatabase, revision: str, problems: list[Problem], *, now: datetime) -> None:
    """Remember why a revision was refused, for `status` (and /healthz): the first problems, formatted."""
    records.refuse_revision(db, revision, [p.format() for p in problems if p.severity == "error"], at=iso(now))


def _relevant(change: Change, path: str) -> bool:
    return path.endswith((".yaml", ".yml", ".mjml", ".txt", ".html"))


@dataclass(frozen=True)
class WebOptions:
    """Where the web service listens, and the state database it opens connections of its own to."""

    state: StateLocation | Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT

    @property
    def url(self) -> str:
        """http://host:port as a browser takes it (an IPv6 address in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def _listen(web: WebOptions) -> socket.socket:
    """The web service's listening socket, bound before the daemon starts anything else."""
    try:
        infos = socket.getaddrinfo(web.host, web.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        listening = socket.socket(family, kind, proto)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(address)
        listening.listen(2048)
    except OSError as exc:
        raise PermanentError(
            f"cannot listen on {web.url}: {exc.strerror or exc}; another process may be using "
            "it (choose another port with --port or RECONCILER_PORT)"
        ) from None
    listening.setblocking(False)
    return listening


def _web_server(web: WebOptions, *, clock: Clock, root: Path, health: Health) -> tuple[Any, Metrics, StatePool]:
    """uvicorn inside the daemon's event loop: the daemon owns SIGTERM and SIGINT and stops the server itself.
    Imported here, not at the top: `validate` and `plan` start without the web stack."""
    import uvicorn

    from reconciler.web import create_app

    class EmbeddedServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    app = create_app(web.state, clock=clock, root=root, health=health)
    config = uvicorn.Config(
        app,
        host=web.host,
        port=web.port,
        log_level="warning",
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=STOP_GRACE,
    )
    return EmbeddedServer(config), app.state.metrics, app.state.context.pool


async def run(
    root: Path,
    db: StateDatabase,
    *,
    clock: Clock,
    interval: float = 30.0,
    dispatch_db: StateDatabase | None = None,
    web: WebOptions | None = None,
    state: StateLocation | Path | None = None,
    lease_db: StateDatabase | None = None,
) -> None:
    """Watch the workspace and reconcile on every change, and at least every `interval` seconds; send what is due
    (with `dispatch_db`, a second connection to the same database, in a thread of its own); serve the web service
    (with `web`); on SIGTERM let messages on the wire finish, start no new ones, and stop. `state`: where the state
    is, for the free space beside a SQLite file. With `lease_db` (a connection of its own), several daemons may
    share the database: each registers and beats, and only the holder of the reconcile lease applies, starts and
    runs workflows (`leader`); the others send and serve."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    listening = _listen(web) if web is not None else None  # before anything starts: a busy port stops nothing
    GIVING_UP.clear()
    broken_links = log_key_changes(db)
    health = Health()
    health.stands(broken_links)
    changed = asyncio.Event()
    leader = await _lead(lease_db, health, changed) if lease_db is not None else None
    where = None if state is None else place_of(state).path
    keeper = _Keeper(health, clock=clock, state=where, leads=leader.holding if leader else None)
    server, metrics, pool = (None, None, None)
    if web is not None:
        server, metrics, pool = _web_server(web, clock=clock, root=root, health=health)
        if leader is not None:
            metrics.watch_lease(leader.holding)
    watchdog = asyncio.create_task(_interrupt_when_stopping(stop, [db, dispatch_db, lease_db], pool))
    sender = None
    if dispatch_db is not None:
        sender = _send_loop(dispatch_db, root, clock=clock, interval=interval, health=health, keeper=keeper)
        if metrics is not None:
            sender.on_pass = metrics.pass_seconds.observe
            metrics.watch_loop("send", lambda: sender.loop if sender is not None else None)
        sender.start()
    if server is not None and web is not None:
        serving = asyncio.create_task(server.serve(sockets=[listening] if listening else None))
        log.info("reconciler: serving %s", web.url)
    watcher = _watch(root, changed, stop)
    log.info("reconciler: watching %s for changes (a full pass at least every %ss)", root, f"{interval:g}")
    try:
        await _reconcile_loop(
            root,
            db,
            clock=clock,
            interval=interval,
            health=health,
            changed=changed,
            stop=stop,
            sender=sender,
            keeper=keeper,
            leader=leader,
        )
    finally:
        stop.set()
        watcher.cancel()
        if leader is not None:  # the pass has stopped: a daemon standing by may take over at once
            await asyncio.to_thread(leader.stop)
        if sender is not None:
            sender.stop()
            await asyncio.to_thread(sender.join)  # in-flight SMTP transactions finish; nothing new starts
        if server is not None:
            server.should_exit = True
            await serving
        if not GIVING_UP.is_set():
            await asyncio.to_thread(keeper.stopped, db)
        watchdog.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("reconciler: stopped")


async def _lead(lease_db: StateDatabase, health: Health, changed: asyncio.Event) -> LeaseKeeper:
    """The lease's heartbeat started (its first beat done: a lone daemon holds the lease for its first pass); taking
    the lease over sets `changed`, for the new holder's pass at once."""
    loop = asyncio.get_running_loop()

    def wake(holding: bool) -> None:
        loop.call_soon_threadsafe(changed.set)

    leader = LeaseKeeper(lease_db, status=lambda: health.report().status, on_change=wake)
    await asyncio.to_thread(leader.start)
    return leader


def _send_loop(
    dispatch_db: StateDatabase, root: Path, *, clock: Clock, interval: float, health: Health, keeper: _Keeper
) -> SendLoop:
    """The send loop, its record kept by `keeper` after each pass (every daemon sends, leading or not)."""
    return SendLoop(dispatch_db, root=root, clock=clock, interval=interval, health=health, after_pass=keeper.after_pass)


async def _interrupt_when_stopping(
    stop: asyncio.Event, connections: list[StateDatabase | None], pool: StatePool | None
) -> None:
    """SIGTERM always stops the daemon: STOP_GRACE seconds after it, whatever still waits for the database (a lock
    held by another process, a disk that cannot take the log) is interrupted, so the loops see the stop. A message
    whose outcome could not be written is found `sending` by the next start and reported uncertain. (On
    PostgreSQL, an interrupt cancels the statement running: a wait for the writers' lock, or a slow query.)"""
    await stop.wait()
    await asyncio.sleep(STOP_GRACE)
    log.warning("reconciler: still stopping after %ss; interrupting what waits for the state database", STOP_GRACE)
    GIVING_UP.set()
    while True:
        for db in connections:
            if db is not None:
                db.conn.interrupt()
        if pool is not None:
            pool.interrupt()
        await asyncio.sleep(0.5)


async def _reconcile_loop(
    root: Path,
    db: StateDatabase,
    *,
    clock: Clock,
    interval: float,
    health: Health,
    changed: asyncio.Event,
    stop: asyncio.Event,
    sender: SendLoop | None,
    keeper: _Keeper,
    leader: LeaseKeeper | None = None,
) -> None:
    """Passes on every change and every `interval`; after a failure, the next pass waits longer (1, 2, 4 ... s up to
    `interval`), whatever comes due meanwhile. With a `leader`, a pass runs only while this daemon holds the lease
    (fenced by it); otherwise the loop stands by until the lease is taken (which wakes it) or `interval` passes."""
    last_logged: str | None = None
    checked: dict[str, list[Problem]] = {}
    while not stop.is_set():
        changed.clear()
        if leader is not None and not leader.holding():
            health.pass_worked("reconcile")  # standing by is this loop working as it should
            if sender is not None:  # its first pass waits for this loop's word
                sender.wake()
            await wait_any((changed, stop), timeout=interval)
            continue
        started = time.monotonic()
        try:
            result = await asyncio.to_thread(_leading_pass, root, db, leader, now=clock.now(), checked=checked)
            health.pass_worked("reconcile")
            last_logged = _log_pass(result, last_logged)
            wait = _until_next_start(db, clock, interval)
        except LeaseLost as exc:  # another daemon took over while this pass ran: its writes stopped there
            log.warning("reconcile pass stopped: %s", exc)
            wait = leader.interval if leader is not None else interval
        except Exception as exc:  # the daemon never dies of one bad pass; the next one tries again
            health.pass_failed("reconcile", str(exc), at=iso(clock.now()), started=started)
            wait = min(interval, 2.0 ** (health.failures("reconcile") - 1))
            log.error("reconcile pass failed: %s; trying again in %ss", exc, f"{wait:g}", exc_info=_debug())
        if sender is not None:  # after a failed pass too: sending works from the state, whatever the files say
            sender.wake()
        if stop.is_set():
            return
        await asyncio.to_thread(keeper.after_pass, db)
        await wait_any((changed, stop), timeout=wait)


def _leading_pass(
    root: Path, db: StateDatabase, leader: LeaseKeeper | None, *, now: datetime, checked: dict[str, list[Problem]]
) -> PassResult:
    """One pass of the daemon, its writes fenced by the lease when there is one (in the worker thread that runs
    it), first making again a PostgreSQL connection the server closed since the last one: a restart or a failover
    costs the passes until the server answers again (each failure reported), not the daemon."""
    revive(db)
    if leader is None:
        return reconcile_once(root, db, now=now, checked=checked)
    with leader.fenced(db):
        return reconcile_once(root, db, now=now, checked=checked)


def _until_next_start(db: StateDatabase, clock: Clock, interval: float) -> float:
    """Until the next campaign starts or a workflow run is due, at most `interval`."""
    moments = [m for m in (campaigns.next_start(db), workflows.next_due(db)) if m is not None]
    if not moments:
        return interval
    upcoming = min(moments)
    return max(0.05, min(interval, (upcoming - clock.now()).total_seconds() + 0.01))


def _debug() -> bool:
    return log.isEnabledFor(logging.DEBUG)


class _Keeper:
    """Keeps the daemon's record for `reconciler status` (when its health changes, else every HEARTBEAT_SECONDS)
    and the free space beside the state database in view (`state`: its SQLite file; None on PostgreSQL, whose
    disk is the server's)."""

    def __init__(
        self, health: Health, *, clock: Clock, state: Path | None, leads: Callable[[], bool] | None = None
    ) -> None:
        self.health, self.clock, self.state = health, clock, state
        self.shared = leads is not None
        self.leads = leads or (lambda: True)
        """Whether this daemon's record is the one `status` shows: with several daemons, the lease holder's (each
        process's own health is in its heartbeat, `state.processes`)."""
        self.written: tuple[str, tuple[str, ...]] | None = None
        self.written_at = 0.0
        self.pruned_at = 0.0
        self.lock = threading.Lock()

    def stopped(self, db: StateDatabase) -> None:
        """The daemon's last record, on a clean stop: `status` then says it stopped, not that it is well."""
        if self.shared and not self._own_record(db):
            return  # the record is another daemon's: the lease holder's
        record = records.DaemonRecord(socket.gethostname(), os.getpid(), iso(self.clock.now()), "stopped", ())
        try:
            records.save_daemon(db, record)
        except Exception as exc:
            log.warning("could not record that the daemon stopped: %s", exc)

    def _own_record(self, db: StateDatabase) -> bool:
        try:
            record = records.daemon_record(db)
        except Exception:
            return False
        return record is not None and (record.host, record.pid) == (socket.gethostname(), os.getpid())

    def after_pass(self, db: StateDatabase) -> None:
        """After a pass of either loop (each with its own connection `db`)."""
        with self.lock:
            self._keep(db)
        allocator.trim()  # what a load freed goes back to the system, not to the daemon's high-water mark

    def _prune(self, db: StateDatabase) -> None:
        if time.monotonic() - self.pruned_at < PRUNE_SECONDS and self.pruned_at:
            return
        self.pruned_at = time.monotonic()
        try:
            forgotten = records.prune(db, now=self.clock.now())
        except Exception as exc:
            log.warning("could not prune old facts from the state database: %s", exc)
            return
        if any(forgotten.values()):
            log.info("pruned %s", ", ".join(f"{n} {what}" for what, n in forgotten.items() if n))

    def _keep(self, db: StateDatabase) -> None:
        self._prune(db)
        if self.state is not None:
            with contextlib.suppress(OSError):
                self.health.disk(shutil.disk_usage(self.state.parent).free)
        if not self.leads():
            self.written = None  # should it lead again, its record is written at once, over the other's
            return
        report = self.health.report()
        now = (report.status, report.problems)
        if now == self.written and time.monotonic() - self.written_at < HEARTBEAT_SECONDS:
            return
        record = records.DaemonRecord(socket.gethostname(), os.getpid(), iso(self.clock.now()), *now)
        try:
            records.save_daemon(db, record)
        except Exception as exc:  # /healthz still says it; the state database is what failed
            log.warning("could not record the daemon's health in the state database: %s", exc)
            return
        if now != self.written and report.problems:
            log.warning("reconciler is degraded: %s", "; ".join(report.problems))
        self.written, self.written_at = now, time.monotonic()


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
