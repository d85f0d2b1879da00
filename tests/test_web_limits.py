"""The web service's rate limits and signed-out sessions where several daemons serve HTTP from one PostgreSQL state:
two apps under uvicorn on one database, as two daemons behind a load balancer, count wrong tokens, sign-in attempts
and subscribe-form posts together (each daemon kept them in its own memory: two allowed twice as many guesses), and
a session signed out on one is refused by the other (the daemon that answered the sign-out alone refused it). The
rows the database keeps for them are pruned once they hold nothing, a batch at a time, on both engines."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.state import web_limits
from reconciler.state.db import open_postgres
from reconciler.state.location import StateLocation
from web_server import WebServer

TOKEN = "shared-limits-token-0123456789"


@pytest.fixture
def two(tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """Two web apps serving one PostgreSQL state, each with a connection pool of its own: their base URLs."""
    monkeypatch.setenv("RECONCILER_API_TOKEN", TOKEN)
    open_postgres(postgres_url).close()  # migrated, as the first daemon to start does
    state = StateLocation(conninfo=postgres_url)
    with WebServer(tmp_path, state=state) as first, WebServer(tmp_path, state=state) as second:
        yield first, second


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.postgresql
def test_wrong_api_tokens_sent_to_two_daemons_are_limited_together(two: tuple[str, str]) -> None:
    first, second = two
    for n in range(20):  # the limit, ten on each daemon
        guess = httpx.get(f"{(first, second)[n // 10]}/api/v1/campaigns", headers=bearer(f"guess-{n}"))
        assert guess.status_code == 401, n
    refused = httpx.get(f"{first}/api/v1/campaigns", headers=bearer("guess-20"))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0, refused.text
    right = httpx.get(f"{second}/api/v1/campaigns", headers=bearer(TOKEN))  # a guesser learns nothing more
    assert right.status_code == 429 and int(right.headers["retry-after"]) > 0


@pytest.mark.postgresql
def test_wrong_tokens_sent_to_two_daemons_at_once_are_held_to_the_limit(two: tuple[str, str]) -> None:
    """Sixty wrong tokens at once, half to each daemon: twenty are checked, wherever they landed."""

    async def storm() -> list[int]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            answers = await asyncio.gather(
                *(client.get(f"{two[n % 2]}/api/v1/campaigns", headers=bearer(f"guess-{n}")) for n in range(60))
            )
        return [answer.status_code for answer in answers]

    codes = asyncio.run(storm())
    assert codes.count(401) == 20 and codes.count(429) == 40, sorted(codes)


@pytest.mark.postgresql
def test_sign_in_attempts_on_two_daemons_are_limited_together(two: tuple[str, str]) -> None:
    first, second = two
    for n in range(10):
        wrong = httpx.post(f"{(first, second)[n % 2]}/dashboard/sign-in", data={"token": f"guess-{n}"})
        assert wrong.status_code == 401, n
    for base in (first, second):
        refused = httpx.post(f"{base}/dashboard/sign-in", data={"token": TOKEN})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0, base
        assert "Too many wrong tokens" in refused.text and "set-cookie" not in refused.headers


@pytest.mark.postgresql
def test_a_right_sign_in_does_not_count_on_either_daemon(two: tuple[str, str]) -> None:
    first, second = two
    for n in range(12):  # a marketer who signs in often, on whichever daemon, is never locked out
        assert httpx.post(f"{two[n % 2]}/dashboard/sign-in", data={"token": TOKEN}).status_code == 303
    for n in range(10):
        assert httpx.post(f"{first}/dashboard/sign-in", data={"token": "wrong"}).status_code == 401, n
    assert httpx.post(f"{second}/dashboard/sign-in", data={"token": TOKEN}).status_code == 429


@pytest.mark.postgresql
def test_a_session_signed_out_on_one_daemon_is_refused_by_the_other(two: tuple[str, str]) -> None:
    first, second = two
    signed = httpx.post(f"{first}/dashboard/sign-in", data={"token": TOKEN})
    assert signed.status_code == 303
    session = {"reconciler_session": signed.cookies["reconciler_session"]}
    with httpx.Client(cookies=session) as old:
        assert old.get(f"{second}/dashboard").status_code == 200
        assert old.post(f"{first}/dashboard/sign-out").status_code == 303
    for base in (second, first):
        again = httpx.get(f"{base}/dashboard", cookies=session)
        assert again.status_code == 303 and again.headers["location"] == "/dashboard/sign-in", base
    other = httpx.post(f"{second}/dashboard/sign-in", data={"token": TOKEN})  # a new sign-in is a new session
    assert httpx.get(f"{first}/dashboard", cookies=dict(other.cookies)).status_code == 200


@pytest.mark.postgresql
def test_subscribe_form_posts_on_two_daemons_are_limited_together(two: tuple[str, str]) -> None:
    """Three posts an hour per email address: the fourth, on either daemon, waits (the list is unknown here, so the
    three are refused too; each still counts, as a person's typo would)."""
    first, second = two
    form = {"email": "pat@example.net", "list": "news"}
    answers = [httpx.post(f"{base}/subscribe", data=form) for base in (first, second, first, second)]
    assert [answer.status_code for answer in answers] == [422, 422, 422, 429]
    assert int(answers[-1].headers["retry-after"]) > 0


def test_a_limit_counts_looks_and_takes_back_on_both_engines(state_db: Any) -> None:
    def take(key: str, now: float, name: str = "sign_ins") -> int:
        return web_limits.take(state_db, name, key, limit=3, window=100.0, now=now)

    def wait(key: str, now: float, name: str = "sign_ins") -> int:
        return web_limits.wait(state_db, name, key, limit=3, window=100.0, now=now)

    assert [take("198.51.100.7", 1000.0 + n) for n in range(4)] == [0, 0, 0, 97]
    assert wait("198.51.100.7", 1050.0) == 50
    assert wait("198.51.100.8", 1050.0) == 0  # another address
    assert wait("198.51.100.7", 1050.0, "per_ip") == 0  # another limit
    assert wait("198.51.100.7", 1100.0) == 0  # the first event left the window
    web_limits.refund(state_db, "sign_ins", "198.51.100.7", window=100.0, now=1050.0)
    assert take("198.51.100.7", 1050.0) == 0
    assert take("198.51.100.7", 1050.0) == 50


def test_rows_that_hold_nothing_are_pruned_a_batch_at_a_time_on_both_engines(state_db: Any) -> None:
    """A flood of addresses makes a row each; once their events leave the window they go, as the memory version
    forgets idle keys. A signed-out session goes once it would have expired anyway."""
    flood = web_limits.PRUNED_AT_ONCE + 500
    for n in range(flood):
        key = f"10.0.{n // 256}.{n % 256}"
        assert web_limits.take(state_db, "per_ip", key, limit=10, window=600.0, now=1000.0) == 0
    assert web_limits.take(state_db, "per_ip", "192.0.2.1", limit=10, window=600.0, now=1500.0) == 0
    web_limits.sign_out(state_db, "ended-early", expires_at=1200.0)
    web_limits.sign_out(state_db, "ended-late", expires_at=5000.0)
    assert web_limits.prune(state_db, now=1599.0) == 1  # the early sign-out; every event is still in its window
    assert web_limits.prune(state_db, now=1600.0) == web_limits.PRUNED_AT_ONCE
    assert web_limits.prune(state_db, now=1600.0) == 500
    assert web_limits.prune(state_db, now=1600.0) == 0
    rows = state_db.conn.execute("SELECT key FROM web_limits").fetchall()
    assert [row[0] for row in rows] == ["192.0.2.1"]
    assert web_limits.signed_out(state_db, "ended-late", now=1600.0)
    assert not web_limits.signed_out(state_db, "ended-late", now=5000.0)
