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
import state_helpers

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
    The state is the test's (the workspace's own file on SQLite, its database on PostgreSQL) unless `env` names
    one."""
    environment = {**os.environ, "NO_COLOR": "1"}
    environment.pop("RECONCILER_STATE", None)
    environment.update(state_helpers.state_env())
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


@pytest.fixture(scope="session")
def state_template(postgres_cluster: pg_cluster.Cluster) -> str:
    """The name of a database migrated once for the session, which each test's state is copied from (a copy takes
    a fraction of the time the migrations take)."""
    from reconciler.state.db import open_postgres

    url = postgres_cluster.database()
    open_postgres(url).close()
    return pg_cluster.name_of(url)


@pytest.fixture(autouse=True)
def engine_state(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """On the PostgreSQL pass (RECONCILER_TEST_ENGINE=postgresql), a fresh migrated database of the test's own is
    its state: RECONCILER_STATE for the commands and daemons it starts, `state_helpers.place` for what it opens
    itself; marked `empty_state`, a database no migration has run on, as a SQLite file not made yet. Nothing on
    the SQLite pass."""
    if not state_helpers.on_postgres():
        yield
        state_helpers.close_opened()
        return
    if state_helpers.module_url is not None:  # the module's tests share the state a module fixture built
        state_helpers.current_url = state_helpers.module_url
        monkeypatch.setenv("RECONCILER_STATE", state_helpers.module_url)
        yield
        state_helpers.close_opened()
        return
    cluster: pg_cluster.Cluster = request.getfixturevalue("postgres_cluster")
    empty = request.node.get_closest_marker("empty_state") is not None
    url = cluster.database() if empty else cluster.database(template=request.getfixturevalue("state_template"))
    state_helpers.current_url = url
    monkeypatch.setenv("RECONCILER_STATE", url)
    try:
        yield
    finally:
        state_helpers.close_opened()
        state_helpers.current_url = None
        cluster.drop(url)


@pytest.fixture(scope="module")
def module_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """For a module-scoped fixture that builds a state its module's tests share (the SQLite file of a workspace
    made once): on the PostgreSQL pass, one database for the module, the state of each of its tests."""
    if not state_helpers.on_postgres():
        yield
        return
    cluster: pg_cluster.Cluster = request.getfixturevalue("postgres_cluster")
    url = cluster.database(template=request.getfixturevalue("state_template"))
    state_helpers.module_url = state_helpers.current_url = url
    try:
        yield
    finally:
        state_helpers.module_url = state_helpers.current_url = None
        cluster.drop(url)


def _sqlite_case(item: pytest.Item) -> bool:
    """A case of a test parametrised by engine (`state_db` and the like) that is SQLite's."""
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "sqlite" in callspec.params.values()


def _why_not_on_postgres(item: pytest.Item) -> str | None:
    """Why the PostgreSQL pass leaves this test out, or None where it runs it."""
    marker = item.get_closest_marker("sqlite_only")
    if marker is not None:
        return "about SQLite: " + (marker.args[0] if marker.args else "its state file")
    if item.get_closest_marker("no_state") is not None:
        return "uses no state: the SQLite pass ran it"
    if item.get_closest_marker("postgresql") is not None:
        return "runs on a PostgreSQL database of its own: the SQLite pass ran it"
    if _sqlite_case(item):
        return "the SQLite case of a test run on both engines"
    return None


MARKERS = (
    "sqlite_only(reason): about the SQLite state file itself; the PostgreSQL pass (RECONCILER_TEST_ENGINE=postgresql) "
    "skips it",
    "no_state: uses no state database; the PostgreSQL pass skips it",
    "empty_state: on the PostgreSQL pass, the test's database starts with no migration run (as a SQLite file not "
    "made yet)",
)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL pass, only the tests that use a state run; all are skipped, saying why, where PostgreSQL
    is not installed (a laptop), unless RECONCILER_TEST_POSTGRES=1 (CI), where that stops the run."""
    if not state_helpers.on_postgres():
        return
    try:
        pg_cluster.binaries()
        missing = None
    except pg_cluster.NotInstalled as exc:
        if os.environ.get(pg_cluster.REQUIRED_ENV) == "1":
            raise pytest.UsageError(f"the PostgreSQL pass cannot run: {exc}") from None
        missing = f"the PostgreSQL pass of the suite is skipped: {exc}"
    for item in items:
        why = missing or _why_not_on_postgres(item)
        if why is not None:
            item.add_marker(pytest.mark.skip(reason=why))


def pytest_report_header(config: pytest.Config) -> str:
    if state_helpers.on_postgres():
        return "state engine: PostgreSQL (a database of its own per test, on a throwaway cluster)"
    return "state engine: SQLite (RECONCILER_TEST_ENGINE=postgresql runs the tests that use a state on PostgreSQL)"


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
