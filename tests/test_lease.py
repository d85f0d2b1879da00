"""The reconcile lease and the daemons' registrations, on both engines (`state_db`): one holder at a time, renewed,
taken over when it expires, at once from an exited process on this host, released on a clean stop; a holder that
was replaced has its next write refused (the fence); two processes taking an expired lease at once (PostgreSQL,
connections of their own): exactly one gets each generation; `LeaseKeeper` threads hand over when the holder stops
beating; `status` lists the daemons and who holds the lease."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from reconciler.leader import LeaseKeeper
from reconciler.state import lease, processes
from reconciler.state.db import fenced, get_meta, open_postgres, set_meta, write
from reconciler.state.lease import Held, Lease, LeaseLost
from reconciler.status import daemons, format_status, status_report

T0 = 1_900_000_000.0
TTL = 10.0


def _take(db: Any, ident: str, now: float, *, pid: int = 1, alive: Callable[[int], bool] = lambda pid: True) -> Any:
    return lease.acquire(db, ident, host="host-a", pid=pid, now=now, ttl=TTL, alive=alive)


def test_one_holder_renews_and_another_takes_over_only_after_the_expiry(state_db: Any) -> None:
    first = _take(state_db, "a", T0)
    assert isinstance(first, Held) and (first.ident, first.generation, first.expires_at) == ("a", 1, T0 + TTL)
    refused = _take(state_db, "b", T0 + 1, pid=2)
    assert isinstance(refused, Lease) and (refused.holder, refused.pid) == ("a", 1)
    renewed = _take(state_db, "a", T0 + 5)
    assert isinstance(renewed, Held) and (renewed.generation, renewed.expires_at) == (1, T0 + 5 + TTL)
    assert isinstance(_take(state_db, "b", T0 + 14, pid=2), Lease)  # the renewal counts: expires at T0 + 15
    taken = _take(state_db, "b", T0 + 15.5, pid=2)
    assert isinstance(taken, Held) and taken.generation == 2
    assert lease.renew(state_db, renewed, now=T0 + 16, ttl=TTL) is None  # the old holder finds out at its beat
    again = _take(state_db, "a", T0 + 16)
    assert isinstance(again, Lease) and again.holder == "b"


def test_the_fence_refuses_the_writes_of_a_holder_that_was_replaced(state_db: Any) -> None:
    old = _take(state_db, "a", T0)
    assert isinstance(old, Held)
    with fenced(state_db, lambda db: lease.check(db, old)):
        with write(state_db):  # still the holder: its pass writes
            set_meta(state_db, "written by", "a")
        assert isinstance(_take(state_db, "b", T0 + TTL + 1, pid=2), Held)  # a stalled past its expiry
        with pytest.raises(LeaseLost, match="taken over by b"), write(state_db):
            set_meta(state_db, "written by", "a, after losing the lease")
    assert get_meta(state_db, "written by") == "a"  # refused before anything was written
    with write(state_db):  # outside the fence the connection writes as ever
        set_meta(state_db, "written by", "someone else")


def test_an_exited_holder_on_this_host_is_taken_over_at_once_and_a_released_lease_too(state_db: Any) -> None:
    assert isinstance(_take(state_db, "a", T0, pid=11), Held)
    assert isinstance(_take(state_db, "b", T0 + 1, pid=12, alive=lambda pid: pid != 11), Held)  # a was killed
    on_another_host = lease.acquire(state_db, "c", host="host-b", pid=11, now=T0 + 2, ttl=TTL, alive=lambda p: False)
    assert isinstance(on_another_host, Lease)  # only a process on the holder's own host can see it exited
    held = _take(state_db, "b", T0 + 2, pid=12)
    assert isinstance(held, Held) and lease.release(state_db, held, now=T0 + 3)
    freed = lease.read(state_db)
    assert freed is not None and (freed.holder, freed.generation) == (None, 3)
    taken = lease.acquire(state_db, "c", host="host-b", pid=13, now=T0 + 3, ttl=TTL, alive=lambda p: True)
    assert isinstance(taken, Held) and taken.generation == 4
    assert not lease.release(state_db, held, now=T0 + 4)  # not b's to release any more


def test_status_lists_the_daemons_beating_and_who_holds_the_lease(state_db: Any) -> None:
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    for ident, host, pid in (("host-a:1:x", "host-a", 1), ("host-b:2:y", "host-b", 2), ("gone:3:z", "gone", 3)):
        processes.register(state_db, processes.Process(ident, host, pid, "daemon", stamp, stamp, "ok"))
    old = datetime(2020, 1, 1, tzinfo=UTC)
    processes.beat(
        state_db, processes.Process("gone:3:z", "gone", 3, "daemon", stamp, stamp, "ok"), at=old, status="ok"
    )
    lease.acquire(state_db, "host-b:2:y", host="host-b", pid=2, now=now.timestamp(), ttl=TTL, alive=lambda p: True)
    found = daemons(state_db, now=now)
    assert [(p["id"], p["holds_lease"]) for p in found["processes"]] == [("host-a:1:x", False), ("host-b:2:y", True)]
    assert found["lease"]["holder"] == "host-b:2:y" and not found["lease"]["expired"]
    shown = format_status(status_report(state_db))
    assert "Processes: 2 daemons running; the lease holder applies" in shown
    assert "host-b (pid 2, daemon): ok, heard from at" in shown and "holds the lease (until" in shown
    assert "gone (pid 3" not in shown
    assert processes.prune(state_db, now=now) == 1
    processes.unregister(state_db, "host-b:2:y")
    later = daemons(state_db, now=datetime.fromtimestamp(now.timestamp() + TTL + 1, UTC))
    assert later["lease"]["expired"] and "expired at" in "\n".join(_lines(later))


def _lines(report: dict[str, Any]) -> list[str]:
    from reconciler.status import _daemon_lines

    return _daemon_lines(report)


@pytest.mark.postgresql
def test_processes_taking_an_expired_lease_at_once_get_one_holder_per_generation(postgres_url: str) -> None:
    """Eight connections try at the same moments, round after round, each round after the last holder's expiry:
    every generation has exactly one holder, and nobody waits for anybody (compare-and-set, no writers' lock)."""
    connections = [open_postgres(postgres_url) for _ in range(8)]
    rounds = 20
    barrier = threading.Barrier(len(connections))
    won: list[tuple[int, int, str]] = []

    def contend(index: int) -> None:
        for round_ in range(rounds):
            barrier.wait()
            got = lease.acquire(
                connections[index],
                f"p{index}",
                host="h",
                pid=index,
                now=T0 + round_ * 100,
                ttl=TTL,
                alive=lambda p: True,
            )
            if isinstance(got, Held):
                won.append((round_, got.generation, got.ident))

    try:
        threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(connections))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(round_ for round_, _, _ in won) == list(range(rounds)), won  # one holder each round
        holders = {generation: {ident for _, g, ident in won if g == generation} for _, generation, _ in won}
        assert all(len(idents) == 1 for idents in holders.values()), won  # (the holder may renew: same generation)
    finally:
        for db in connections:
            db.close()


def _wait_for(condition: Callable[[], bool], what: str, *, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _keeper(db: Any, changes: list[tuple[str, bool]], name: str) -> LeaseKeeper:
    keeper = LeaseKeeper(db, ttl=1.0, beat=0.1, on_change=lambda holding: changes.append((name, holding)))
    keeper.ident = f"{keeper.ident}:{name}"  # two keepers in one process: two daemons as far as the lease goes
    keeper.process = processes.Process(keeper.ident, keeper.host, keeper.pid, "daemon", "2026", "2026", "ok")
    return keeper


def test_keepers_hand_the_lease_over_when_the_holder_stops_beating(state_db: Any, tmp_path: Any) -> None:
    """Two daemons' heartbeats on connections of their own: the first leads; when it stops beating (as if killed:
    nothing released) the second takes over after the expiry; the first's stale pass is fenced; a clean stop hands
    the lease back at once."""
    second_db = _connect_again(state_db, tmp_path)
    changes: list[tuple[str, bool]] = []
    first, second = _keeper(state_db, changes, "first"), _keeper(second_db, changes, "second")
    first.start()
    second.start()
    try:
        assert first.holding() and not second.holding() and second.holder() == first.ident
        assert {p.id for p in processes.live(state_db, now=datetime.now(UTC))} == {first.ident, second.ident}
        stale = first.current()
        assert stale is not None
        first.stopping.set()  # it stops beating, as a killed process would; its lease is not released
        first.thread.join()
        _wait_for(second.holding, "the second daemon to take the lease over")
        assert ("second", True) in changes and not first.holding()
        with pytest.raises(LeaseLost), fenced(state_db, lambda db: lease.check(db, stale)), write(state_db):
            set_meta(state_db, "late", "write")
        assert get_meta(state_db, "late") is None
        third_db = _connect_again(state_db, tmp_path)
        third = _keeper(third_db, changes, "third")
        third.start()
        assert not third.holding()
        second.stop()  # a clean stop: released, so the third takes it at its next beat, not after the expiry
        _wait_for(third.holding, "the third daemon to take the released lease", within=5.0)
        third.stop()
        assert [p.id for p in processes.live(third_db, now=datetime.now(UTC))] == [first.ident]  # killed: no goodbye
        third_db.close()
    finally:
        second.stop()
        second_db.close()


def _connect_again(db: Any, tmp_path: Any) -> Any:
    """Another connection to the same database, as another process would have."""
    from reconciler.state.db import open_db
    from reconciler.state.postgres import PostgresDatabase

    if isinstance(db, PostgresDatabase):
        dsn = db.conn.raw.info.dsn
        return open_postgres(dsn, migrate=False)
    return open_db(tmp_path / "state.db", migrate=False)


def test_the_keeper_uses_the_process_id_and_host(state_db: Any) -> None:
    keeper = LeaseKeeper(state_db)
    keeper.beat()
    assert keeper.holding() and keeper.pid == os.getpid()
    row = lease.read(state_db)
    assert row is not None and (row.holder, row.pid) == (keeper.ident, os.getpid())
    keeper.stop()
    freed = lease.read(state_db)
    assert freed is not None and freed.holder is None
    assert processes.live(state_db, now=datetime.now(UTC)) == []
