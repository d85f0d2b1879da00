"""The send loop under faults: a database that fails mid-pass, rows a live process left behind, a recovery that
must not touch a live dispatcher, and contacts erased while their messages wait.

These run the dispatcher in this process (so a fault can be injected at the SQLite layer with an authorizer that
denies writes) against a real SMTP server and a real state file.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from reconciler.clock import FixedClock, SystemClock, iso, parse_instant
from reconciler.daemon import reconcile_once
from reconciler.dispatch import Dispatcher, DispatchFailed, DispatchReport
from reconciler.state import dispatchers
from reconciler.state import ledger as state_ledger
from reconciler.state.contacts import erase_contact
from reconciler.transports import Delivery, MemoryTransport
from sending import NOW, import_contacts, ledger, query, workspace
from smtp_sink import Sink, SinkServer
from state_helpers import RefusedWrites, open_state

CLOCK = FixedClock(parse_instant(NOW))
T = TypeVar("T")
BOUND = 120.0
"""Seconds a scenario below may take; these passes take a few seconds. A pass that never ends (a producer waiting
forever on a full queue nobody reads) cannot be cancelled from inside its event loop, so the loop runs in a thread
of its own and the test fails when the thread outlives this, with every stack of that loop in the failure."""


def bounded(scenario: Callable[[], Awaitable[T]], *, within: float = BOUND) -> T:
    """Run `scenario()` in an event loop in a thread of its own; fail the test if it is not done `within` seconds
    (the thread is left behind, a daemon thread, so the test run goes on)."""
    results: list[T] = []
    errors: list[BaseException] = []
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        results.append(await scenario())

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="bounded-scenario", daemon=True)
    thread.start()
    thread.join(within)
    if thread.is_alive():
        frame = sys._current_frames().get(thread.ident or 0)
        stacks = "".join(traceback.format_stack(frame)) if frame is not None else ""
        for task in asyncio.all_tasks(loops[0]) if loops else ():
            out = io.StringIO()
            task.print_stack(file=out)
            stacks += "\n" + out.getvalue()
        pytest.fail(f"the scenario was still running after {within:g} s (a pass that never ends):\n{stacks}")
    if errors:
        raise errors[0]
    return results[0]


async def _pass_that_breaks(
    dispatcher: Dispatcher, sink: Sink, refused: RefusedWrites, *, after: int
) -> BaseException | None:
    """Run a pass; once `after` messages arrived, the database refuses every ledger write."""

    async def break_it() -> None:
        while len(sink.messages) < after:
            await asyncio.sleep(0.01)
        refused.refuse("ledger")

    breaker = asyncio.create_task(break_it())
    try:
        await dispatcher.run_pass()
    except DispatchFailed as exc:
        return exc
    finally:
        breaker.cancel()
    return None


def test_a_database_error_mid_pass_fails_that_pass_and_the_next_pass_sends_the_rest(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port, connections=4)
        emails = import_contacts(root, 400)
        db = open_state(root)
        refused = RefusedWrites(db)
        assert reconcile_once(root, db, now=CLOCK.now()).started == ["hello"]

        async def scenario() -> BaseException | None:
            dispatcher = Dispatcher(db, root=root, clock=CLOCK)
            try:
                failure = await _pass_that_breaks(dispatcher, sink, refused, after=100)
                refused.allow()
                await dispatcher.run_pass()
                return failure
            finally:
                await dispatcher.close()

        failure = bounded(scenario)
    assert failure is not None and "not authorized" in str(failure)
    received = sink.received()
    assert max(received.values()) == 1
    counts = ledger(root)
    assert counts["sent"] + counts["uncertain"] == 400 and not counts["sending"]
    assert counts["uncertain"] <= 4  # at most one message on the wire per connection when the writes stopped
    uncertain = query(
        root, "SELECT c.email FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE l.state = 'uncertain'"
    )
    assert set(emails) - set(received) <= {str(row[0]) for row in uncertain}


def test_rows_a_live_daemon_left_sending_are_settled_by_its_next_pass_without_a_restart(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port, connections=2)
        import_contacts(root, 50)
        db = open_state(root)
        refused = RefusedWrites(db)
        reconcile_once(root, db, now=CLOCK.now())

        async def scenario() -> None:
            dispatcher = Dispatcher(db, root=root, clock=CLOCK)
            try:
                await _pass_that_breaks(dispatcher, sink, refused, after=10)
                refused.allow()
                await dispatcher.run_pass()
            finally:
                await dispatcher.close()

        bounded(scenario)
    assert not ledger(root)["sending"]
    assert ledger(root)["sent"] + ledger(root)["uncertain"] == 50
    assert max(sink.received().values()) == 1


def test_a_row_its_own_failed_pass_left_sending_with_no_outcome_kept_is_settled_by_the_next_pass(
    tmp_path: Path,
) -> None:
    """The pass dies between a claim and its outcome: right after the point of no return the database stops taking
    writes and the transport fails. The row stays `sending`, claimed by this very dispatcher, whose registration
    (it could not be removed) is fresh, so it looks alive to recovery; no outcome of that row was kept for the next
    pass. Only the rule that a dispatcher's own `sending` rows are leftovers of its earlier pass settles it."""
    root = workspace(tmp_path, 1)  # the memory transport below stands in for the relay
    import_contacts(root, 6)
    db = open_state(root)
    refused = RefusedWrites(db)
    reconcile_once(root, db, now=CLOCK.now())
    tries: list[str] = []

    def reply(recipient: str, data: bytes) -> Delivery:
        tries.append(recipient)
        if len(tries) == 3:
            refused.refuse(deletes=True)
            raise OSError("the process lost its footing right after the body went out")
        return Delivery("sent", "250 ok", 250)

    memory = MemoryTransport(name="sink", max_connections=1, reply=reply)

    async def scenario() -> tuple[BaseException | None, set[int], set[int]]:
        # the real clock: the registration is fresh, so a stale heartbeat does not settle the row either
        dispatcher = Dispatcher(db, root=root, clock=SystemClock(), transports={"sink": memory})
        try:
            try:
                await dispatcher.run_pass()
            except DispatchFailed as exc:
                failure: BaseException | None = exc
            else:
                failure = None
            refused.allow()
            stuck = left_sending(root)
            kept = {outcome.row_id for outcome, _ in dispatcher.run.pending.outcomes}
            registered = {str(row[0]) for row in db.conn.execute("SELECT id FROM dispatchers")}
            assert registered == {dispatcher.ident}  # alive and fresh, as far as recovery can tell
            await dispatcher.run_pass()  # the same dispatcher: no restart
            return failure, stuck, kept
        finally:
            await dispatcher.close()

    failure, stuck, kept = bounded(scenario)
    assert failure is not None and "lost its footing" in str(failure)
    assert len(stuck) == 1 and not stuck & kept  # cut off between claim and outcome, and no outcome of it kept
    counts = ledger(root)
    assert not counts["sending"], "the row this dispatcher's failed pass left sending was never settled"
    assert counts == {"sent": 5, "uncertain": 1}
    assert len(memory.messages) == 5


def left_sending(root: Path) -> set[int]:
    return {int(str(row[0])) for row in query(root, "SELECT id FROM ledger WHERE state = 'sending'")}


def test_recovery_in_another_process_leaves_a_live_dispatchers_registration_alone(tmp_path: Path) -> None:
    root = workspace(tmp_path, 1)  # no server needed: no message is sent
    db = open_state(root)
    host = socket.gethostname()
    live = f"{host}:{os.getpid()}:live"  # another dispatcher of a running process, which beat 5 s ago
    dispatchers.register(db, live, host=host, pid=os.getpid(), at=iso(datetime.now(UTC) - timedelta(seconds=5)))
    import_contacts(root, 1)
    reconcile_once(root, db, now=CLOCK.now())
    dead = f"{host}:999999999:dead"  # a process that is gone, which left a row on the wire
    dispatchers.register(db, dead, host=host, pid=999_999_999, at="2026-11-24T09:59:00Z")
    db.conn.execute("UPDATE ledger SET state = 'sending', claimed_by = ?", (dead,))
    other = Dispatcher(db, root=root, clock=SystemClock())
    asyncio.run(other.run_pass())
    registered = {row[0] for row in db.conn.execute("SELECT id FROM dispatchers")}
    assert live in registered, "a live dispatcher lost its registration to another process's recovery"


def test_an_erased_contacts_waiting_message_is_skipped_and_the_campaign_finishes(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        import_contacts(root, 3)
        db = open_state(root)
        reconcile_once(root, db, now=CLOCK.now())
        erase_contact(db, "person1@example.net", at="2026-11-24T10:00:00Z")

        async def one_pass() -> DispatchReport:
            dispatcher = Dispatcher(db, root=root, clock=CLOCK)
            try:
                return await dispatcher.run_pass()
            finally:
                await dispatcher.close()

        report = asyncio.run(one_pass())
    assert report.finished == ["hello"]
    assert ledger(root) == Counter(sent=2, skipped=1)
    reply = query(root, "SELECT last_reply FROM ledger WHERE state = 'skipped'")[0][0]
    assert "erased" in str(reply)
    assert state_ledger.next_due(db) is None


@pytest.fixture(autouse=True)
def _no_render_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_RENDER_PROCESSES", "0")
