"""The repository's GitHub Action (action.yml), its steps run as a runner runs them: each `run` in bash with the
step's `env`, its `${{ }}` expressions filled in and `$GITHUB_OUTPUT` read back. The daemon is real (`reconciler
run` over the example with 500 made-up contacts); GitHub's end is a small server on loopback that keeps comments
and records what was asked of it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from ruamel.yaml import YAML

from conftest import REPO
from daemon_process import WATCHING, Daemon
from production import API_TOKEN, PLAN_TOKEN, production, pull_request
from smtp_sink import free_port

GITHUB_TOKEN = "test-github-token"
REPOSITORY = "kettle/marketing"
NUMBER = 7
MARKER = "<!-- reconciler-plan -->"
EXPRESSION = re.compile(r"\$\{\{\s*(.+?)\s*\}\}")


@dataclass
class FakeGitHub:
    """The issue-comments part of GitHub's REST API, for one repository."""

    comments: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def add(self, body: str, author: str = "github-actions[bot]") -> dict[str, Any]:
        comment: dict[str, Any] = {"id": 1000 + len(self.comments), "body": body, "user": {"login": author}}
        comment["html_url"] = f"https://github.example/{REPOSITORY}/pull/{NUMBER}#issuecomment-{comment['id']}"
        self.comments.append(comment)
        return comment

    def handler(self) -> type[BaseHTTPRequestHandler]:
        github = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                url = urlsplit(self.path)
                github.requests.append((self.command, url.path))
                if self.headers.get("authorization") != f"Bearer {GITHUB_TOKEN}":
                    return self._answer(401, {"message": "Bad credentials"})
                length = int(self.headers.get("content-length") or 0)
                body: dict[str, Any] = json.loads(self.rfile.read(length)) if length else {}
                listing = f"/repos/{REPOSITORY}/issues/{NUMBER}/comments"
                if self.command == "GET" and url.path == listing:
                    query = parse_qs(url.query)
                    per_page, page = int(query["per_page"][0]), int(query["page"][0])
                    return self._answer(200, github.comments[(page - 1) * per_page : page * per_page])
                if self.command == "POST" and url.path == listing:
                    return self._answer(201, github.add(body["body"]))
                prefix = f"/repos/{REPOSITORY}/issues/comments/"
                if self.command == "PATCH" and url.path.startswith(prefix):
                    comment = next(c for c in github.comments if str(c["id"]) == url.path.removeprefix(prefix))
                    comment["body"] = body["body"]
                    return self._answer(200, comment)
                return self._answer(404, {"message": "Not Found"})

            do_GET = do_POST = do_PATCH = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def github() -> Iterator[tuple[FakeGitHub, str]]:
    fake = FakeGitHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, module_state: None) -> Iterator[str]:
    root = production(tmp_path_factory.mktemp("production"))
    env = {"RECONCILER_API_TOKEN": API_TOKEN, "RECONCILER_PLAN_TOKEN": PLAN_TOKEN, "RECONCILER_SECRET": "s"}
    with Daemon(root, "--interval", "600", env=env) as running:
        running.wait_for_output(WATCHING)
        yield f"http://127.0.0.1:{running.port}"


def run_action(checkout: Path, inputs: dict[str, str], api: str) -> tuple[int, str]:
    """action.yml's steps in `checkout` as a runner runs them, until one fails: its exit status and the log. The
    steps that set up Python and install reconciler are left out: the test's environment has both."""
    action = YAML(typ="safe").load((REPO / "action.yml").read_text())
    event = checkout.parent / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": NUMBER}}))
    outputs: dict[str, dict[str, str]] = {}

    def value(expression: str) -> str:
        scope, _, name = expression.partition(".")
        if scope == "inputs":
            return inputs[name] if name in inputs else fill(str(action["inputs"][name].get("default", "")))
        if scope == "steps":
            step, _, output = name.partition(".outputs.")
            return outputs[step][output]
        return {"github.token": GITHUB_TOKEN, "github.action_path": str(REPO)}[expression]

    def fill(text: str) -> str:
        return EXPRESSION.sub(lambda match: value(match.group(1)), text)

    base = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "GITHUB_ACTION_PATH": str(REPO),
        "GITHUB_API_URL": api,
        "GITHUB_REPOSITORY": REPOSITORY,
        "GITHUB_EVENT_PATH": str(event),
        "NO_COLOR": "1",
    }
    base |= {name: os.environ[name] for name in ("PYTHONPATH", "HOME") if name in os.environ}
    log = ""
    steps = action["runs"]["steps"]
    assert next(step.get("id") for step in steps if "run" in step) == "install"
    for step in steps:
        if "uses" in step or step.get("id") == "install":
            continue
        assert step["shell"] == "bash"
        output = checkout.parent / f"output-{step['id']}"
        output.write_text("")
        env = {**base, **{name: fill(str(text)) for name, text in step.get("env", {}).items()}}
        env["GITHUB_OUTPUT"] = str(output)
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        log += done.stdout + done.stderr
        outputs[step["id"]] = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
        if done.returncode:
            return done.returncode, log
    return 0, log


def test_the_action_comments_the_plan_and_updates_that_comment_on_the_next_push(
    daemon: str, github: tuple[FakeGitHub, str], tmp_path: Path
) -> None:
    fake, api = github
    for n in range(101):  # the plan comment goes to the second page of comments, which is looked at too
        fake.add(f"a review remark {n}", author="reviewer")
    mallory = fake.add(f"{MARKER} mine now", author="mallory")  # the marker alone does not make a comment ours
    checkout = pull_request(tmp_path / "checkout")
    (checkout / "reconciler").mkdir()  # a pull request's own "reconciler" must not run with the plan token
    hijacked = tmp_path / "hijacked"
    (checkout / "reconciler/__init__.py").write_text("")
    (checkout / "reconciler/__main__.py").write_text(f"open({str(hijacked)!r}, 'w').write('token')\n")
    inputs = {"plan-url": daemon, "plan-token": PLAN_TOKEN}
    status, log = run_action(checkout, inputs, api)
    assert status == 0, log
    assert not hijacked.exists()
    (comment,) = [c for c in fake.comments if MARKER in c["body"] and c["user"]["login"] == "github-actions[bot]"]
    assert comment["body"].startswith(f"{MARKER}\n### reconciler plan for revision ")
    assert "| + | `Campaign guji-harvest-2030` | schedule for now | → 490 recipients |" in comment["body"]
    assert f"added comment {comment['html_url']}" in log

    campaign = checkout / "campaigns/holiday-gift-guide-2030.yaml"
    campaign.write_text(campaign.read_text().replace("status: scheduled", "status: cancelled"))
    status, log = run_action(checkout, inputs, api)
    assert status == 0, log
    assert [c["id"] for c in fake.comments if MARKER in c["body"]] == [mallory["id"], comment["id"]]
    assert "`Campaign holiday-gift-guide-2030` | cancel" in comment["body"]
    assert ("PATCH", f"/repos/{REPOSITORY}/issues/comments/{comment['id']}") in fake.requests
    assert len(fake.comments) == 103 and mallory["body"] == f"{MARKER} mine now"


def test_a_broken_workspace_fails_with_annotations_and_the_comment_lists_its_errors(
    daemon: str, github: tuple[FakeGitHub, str], tmp_path: Path
) -> None:
    fake, api = github
    checkout = pull_request(tmp_path / "checkout")
    campaign = checkout / "campaigns/black-friday-2030.yaml"
    campaign.write_text(campaign.read_text().replace("subject:", "subjct:"))
    status, log = run_action(checkout, {"plan-url": daemon, "plan-token": PLAN_TOKEN}, api)
    assert status == 1
    assert (
        "::error file=campaigns/black-friday-2030.yaml,line=5,col=1,title=Campaign black-friday-2030::subjct: "
        "unknown key 'subjct' (did you mean 'subject'?)"
    ) in log
    (comment,) = fake.comments
    assert "The workspace has 1 error, 0 warnings: nothing is planned until the errors are fixed." in comment["body"]
    assert (
        "- ❌ `campaigns/black-friday-2030.yaml:5` Campaign black-friday-2030: subjct: unknown key" in comment["body"]
    )


def test_without_a_plan_url_the_action_validates_and_comments_nothing(
    github: tuple[FakeGitHub, str], tmp_path: Path
) -> None:
    fake, api = github
    checkout = pull_request(tmp_path / "checkout")
    status, log = run_action(checkout, {}, api)
    assert status == 0, log
    assert "no plan-url given" in log
    assert fake.requests == []
    campaign = checkout / "campaigns/black-friday-2030.yaml"
    campaign.write_text(campaign.read_text().replace("subject:", "subjct:"))
    status, log = run_action(checkout, {}, api)
    assert status == 1  # the last step fails the job on validate's errors
    assert "::error file=campaigns/black-friday-2030.yaml,line=5" in log


def test_a_plan_that_cannot_be_made_replaces_the_comment_without_saying_where_the_daemon_is(
    github: tuple[FakeGitHub, str], tmp_path: Path
) -> None:
    fake, api = github
    earlier = fake.add(f"{MARKER}\n### reconciler plan for revision 0123456789ab\n\nPlan: 1 to schedule.\n")
    checkout = pull_request(tmp_path / "checkout")
    nowhere = f"http://127.0.0.1:{free_port()}"
    status, log = run_action(checkout, {"plan-url": nowhere, "plan-token": PLAN_TOKEN}, api)
    assert status == 1
    assert f"cannot reach {nowhere}/api/v1/plan" in log
    assert earlier["body"].startswith(f"{MARKER}\n### reconciler plan\n\nThe plan could not be made for this commit")
    assert nowhere not in earlier["body"]
