"""Several daemons dispatching from one PostgreSQL database, each through connections of its own (threads here, as
the daemons' send loops are): pages of due rows reserved with FOR UPDATE SKIP LOCKED, claims that wait neither for
the writers' lock nor for a row another process holds, each row claimed once, the frequency cap and the
transports' rate limits kept together."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.check import validate_workspace
from reconciler.clock import FixedClock, iso
from reconciler.daemon import reconcile_once
from reconciler.dispatch import STALE, Dispatcher
from reconciler.holds import Holds
from reconciler.imports import import_file
from reconciler.ratelimits import SharedRateLimiter
from reconciler.spec.documents import Rate
from reconciler.state import dispatchers, ledger, rates, settings
from reconciler.state.db import open_postgres, write
from reconciler.state.ledger import Outcome, Source
from reconciler.state.sharing import Reservation
from sending import workspace
from smtp_sink import Sink, SinkServer

pytestmark = pytest.mark.postgresql
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
AT = iso(NOW)


@pytest.fixture
def connections(postgres_url: str) -> Iterator[list[Any]]:
    """Three connections to one fresh database: the first migrates it, as the first daemon to start does."""
    opened = [open_postgres(postgres_url)] + [open_postgres(postgres_url, migrate=False) for _ in range(2)]
    yield opened
    for db in opened:
        db.close()


def _due(root: Path, db: Any, people: int) -> list[Source]:
    """`people` contacts on the list `news`, the workspace applied and its campaigns started: their sources."""
    (root / "contacts.csv").write_text(
        "email,first_name\n" + "".join(f"p{i}@example.net,P{i}\n" for i in range(people))
    )
    desired, problems = validate_workspace(root)
    assert not [p for p in problems if p.severity == "error"], problems
    import_file(db, desired, root / "contacts.csv", lists=["news"], consent_text="t", now=NOW, preconfirmed=True)
    result = reconcile_once(root, db, now=NOW)
    assert result.valid and result.started, result.problems
    return ledger.due_sources(db, now=AT)


def _claim(db: Any, row_id: int, source: Source, who: str, previous: Outcome | None, **more: Any) -> str:
    return ledger.claim(
        db,
        row_id,
        source=source,
        dispatcher=who,
        message_id=f"<{row_id}.{who}@x>",
        blocking=(),
        marketing=True,
        at=AT,
        previous=previous,
        **more,
    )


def _states(db: Any) -> Counter[str]:
    return Counter(dict(db.conn.execute("SELECT state, count(*) FROM ledger GROUP BY state").fetchall()))


def _together(*work: Any) -> None:
    """Run each callable in a thread of its own, all started at one moment; re-raise the first failure."""
    barrier = threading.Barrier(len(work))
    failures: list[BaseException] = []

    def run(job: Any) -> None:
        barrier.wait()
        try:
            job()
        except BaseException as exc:  # handed to the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a dispatcher is still waiting"
    if failures:
        raise failures[0]


def test_two_dispatchers_paging_2000_due_rows_at_once_each_claim_their_own(tmp_path: Path, connections: Any) -> None:
    [source] = _due(workspace(tmp_path, 25), connections[0], 2000)
    claimed: dict[str, list[int]] = defaultdict(list)
    answers: Counter[str] = Counter()

    def dispatcher(who: str, db: Any) -> None:
        after, previous = 0, None
        while rows := ledger.due_rows(db, source, now=AT, after_id=after, limit=50, reserve=Reservation(who, AT)):
            after = rows[-1].id
            for row in rows:
                answer = _claim(db, row.id, source, who, previous)
                answers[answer] += 1
                previous = Outcome(row.id, "sent", "250 ok", AT) if answer == "claimed" else None
                if answer == "claimed":
                    claimed[who].append(row.id)
        if previous is not None:
            ledger.record(db, previous, source=source)

    _together(lambda: dispatcher("d1", connections[1]), lambda: dispatcher("d2", connections[2]))
    first, second = set(claimed["d1"]), set(claimed["d2"])
    assert len(first) > 100 and len(second) > 100, (len(first), len(second))  # both got work
    assert not first & second and len(first | second) == 2000
    assert answers == Counter(claimed=2000)  # the pages did not overlap: no claim found its row taken
    assert _states(connections[0]) == Counter(sent=2000)
    assert connections[0].conn.execute("SELECT count(*) FROM ledger WHERE reserved_by IS NOT NULL").fetchone()[0] == 0


def test_two_daemons_dispatching_2000_messages_through_one_relay_send_each_once(
    tmp_path: Path, connections: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemons' own dispatchers (passes until one sends nothing), each on its connection and event loop, four
    SMTP connections each, to one relay: every recipient gets exactly one message, and both daemons sent."""
    monkeypatch.setenv("RECONCILER_RENDER_PROCESSES", "0")
    monkeypatch.setenv("RECONCILER_SECRET", "test-secret")
    sent: Counter[str] = Counter()
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        _due(root, connections[0], 2000)

        def daemon(who: str, db: Any) -> None:
            async def passes() -> None:
                dispatcher = Dispatcher(db, root=root, clock=FixedClock(NOW))
                try:
                    while (report := await dispatcher.run_pass()).sources and report.count("sent"):
                        sent[who] += report.count("sent")
                finally:
                    await dispatcher.close()

            asyncio.run(passes())

        _together(lambda: daemon("one", connections[1]), lambda: daemon("two", connections[2]))
    received = sink.received()
    assert len(received) == 2000 and set(received.values()) == {1}
    assert sum(sink.data_started.values()) == 2000  # no transaction begun for a row the other daemon sent
    assert sent["one"] + sent["two"] == 2000 and min(sent.values()) > 100, sent
    assert _states(connections[0]) == Counter(sent=2000)


def test_a_daemon_sending_on_a_clock_of_its_own_is_not_taken_for_gone_by_another(
    tmp_path: Path, connections: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tick --now` in the past beside a running daemon: the dispatcher registers by the real time, as its heartbeat
    and the other's recovery go, so the other never settles its messages on the wire as uncertain (nor frees the
    rows it reserved)."""
    monkeypatch.setenv("RECONCILER_RENDER_PROCESSES", "0")
    monkeypatch.setenv("RECONCILER_SECRET", "test-secret")
    looked: list[Any] = []

    def recovery_of_another_daemon(progress: Any) -> None:
        stale_before = iso(datetime.now(UTC) - STALE)
        found = dispatchers.interrupted(
            connections[2], host="h", alive=lambda pid: True, stale_before=stale_before, own="b"
        )
        looked.append(found)

    with SinkServer(Sink()) as port:
        root = workspace(tmp_path, port)
        _due(root, connections[0], 20)
        dispatcher = Dispatcher(
            connections[1], root=root, clock=FixedClock(NOW), on_progress=recovery_of_another_daemon
        )

        async def one_pass() -> None:
            try:
                await dispatcher.run_pass()
            finally:
                await dispatcher.close()

        asyncio.run(one_pass())
    assert len(looked) == 20 and not any(found.gone or found.rows for found in looked), looked


def test_two_dispatchers_claiming_the_same_rows_at_once_claim_each_once(tmp_path: Path, connections: Any) -> None:
    """No pages: both try every row, in the same order; the claim alone decides (a row locked by the other's claim is
    taken, without waiting), so every row is claimed by exactly one, and neither waits for the other."""
    [source] = _due(workspace(tmp_path, 25), connections[0], 1000)
    ids = [row.id for row in ledger.due_rows(connections[0], source, now=AT, after_id=0, limit=5000)]
    won: dict[str, set[int]] = defaultdict(set)

    def dispatcher(who: str, db: Any) -> None:
        previous = None
        for row_id in ids:
            if _claim(db, row_id, source, who, previous) == "claimed":
                won[who].add(row_id)
                previous = Outcome(row_id, "sent", "250 ok", AT)
            else:
                previous = None
        if previous is not None:
            ledger.record(db, previous, source=source)

    _together(lambda: dispatcher("d1", connections[1]), lambda: dispatcher("d2", connections[2]))
    assert not won["d1"] & won["d2"] and len(won["d1"] | won["d2"]) == 1000
    assert _states(connections[0]) == Counter(sent=1000)


def test_a_claim_waits_neither_for_the_writers_lock_nor_for_a_row_another_holds(
    tmp_path: Path, connections: Any
) -> None:
    main, other, _ = connections
    [source] = _due(workspace(tmp_path, 25), main, 3)
    first, second, third = (row.id for row in ledger.due_rows(main, source, now=AT, after_id=0, limit=10))
    started = time.monotonic()
    with write(other):  # an apply, a snapshot or an unsubscribe holds the writers' lock meanwhile
        assert _claim(main, first, source, "d1", None) == "claimed"
        other.conn.execute("SELECT id FROM ledger WHERE id = ? FOR UPDATE", (second,))
        sent = Outcome(first, "sent", "250 ok", AT)
        assert _claim(main, second, source, "d1", sent) == "taken"  # held by the other: skipped, not waited for
    assert time.monotonic() - started < 5  # (the lock timeout is 30 s)
    assert _claim(main, second, source, "d1", None) == "claimed"
    bounced = Outcome(second, "failed", "550 5.1.1 no such user", AT, suppress=True)
    with write(other):  # an outcome that suppresses and counts needs the writers' lock: it waits for it
        waited = threading.Thread(target=lambda: _claim(main, third, source, "d1", bounced))
        waited.start()
        waited.join(timeout=0.5)
        assert waited.is_alive()
    waited.join(timeout=30)
    assert _states(main) == Counter(sent=1, failed=1, sending=1)


def test_the_frequency_cap_holds_for_two_daemons_sending_to_one_contact(tmp_path: Path, connections: Any) -> None:
    """Two campaigns to the same people, sent by two daemons at once, a cap of one message a week: each daemon's
    holds let its row through (nothing was sent yet); the claims count together, so the second one waits."""
    root = workspace(tmp_path, 25)
    text = (root / "campaigns" / "hello.yaml").read_text()
    (root / "campaigns" / "again.yaml").write_text(text.replace("name: hello", "name: again"))
    settings_file = root / "spec" / "settings.yaml"
    settings_file.write_text(settings_file.read_text() + "frequency_cap: {max: 1, per: 7d}\n")
    main, one, two = connections
    first_source, second_source = _due(root, main, 1)
    runtime = settings.load(main).settings
    holds = [Holds(db, runtime, marketing=True) for db in (one, two)]
    [first_row] = ledger.due_rows(one, first_source, now=AT, after_id=0, limit=10)
    [second_row] = ledger.due_rows(two, second_source, now=AT, after_id=0, limit=10)
    assert holds[0].check([first_row], now=NOW) == set() and holds[1].check([second_row], now=NOW) == set()
    caps = holds[0].take_caps(first_row.id)
    assert [(cap.most, cap.per) for cap in caps] == [(1, 7 * 86400.0)]
    assert _claim(one, first_row.id, first_source, "d1", None, caps=caps) == "claimed"
    assert _claim(two, second_row.id, second_source, "d2", None, caps=holds[1].take_caps(second_row.id)) == "held"
    waiting = main.conn.execute(
        "SELECT state, next_attempt_at, last_reply FROM ledger WHERE id = ?", (second_row.id,)
    ).fetchone()
    assert waiting[0] == "queued" and waiting[1] == "2026-12-01T10:00:00Z"  # a week after the other went out
    assert waiting[2].startswith("postponed: frequency cap: at most 1 marketing message(s) per")


def test_two_processes_take_a_transports_tokens_from_one_bucket(connections: Any) -> None:
    """Ten a second: two processes asking at one moment get ten between them, not ten each; half a second later,
    five more; another bucket of the same transport (per minute) limits as well."""
    one, two = connections[1], connections[2]
    limits = [(10, 1.0), (12, 60.0)]
    got: Counter[str] = Counter()

    def take(who: str, db: Any) -> None:
        for _ in range(20):
            got[who] += rates.take(db, "sink", limits, now=1000.0)[0]

    _together(lambda: take("one", one), lambda: take("two", two))
    assert got["one"] + got["two"] == 10
    taken, wait = rates.take(one, "sink", limits, now=1000.0)
    assert taken == 0 and wait == pytest.approx(0.1)
    assert rates.take(two, "sink", limits, now=1000.5, want=20)[0] == 2  # five a second, but two left this minute


def test_two_daemons_sending_through_one_transport_keep_its_rate_together(connections: Any) -> None:
    """Fifty a second, a hundred and twenty messages, two daemons sending sixty each at once: at least 1.4 s (what
    the first fifty's burst leaves, at fifty a second), where buckets of their own would let them through in 0.2 s."""
    rate = Rate(per_second=50)

    def send(db: Any) -> None:
        limiter = SharedRateLimiter(db, "sink", rate)

        async def sixty() -> None:
            for _ in range(60):
                await limiter.acquire()

        asyncio.run(sixty())

    started = time.monotonic()
    _together(lambda: send(connections[1]), lambda: send(connections[2]))
    assert time.monotonic() - started >= 1.3
