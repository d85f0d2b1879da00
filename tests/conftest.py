"""Shared fixtures: paths to the example workspace and a way to write small workspaces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import pg_cluster

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_FOLDERS = ("spec", "campaigns", "templates")
SNS_TOPIC = "arn:aws:sns:eu-west-1:123:ses"
"""The topic tests/sns.py signs for: the daemon takes SNS messages only from the topics an operator names."""
os.environ.setdefault("RECONCILER_SNS_TOPICS", SNS_TOPIC)


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A private copy of the repository's example workspace, safe to edit."""
    for folder in EXAMPLE_FOLDERS:
        shutil.copytree(REPO / folder, tmp_path / folder)
    return tmp_path


def reconciler(
    *args: str, cwd: Path, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the command as a user would, in a fresh process (`input` on its standard input, as a pipe gives it).
    The state is the workspace's own unless `env` names one (RECONCILER_STATE of the test run is left out)."""
    environment = {**os.environ, "NO_COLOR": "1"}
    environment.pop("RECONCILER_STATE", None)
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env=environment,
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0, *, every: float = 0.05) -> None:
    """Poll `condition` until it holds, or fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


WriteFiles = Callable[[dict[str, str]], Path]


@pytest.fixture
def write_files(tmp_path: Path) -> WriteFiles:
    """Write {relative path: text} into the temporary workspace (dedented) and return its root."""

    def write(files: dict[str, str]) -> Path:
        for relative, text in files.items():
            path = tmp_path / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return tmp_path

    return write


@pytest.fixture
def daemons() -> Iterator[list[Any]]:
    """Daemons a test starts (`daemon_process.Daemon`); each is closed at the end, whatever happened."""
    started: list[Any] = []
    yield started
    for daemon in started:
        daemon.close()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[pg_cluster.Cluster]:
    """One throwaway PostgreSQL server for the whole session (tests/pg_cluster.py): skipped where PostgreSQL is
    not installed, a failure there when RECONCILER_TEST_POSTGRES=1 (as in CI)."""
    try:
        cluster = pg_cluster.Cluster()
    except pg_cluster.NotInstalled as exc:
        if os.environ.get(pg_cluster.REQUIRED_ENV) == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: pg_cluster.Cluster) -> Iterator[str]:
    """The URL of a fresh, empty database of its own on the session's PostgreSQL server (dropped afterwards)."""
    url = postgres_cluster.database()
    try:
        yield url
    finally:
        postgres_cluster.drop(url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def state_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A migrated, empty state database on each engine in turn (SQLite in a file; PostgreSQL on the session's
    cluster): a test that takes it runs the same assertions on both."""
    from reconciler.state.db import open_db, open_postgres

    db: Any = (
        open_db(tmp_path / "state.db")
        if request.param == "sqlite"
        else open_postgres(request.getfixturevalue("postgres_url"))
    )
    try:
        yield db
    finally:
        db.close()
