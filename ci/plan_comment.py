"""Comment a pull request with the reconciler plan against production: the last step of the repository's action.yml.

Runs `reconciler plan --remote $RECONCILER_PLAN_URL --format markdown` in the workspace (the token comes from
RECONCILER_PLAN_TOKEN), then updates the comment an earlier run left, found by the hidden marker MARKER, or adds
one: a pull request has one plan comment, always the latest. A plan that could not be made replaces it too (a stale
plan must not look current); why is in the job's log only, where GitHub masks secrets (a comment may be public).

GitHub Actions sets GITHUB_API_URL, GITHUB_REPOSITORY and GITHUB_EVENT_PATH; GITHUB_TOKEN needs
`pull-requests: write`. Without RECONCILER_PLAN_URL (not configured, or a pull request from a fork, which gets no
secrets) or outside a pull request it only says so. Exit status: the plan's (1 when it has errors or could not be
made), or 1 when the comment could not be written.

    python ci/plan_comment.py [WORKSPACE]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import httpx

MARKER = "<!-- reconciler-plan -->"
AUTHOR = os.environ.get("RECONCILER_COMMENT_AUTHOR", "github-actions[bot]")
"""Whose comment is the plan comment: the account GITHUB_TOKEN writes as (another token, another account)."""
PER_PAGE = 100
FAILED = (
    "### reconciler plan\n\nThe plan could not be made for this commit (the job's log says why); "
    "an earlier plan on this pull request no longer applies.\n"
)


def pull_request_number() -> int | None:
    """The number of the pull request the workflow runs for, from the event GitHub wrote to GITHUB_EVENT_PATH."""
    path = os.environ.get("GITHUB_EVENT_PATH")
    if not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as file:
        event = json.load(file)
    number = (event.get("pull_request") or {}).get("number")
    return number if isinstance(number, int) else None


def make_plan(workspace: str) -> tuple[int, str]:
    """The plan's exit status and the comment's body (the plan in markdown, or FAILED)."""
    url = os.environ["RECONCILER_PLAN_URL"]
    # -P: the installed reconciler, never a `reconciler/` folder the pull request put in the checkout (it would run
    # with the plan token in its environment)
    command = [sys.executable, "-P", "-m", "reconciler", "-C", workspace, "plan", "--remote", url]
    command += ["--format", "markdown"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    sys.stderr.write(done.stderr)
    print(done.stdout, end="")
    made = done.returncode in (0, 1) and done.stdout.lstrip().startswith("### reconciler plan")
    return done.returncode, f"{MARKER}\n{done.stdout if made else FAILED}"


def github() -> httpx.Client:
    api = os.environ.get("GITHUB_API_URL", "https://api.github.com")
    headers = {
        "authorization": f"Bearer {os.environ['GITHUB_TOKEN']}",
        "accept": "application/vnd.github+json",
        "x-github-api-version": "2022-11-28",
    }
    return httpx.Client(base_url=api, headers=headers, timeout=30)


def earlier_comment(client: httpx.Client, repository: str, number: int) -> int | None:
    """The id of the plan comment an earlier run left on the pull request, if any (every page is looked at)."""
    page = 1
    while True:
        answer = client.get(
            f"/repos/{repository}/issues/{number}/comments", params={"per_page": PER_PAGE, "page": page}
        )
        answer.raise_for_status()
        comments: list[dict[str, Any]] = answer.json()
        for comment in comments:
            author = str((comment.get("user") or {}).get("login", ""))
            if MARKER in str(comment.get("body", "")) and author == AUTHOR:  # anyone can write the marker
                return int(comment["id"])
        if len(comments) < PER_PAGE:
            return None
        page += 1


def post(body: str, number: int) -> str:
    """Update the plan comment or add it; what was done, for the log."""
    repository = os.environ["GITHUB_REPOSITORY"]
    with github() as client:
        found = earlier_comment(client, repository, number)
        if found is None:
            answer = client.post(f"/repos/{repository}/issues/{number}/comments", json={"body": body})
        else:
            answer = client.patch(f"/repos/{repository}/issues/comments/{found}", json={"body": body})
        answer.raise_for_status()
    return f"{'added' if found is None else 'updated'} comment {answer.json().get('html_url', '')}".rstrip()


def main(argv: list[str]) -> int:
    workspace = argv[1] if len(argv) > 1 else "."
    if not os.environ.get("RECONCILER_PLAN_URL"):
        print("reconciler: no plan-url given (or a pull request from a fork, which gets no secrets): no plan comment")
        return 0
    number = pull_request_number()
    if number is None:
        print("reconciler: not a pull request: no plan comment")
        return 0
    status, body = make_plan(workspace)
    try:
        print(f"reconciler: plan comment on pull request #{number}: {post(body, number)}", file=sys.stderr)
    except httpx.HTTPError as exc:
        print(f"reconciler: the plan comment could not be written: {exc}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
