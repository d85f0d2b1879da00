"""The dashboard and the read API, served by the real app under uvicorn over a state whose facts were counted by
hand (tests/report_state.py): sign-in with the token through a form, a session cookie no script can read, report
pages whose charts hold the figures (checked in Chromium), and the read API behind the bearer token."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from journeys import Journey
from report_state import seed
from smtp_sink import Sink, SinkServer, free_port
from web_server import WebServer

TOKEN = "dashboard-test-token-0123456789"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Journey, str]]:
    monkeypatch.setenv("RECONCILER_API_TOKEN", TOKEN)
    port = free_port()
    sink = Sink()
    with SinkServer(sink) as smtp:
        j = seed(tmp_path, sink, smtp, public_url=f"http://127.0.0.1:{port}")
        with WebServer(tmp_path, port=port) as base:
            yield j, base


def test_the_dashboard_needs_a_sign_in_and_its_cookie_is_out_of_reach(served: tuple[Journey, str]) -> None:
    _, base = served
    with httpx.Client(base_url=base) as client:
        for path in ("/dashboard", "/dashboard/campaigns/launch", "/dashboard/workflows/hello"):
            answer = client.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/sign-in"
        wrong = client.post("/dashboard/sign-in", data={"token": "guess"})
        assert wrong.status_code == 401 and "That is not the API token" in wrong.text
        assert "set-cookie" not in wrong.headers
        other_site = client.post("/dashboard/sign-in", data={"token": TOKEN}, headers={"origin": "https://evil.test"})
        assert other_site.status_code == 403 and "set-cookie" not in other_site.headers
        signed = client.post("/dashboard/sign-in", data={"token": TOKEN})
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
        page = client.get("/dashboard")
        assert page.status_code == 200 and '<a href="/dashboard/campaigns/launch">launch</a>' in page.text
        assert client.get("/dashboard/campaigns/nope").status_code == 404
        session = client.cookies["reconciler_session"]
        client.cookies.clear()  # from here the cookie goes in the header, so the jar cannot send the good one too
        text, _, signature = session.partition(".")
        flipped = signature[:5] + ("B" if signature[5] == "A" else "A") + signature[6:]
        for value, status in ((session, 200), (f"{text}.{flipped}", 303), (f"{text}1.{signature}", 303)):
            assert client.get("/dashboard", headers={"cookie": f"reconciler_session={value}"}).status_code == status


def test_the_read_api_answers_with_the_token_only(served: tuple[Journey, str]) -> None:
    _, base = served
    auth = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base) as client:
        for path in ("/api/v1/campaigns", "/api/v1/campaigns/launch/report", "/api/v1/contacts/a@example.com"):
            assert client.get(path).status_code == 401
        rows = client.get("/api/v1/campaigns", headers=auth).json()
        names = [(r["kind"], r["name"]) for r in rows]
        assert names == [("campaign", "later"), ("campaign", "launch"), ("workflow", "hello")]
        launch = client.get("/api/v1/campaigns/launch/report", headers=auth).json()
        assert launch["engagement"]["unique_opens"] == 3 and launch["goal"]["revenue"] == 40.0
        assert client.get("/api/v1/campaigns/nope/report", headers=auth).status_code == 404
        hello = client.get("/api/v1/campaigns/hello/report", headers=auth).json()  # the list names workflows too
        assert hello["kind"] == "workflow" and [s["step"] for s in hello["steps"]] == ["hi", "rest", "tag-it"]
        person = client.get("/api/v1/contacts/A@Example.com", headers=auth).json()
        assert person["contact"]["email"] == "a@example.com" and len(person["events"]) == 1
        assert [(r["workflow"], r["state"]) for r in person["workflow_runs"]] == [("hello", "completed")]
        assert client.get("/api/v1/contacts/nobody@example.com", headers=auth).status_code == 404


def test_a_marketer_signs_in_and_reads_a_report_in_chromium(served: tuple[Journey, str], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    j, base = served
    ARTIFACTS.mkdir(exist_ok=True)
    html_file = tmp_path / "launch.html"
    from conftest import reconciler

    assert reconciler("report", "launch", "--format", "html", "-o", str(html_file), cwd=j.root).returncode == 0
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
        page.goto(f"{base}/dashboard")
        page.get_by_label("API token").fill(TOKEN)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("link", name="launch").click()
        page.wait_for_selector("#funnel svg")
        assert page.locator("#heat-map rect.hour").count() == 7 * 24
        counts = page.locator("#heat-map rect.hour").evaluate_all("els => els.map(e => +e.dataset.count)")
        assert sum(counts) == 4 and max(counts) == 2
        assert page.locator("#over-time svg rect.rect").count() == 6  # opens and clicks in three periods
        assert page.locator("#links svg rect.rect").count() == 4  # people and clicks of two links
        funnel = page.locator("#funnel svg").text_content() or ""
        assert all(label in funnel for label in ("Recipients", "Delivered", "Opened", "Clicked"))
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads the session
        page.screenshot(path=str(ARTIFACTS / "dashboard-campaign.png"), full_page=True)
        page.goto(f"file://{html_file}")
        assert page.locator("svg").count() == 5 and re.search(r"75\.0%", page.content())
        page.screenshot(path=str(ARTIFACTS / "report-file.png"), full_page=True)
        browser.close()


def test_signing_out_ends_the_session_and_only_wrong_tokens_count_toward_the_limit(
    served: tuple[Journey, str],
) -> None:
    _, base = served
    with httpx.Client(base_url=base) as client:
        for _ in range(12):  # a marketer who signs in often is never locked out
            assert client.post("/dashboard/sign-in", data={"token": TOKEN}).status_code == 303
        session = client.cookies["reconciler_session"]
        other_site = client.post("/dashboard/sign-out", headers={"origin": "https://evil.test"})
        assert other_site.status_code == 403 and client.get("/dashboard").status_code == 200
        assert client.post("/dashboard/sign-out").status_code == 303
    with httpx.Client(base_url=base, cookies={"reconciler_session": session}) as replay:
        assert replay.get("/dashboard").status_code == 303  # the old cookie is no session any more
        for _ in range(10):
            assert replay.post("/dashboard/sign-in", data={"token": "wrong"}).status_code == 401
        assert replay.post("/dashboard/sign-in", data={"token": TOKEN}).status_code == 429
    lower = httpx.get(f"{base}/api/v1/campaigns", headers={"authorization": f"bearer {TOKEN}"})
    assert lower.status_code == 200  # the scheme is case-insensitive (RFC 7235)


def test_guessing_the_api_token_stops_after_twenty_wrong_ones(served: tuple[Journey, str]) -> None:
    _, base = served
    with httpx.Client(base_url=base) as client:
        guesses = [
            client.get("/api/v1/campaigns", headers={"authorization": f"Bearer guess-{n}"}).status_code
            for n in range(20)
        ]
        assert guesses == [401] * 20
        refused = client.get("/api/v1/campaigns", headers={"authorization": f"Bearer {TOKEN}"})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        assert "try again in" in refused.json()["error"]
        assert client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 429
        other = client.get(  # another address (through the proxy on loopback) is not held back
            "/api/v1/campaigns", headers={"authorization": f"Bearer {TOKEN}", "x-forwarded-for": "198.51.100.7"}
        )
        assert other.status_code == 200


def test_each_sign_in_is_a_session_of_its_own(served: tuple[Journey, str]) -> None:
    """Sessions were the signed minute alone: two people signing in that minute shared one, and one signing out
    ended the other's."""
    _, base = served
    with httpx.Client(base_url=base) as first, httpx.Client(base_url=base) as second:
        for client in (first, second):
            assert client.post("/dashboard/sign-in", data={"token": TOKEN}).status_code == 303
        assert first.cookies["reconciler_session"] != second.cookies["reconciler_session"]
        for path in ("/dashboard", "/dashboard/campaigns/launch", "/dashboard/workflows/hello"):
            assert '<form method="post" action="/dashboard/sign-out"' in first.get(path).text, path
        assert first.post("/dashboard/sign-out").status_code == 303
        assert first.get("/dashboard").status_code == 303 and second.get("/dashboard").status_code == 200


def test_wrong_tokens_sent_all_at_once_are_held_to_the_limit(served: tuple[Journey, str]) -> None:
    """Sixty sign-ins whose forms arrive together, once every request has started: ten are checked. (An adversary
    had 112 of 200 concurrent wrong tokens checked against the daemon: the limit was looked at before the form was
    read and counted after; each attempt is counted before reading now, and a right token takes its count back.)"""
    _, base = served

    storming, started, go = 60, [0], asyncio.Event()

    async def body(n: int) -> AsyncIterator[bytes]:
        yield b"token="  # the request and the start of its form are out: the server is reading the form
        started[0] += 1
        if started[0] == storming:
            go.set()
        await go.wait()  # every form ends once every request is in
        yield f"guess-{n}".encode()

    async def storm() -> list[int]:
        form = {"content-type": "application/x-www-form-urlencoded"}
        limits = httpx.Limits(max_connections=storming)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            answers = await asyncio.gather(
                *(client.post("/dashboard/sign-in", content=body(n), headers=form) for n in range(storming))
            )
        return [answer.status_code for answer in answers]

    codes = asyncio.run(storm())
    assert codes.count(401) == 10 and codes.count(429) == 50, sorted(codes)
