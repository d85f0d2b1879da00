"""`POST /api/v1/plan` and `reconciler plan --remote`: a pull request's files planned against the production state,
which stays where it is. The real app under uvicorn over a real state database (the example with 500 made-up
contacts); the command runs as a user runs it."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import sqlite3
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from conftest import reconciler
from production import API_TOKEN, APPLIED_AT, PLAN_TOKEN, production, pull_request
from reconciler.archive import MAX_MEMBERS, pack
from reconciler.clock import SystemClock
from reconciler.remote_plan import PLAN_TOKEN_ENV
from reconciler.state.db import snapshot
from reconciler.web import create_app
from reconciler.web.context import PLANS_AT_ONCE
from reconciler.web.openapi import description
from state_helpers import connected, dump, open_state, place, state_arg
from web_server import WebServer

PLANNER = {"authorization": f"Bearer {PLAN_TOKEN}"}


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory, module_state: None) -> Path:
    return production(tmp_path_factory.mktemp("production"))


@pytest.fixture(autouse=True)
def tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_API_TOKEN", API_TOKEN)
    monkeypatch.setenv(PLAN_TOKEN_ENV, PLAN_TOKEN)


@pytest.fixture
def served(prod: Path) -> Iterator[str]:
    with WebServer(prod) as base:
        yield base


@pytest.fixture
def pr(tmp_path: Path) -> Path:
    return pull_request(tmp_path / "pr")


def post_plan(base: str, body: bytes, headers: dict[str, str] | None = None, **params: str) -> httpx.Response:
    return httpx.post(
        f"{base}/api/v1/plan", content=body, params=params, headers=PLANNER if headers is None else headers
    )


def remote_plan(pr: Path, base: str, *args: str) -> tuple[int, str, str]:
    done = reconciler("plan", "--remote", base, *args, cwd=pr, env={PLAN_TOKEN_ENV: PLAN_TOKEN})
    return done.returncode, done.stdout, done.stderr


def test_a_remote_plan_is_the_plan_a_local_plan_of_the_same_files_and_state_prints(
    prod: Path, served: str, pr: Path
) -> None:
    status, remote, errors = remote_plan(pr, served, "--now", APPLIED_AT, "--detailed-exitcode")
    state = state_arg(prod)
    local = reconciler("--state", state, "plan", "--now", APPLIED_AT, "--detailed-exitcode", cwd=pr)
    assert (status, remote) == (local.returncode, local.stdout), errors
    assert status == 2
    assert "+ Campaign guji-harvest-2030  schedule for now\n" in remote
    assert "→ 490 recipients" in remote
    assert errors == ""


def test_a_remote_plan_in_json_and_markdown_says_who_it_reaches(served: str, pr: Path) -> None:
    status, text, _ = remote_plan(pr, served, "--now", APPLIED_AT, "--format", "json")
    answer = json.loads(text)
    assert (status, answer["changes"], answer["errors"]) == (0, True, 0)
    (action,) = answer["actions"]
    assert (action["name"], action["op"], action["audience"]["recipients"]) == ("guji-harvest-2030", "schedule", 490)
    status, markdown, _ = remote_plan(pr, served, "--now", APPLIED_AT, "--format", "markdown")
    assert status == 0
    assert "| + | `Campaign guji-harvest-2030` | schedule for now | → 490 recipients |" in markdown


def test_a_broken_workspace_is_answered_with_each_error_at_its_file_and_line(served: str, pr: Path) -> None:
    campaign = pr / "campaigns/black-friday-2030.yaml"
    campaign.write_text(campaign.read_text().replace("subject:", "subjct:"))
    status, text, _ = remote_plan(pr, served)
    assert status == 1
    assert text.startswith(
        "campaigns/black-friday-2030.yaml:5:1: Campaign black-friday-2030: subjct: unknown key 'subjct' "
        "(did you mean 'subject'?)\n"
    )
    assert "nothing is planned until the errors are fixed" in text
    assert "reconciler-plan-" not in text  # the daemon's folder for the files is not shown


def test_planning_changes_nothing_in_the_state(prod: Path, served: str, pr: Path) -> None:
    before = dump(prod)
    body, _ = pack(pr)
    for fmt in ("text", "markdown", "json"):
        answer = post_plan(served, body, format=fmt, now=APPLIED_AT, confirm="black-friday-2030")
        assert answer.status_code == 200, answer.text
        assert answer.headers["reconciler-plan-changes"] == "1"
    campaign = pr / "campaigns/black-friday-2030.yaml"
    campaign.write_text(campaign.read_text().replace("subject:", "subjct:"))
    assert post_plan(served, pack(pr)[0]).headers["reconciler-plan-errors"] == "1"
    assert dump(prod) == before


def test_a_connection_in_a_snapshot_cannot_write(prod: Path, tmp_path: Path) -> None:
    db = open_state(tmp_path)
    refused = (sqlite3.OperationalError, psycopg.errors.ReadOnlySqlTransaction)
    with snapshot(db), pytest.raises(refused, match=r"readonly|read-only"):
        db.conn.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
    db.conn.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")  # writable again afterwards
    db.close()


def test_a_plan_holds_no_contact(prod: Path, served: str, pr: Path) -> None:
    with connected(prod) as db:
        emails = [row[0] for row in db.execute("SELECT email FROM contacts")]
    assert len(emails) == 490
    body, _ = pack(pr)
    for fmt in ("text", "markdown", "json"):
        answer = post_plan(served, body, format=fmt, now=APPLIED_AT).text
        assert not [email for email in emails if email in answer]


def _operations() -> list[tuple[str, str]]:
    """Every (method, path) of the description behind the API token, with its path parameters filled in."""
    found = []
    for path, item in description()["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and {"bearer": []} in operation.get("security", []):
                filled = path.replace("{email}", "ada.0@example.com").replace("{name}", "x")
                found.append((method.upper(), filled.replace("{provider}", "generic")))
    return found


def test_the_plan_token_opens_no_other_endpoint(served: str) -> None:
    operations = _operations()
    assert len(operations) >= 6
    for method, path in operations:
        answer = httpx.request(method, served + path, headers=PLANNER, json={})
        assert answer.status_code == 401, (method, path, answer.status_code)
        with_api_token = httpx.request(method, served + path, headers={"authorization": f"Bearer {API_TOKEN}"})
        assert with_api_token.status_code != 401, (method, path)
    sign_in = httpx.post(f"{served}/dashboard/sign-in", data={"token": PLAN_TOKEN})
    assert sign_in.status_code == 401
    assert "reconciler_session" not in sign_in.headers.get("set-cookie", "")


def test_the_api_token_does_not_open_the_plan_endpoint(served: str, pr: Path) -> None:
    body, _ = pack(pr)
    assert post_plan(served, body, {"authorization": f"Bearer {API_TOKEN}"}).status_code == 401
    assert post_plan(served, body, {}).status_code == 401
    assert post_plan(served, body).status_code == 200


def test_a_plan_token_that_is_the_api_token_turns_plans_off(
    prod: Path, pr: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PLAN_TOKEN_ENV, API_TOKEN)
    with WebServer(prod) as base:
        answer = post_plan(base, pack(pr)[0], {"authorization": f"Bearer {API_TOKEN}"})
        assert answer.status_code == 403
        assert "give RECONCILER_PLAN_TOKEN a value of its own" in answer.json()["error"]
        assert post_plan(base, pack(pr)[0], {"authorization": "Bearer guess"}).status_code == 401


def test_wrong_plan_tokens_are_limited_as_wrong_api_tokens_are(served: str, pr: Path) -> None:
    """The guesses come from an address of their own (through the proxy on loopback): on PostgreSQL the limits are
    kept in the state, which this module's tests share, and the other tests' requests must not be held back."""
    body, _ = pack(pr)
    guesser = {"x-forwarded-for": "198.51.100.23"}
    for _ in range(20):
        assert post_plan(served, body, {"authorization": "Bearer guess", **guesser}).status_code == 401
    answer = post_plan(served, body, {**PLANNER, **guesser})  # even the right plan token waits
    assert answer.status_code == 429
    assert int(answer.headers["retry-after"]) > 0
    # a runner's stale plan token holds back plans only: the API, used from the same host, goes on
    read = httpx.get(f"{served}/api/v1/campaigns", headers={"authorization": f"Bearer {API_TOKEN}", **guesser})
    assert read.status_code == 200, read.text


def test_a_daemon_without_a_plan_token_says_plans_are_off(
    prod: Path, pr: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PLAN_TOKEN_ENV)
    with WebServer(prod) as base:
        answer = post_plan(base, pack(pr)[0])
    assert answer.status_code == 403 and "plans are off on this daemon" in answer.json()["error"]


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return gzip.compress(raw.getvalue())


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


ESCAPED = f"escaped-{uuid.uuid4().hex}.yaml"


@pytest.mark.parametrize(
    ("member", "said"),
    [
        (_member(f"../{ESCAPED}"), "a path that leaves the workspace (..) is refused"),
        (_member(f"spec/../../{ESCAPED}"), "a path that leaves the workspace (..) is refused"),
        (_member(f"/tmp/{ESCAPED}"), "member paths are relative to the workspace"),
        (_member("spec/lists.yaml", tarfile.SYMTYPE, "/etc/passwd"), "is a symbolic link"),
        (_member("spec/lists.yaml", tarfile.SYMTYPE, "../../settings.yaml"), "is a symbolic link"),
        (_member("spec/lists.yaml", tarfile.LNKTYPE, "/etc/passwd"), "is a hard link"),
        (_member("spec/tty", tarfile.CHRTYPE), "is a character device"),
        (_member("spec/pipe", tarfile.FIFOTYPE), "is a FIFO"),
    ],
)
def test_an_archive_with_a_member_that_could_escape_is_refused_whole(
    served: str, member: tarfile.TarInfo, said: str
) -> None:
    settings = _member("spec/settings.yaml")
    answer = post_plan(served, _tar((settings, b"kind: Settings\n"), (member, b"kind: List\nname: x\n")))
    assert answer.status_code == 422
    assert said in answer.json()["error"]
    assert repr(member.name) in answer.json()["error"]
    assert not (Path(tempfile.gettempdir()) / ESCAPED).exists()
    assert not Path("/tmp", ESCAPED).exists()


def test_archives_too_large_unpacked_or_with_too_many_members_are_refused(served: str) -> None:
    bomb = _tar((_member("spec/big.yaml"), b"#" * 25_000_000))
    assert len(bomb) < 100_000
    answer = post_plan(served, bomb)
    assert (answer.status_code, answer.json()["error"]) == (413, "the archive unpacks to more than 20,000,000 bytes")
    many = _tar(*((_member(f"spec/{n}.yaml"), b"") for n in range(MAX_MEMBERS + 1)))
    answer = post_plan(served, many)
    assert (answer.status_code, answer.json()["error"]) == (413, "the archive has more than 5,000 members")
    assert post_plan(served, b"x" * 1_000_001).status_code == 413


def test_a_body_that_is_not_a_tar_is_a_400(served: str) -> None:
    answer = post_plan(served, b"kind: Settings\n")
    assert answer.status_code == 400
    assert "not a tar archive" in answer.json()["error"]
    assert post_plan(served, b"\x1f\x8b\x08\x00garbage").status_code == 400


def test_bad_options_are_named(served: str, pr: Path) -> None:
    body, _ = pack(pr)
    for params, said in (
        ({"format": "html"}, "format: one of text, markdown, json"),
        ({"now": "tomorrow"}, "now: "),
        ({"count_budget": "61"}, "count_budget: from 0 to 60 seconds"),
        ({"commit": "'; DROP"}, "commit: a git commit's hexadecimal id"),
    ):
        answer = httpx.post(f"{served}/api/v1/plan", content=body, params=params, headers=PLANNER)
        assert answer.status_code == 400
        assert answer.json()["error"].startswith(said)


def test_plans_beyond_those_being_made_are_answered_429(prod: Path, pr: Path) -> None:
    app = create_app(place(prod), clock=SystemClock(), root=prod)
    plans = app.state.context.plans
    body, _ = pack(pr)

    async def ask() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://reconciler") as client:
            return await client.post("/api/v1/plan", content=body, headers=PLANNER, params={"now": APPLIED_AT})

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        others = [object() for _ in range(PLANS_AT_ONCE)]
        for other in others:
            plans.acquire_on_behalf_of_nowait(other)
        refused = await ask()
        for other in others:
            plans.release_on_behalf_of(other)
        return refused, await ask()

    refused, made = asyncio.run(scenario())
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "10"
    assert made.status_code == 200


def test_the_command_needs_the_plan_token_and_https_beyond_this_machine(pr: Path) -> None:
    done = reconciler("plan", "--remote", "http://127.0.0.1:9", cwd=pr, env={PLAN_TOKEN_ENV: ""})
    assert done.returncode == 2
    assert "--remote needs the daemon's plan token in RECONCILER_PLAN_TOKEN" in done.stderr
    done = reconciler("plan", "--remote", "http://mail.example.com", cwd=pr, env={PLAN_TOKEN_ENV: PLAN_TOKEN})
    assert done.returncode == 2
    assert "the plan token would cross the network in clear; use https://" in done.stderr


def test_the_command_says_when_the_daemon_cannot_be_reached(pr: Path) -> None:
    from smtp_sink import free_port

    status, _, errors = remote_plan(pr, f"http://127.0.0.1:{free_port()}")
    assert status == 1
    assert "cannot reach http://127.0.0.1:" in errors
    assert "(is the daemon running there?)" in errors


def test_the_command_refuses_a_link_that_leads_out_of_the_workspace(pr: Path, served: str) -> None:
    secret = pr.parent / "outside.yaml"
    secret.write_text("kind: List\nname: stolen\n")
    (pr / "spec/stolen.yaml").symlink_to(secret)
    status, out, _ = remote_plan(pr, served)
    assert status == 1
    assert "spec/stolen.yaml:1:1: a symbolic link that resolves outside the workspace: it is not read" in out
