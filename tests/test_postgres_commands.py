"""The commands and the daemon on a PostgreSQL state, driven as a user drives them: `RECONCILER_STATE=postgresql://…`
over a copy of the example workspace, on the session's throwaway cluster (tests/pg_cluster.py), read back with
psycopg. Also what a user sees when the server cannot be reached or refuses the password (never the password),
a daemon that loses its connections and gets them back, and SIGTERM ending a wait for the writers' lock."""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

import pg_cluster
from conftest import reconciler, wait_for
from daemon_process import WATCHING, Daemon
from reconciler.state.dialect import WRITE_LOCK
from reconciler.state.engine import PostgresPool, connection_pool, unavailable_errors
from reconciler.state.location import parse
from sending import parse as parse_message

pytestmark = pytest.mark.postgresql

NOW = "2030-11-26T12:00:00Z"


@dataclass
class Workspace:
    root: Path
    url: str

    @property
    def env(self) -> dict[str, str]:
        return {"RECONCILER_STATE": self.url, "RECONCILER_SECRET": "test-secret"}

    def run(self, *args: str) -> Any:
        return reconciler(*args, cwd=self.root, env=self.env)

    def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return list(conn.execute(sql, params).fetchall())

    def edit(self, relative: str, old: str, new: str) -> None:
        path = self.root / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {relative}"
        path.write_text(text.replace(old, new, 1))

    def import_contacts(self, *emails: str) -> None:
        (self.root / "c.csv").write_text("email\n" + "".join(f"{email}\n" for email in emails))
        done = self.run("contacts", "import", "c.csv", "--list", "newsletter", "--preconfirmed", "--consent", "test")
        assert done.returncode == 0, done.stdout + done.stderr

    def outbox(self) -> list[Path]:
        return sorted((self.root / ".state/outbox").glob("*.eml"))


@pytest.fixture
def pg(example: Path, postgres_url: str) -> Workspace:
    return Workspace(example, postgres_url)


def _one(url: str, sql: str, *params: object) -> Any:
    """The first value of the first row a statement returns."""
    with psycopg.connect(url) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def _migrated(url: str) -> bool:
    return bool(_one(url, "SELECT to_regclass('_sqlite_migrations') IS NOT NULL"))


def test_validate_plan_apply_and_status_run_on_postgresql_and_leave_no_sqlite_file(pg: Workspace) -> None:
    validated = pg.run("validate")
    assert validated.returncode == 0 and "The workspace is valid." in validated.stderr, validated.stderr
    planned = pg.run("plan")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "Plan: 17 to create, 2 to schedule." in planned.stdout
    assert not _migrated(pg.url)  # a plan reads: a database no one applied to is left as it was

    applied = pg.run("apply")
    assert applied.returncode == 0 and "Applied 19 changes" in applied.stdout, applied.stdout + applied.stderr
    assert _migrated(pg.url)
    assert pg.rows("SELECT count(*) FROM campaigns") == [(3,)]
    assert "Plan: no changes." in pg.run("plan").stdout

    shown = pg.run("status")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"State: {parse(pg.url).display()} (PostgreSQL)\n")
    assert "black-friday-2030        scheduled" in shown.stdout
    report = json.loads(pg.run("status", "--format", "json").stdout)
    assert report["engine"] == "postgresql" and report["state"] == parse(pg.url).display()
    assert not (pg.root / ".state/reconciler.db").exists()


def test_contacts_are_imported_and_exported_on_postgresql(pg: Workspace) -> None:
    pg.import_contacts("ann@example.com", "bob@example.com", "cleo@example.com")
    assert pg.rows("SELECT count(*) FROM contacts") == [(3,)]
    exported = pg.run("contacts", "export", "bob@example.com")
    assert exported.returncode == 0, exported.stderr
    found = json.loads(exported.stdout)
    assert found["contact"]["email"] == "bob@example.com"
    assert "newsletter" in json.dumps(found["subscriptions"])
    pg.import_contacts("bob@example.com", "dan@example.com")
    assert pg.rows("SELECT count(*) FROM contacts") == [(4,)]
    assert not (pg.root / ".state/reconciler.db").exists()


def test_a_campaign_goes_out_through_the_outbox_on_postgresql(pg: Workspace) -> None:
    pg.import_contacts("ann@example.com", "bob@example.com")
    pg.edit("campaigns/guji-harvest-2030.yaml", "status: draft", "status: scheduled")
    ticked = pg.run("tick", "--now", NOW)
    assert ticked.returncode == 0, ticked.stdout + ticked.stderr
    assert "Campaign guji-harvest-2030: started" in ticked.stdout
    assert len(pg.outbox()) == 2
    assert pg.rows("SELECT state, count(*) FROM ledger GROUP BY state") == [("sent", 2)]
    assert "Nothing to do." in pg.run("tick", "--now", "2030-11-26T12:01:00Z").stdout
    assert "2/2 sent" in pg.run("status").stdout


def test_segments_show_on_postgresql(pg: Workspace) -> None:
    pg.import_contacts("ann@example.com")
    shown = pg.run("segments", "show", "espresso-people", "--contact", "ann@example.com")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "Segment espresso-people:" in shown.stdout and "ann@example.com is" in shown.stdout


# --- the daemon ------------------------------------------------------------------------------------------------


def _healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
    except httpx.HTTPError:
        return 0, {}
    return answer.status_code, dict(answer.json())


def _daemon(pg: Workspace, *args: str) -> Daemon:
    """A daemon on the PostgreSQL state, its campaigns sent whatever the hour (no quiet hours)."""
    pg.edit("spec/settings.yaml", "quiet_hours:", "# quiet_hours:")
    return Daemon(pg.root, *args, env={**pg.env, "RECONCILER_RENDER_PROCESSES": "0"})


def test_the_daemon_on_postgresql_sends_serves_healthz_and_takes_an_unsubscribe_click(
    pg: Workspace, daemons: list[Daemon]
) -> None:
    pg.import_contacts("ann@example.com", "bob@example.com")
    pg.edit("campaigns/guji-harvest-2030.yaml", "status: draft", "status: scheduled")
    daemons.append(_daemon(pg, "--interval", "3600"))
    daemon = daemons[-1]
    daemon.wait_for_output(WATCHING)
    wait_for(lambda: len(pg.outbox()) == 2, "the campaign's two messages in the outbox", 60)
    status, health = _healthz(daemon.port)
    assert status == 200 and health["status"] == "ok" and health["revision"]["applied"], health

    message = parse_message(next(p for p in pg.outbox() if b"bob@example.com" in p.read_bytes()).read_bytes())
    link = next(part.strip(" <>") for part in str(message["List-Unsubscribe"]).split(",") if "http" in part)
    local = f"http://127.0.0.1:{daemon.port}{urlsplit(link).path}"
    done = httpx.post(local, data={"List-Unsubscribe": "One-Click"}, timeout=30)
    assert done.status_code == 200, done.text
    subscriptions = "SELECT s.status FROM subscriptions s JOIN contacts c ON c.id = s.contact_id WHERE c.email = %s"
    assert pg.rows(subscriptions, "bob@example.com") == [("unsubscribed",)]
    assert pg.rows(subscriptions, "ann@example.com") == [("subscribed",)]

    output = daemon.stop()
    assert "reconciler: stopped" in output
    assert "Daemon: stopped at" in pg.run("status").stdout
    assert not (pg.root / ".state/reconciler.db").exists()


def _refuse_connections(cluster: pg_cluster.Cluster, url: str, *, refused: bool) -> None:
    """The database refuses new connections (and its open ones are ended), as a server restarting does; or
    accepts them again."""
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(not refused).lower()}')
        if refused:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def test_a_daemon_that_loses_its_database_says_so_and_carries_on_when_it_is_back(
    pg: Workspace, postgres_cluster: pg_cluster.Cluster, daemons: list[Daemon]
) -> None:
    daemons.append(_daemon(pg, "--interval", "1"))
    daemon = daemons[-1]
    daemon.wait_for_output(WATCHING)
    wait_for(lambda: _healthz(daemon.port)[0] == 200, "the first pass", 60)
    _refuse_connections(postgres_cluster, pg.url, refused=True)
    try:
        wait_for(lambda: _healthz(daemon.port)[0] == 503, "/healthz to say degraded", 90, every=0.5)
        problems = " ".join(_healthz(daemon.port)[1]["problems"])
        assert "cannot connect to the state database" in problems, problems
        assert "the state database cannot be used now" in problems, problems
        assert daemon.process.poll() is None  # still running
    finally:
        _refuse_connections(postgres_cluster, pg.url, refused=False)
    wait_for(lambda: _healthz(daemon.port)[0] == 200, "/healthz to be ok again", 90, every=0.5)
    wait_for(lambda: "Daemon: ok" in pg.run("status").stdout, "the daemon's record written again", 60)
    assert "reconciler: stopped" in daemon.stop()


def _waiting_for_the_writers_lock(url: str) -> bool:
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'reconciler' "
        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
    )
    return bool(_one(url, sql))


def test_sigterm_ends_a_daemon_waiting_for_the_writers_lock_on_postgresql(pg: Workspace, daemons: list[Daemon]) -> None:
    daemons.append(_daemon(pg, "--interval", "3600"))
    daemon = daemons[-1]
    daemon.wait_for_output(WATCHING)
    wait_for(lambda: _healthz(daemon.port)[0] == 200, "the first pass", 60)
    with psycopg.connect(pg.url) as holder:  # another process holds the writers' lock for minutes
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        pg.edit("campaigns/guji-harvest-2030.yaml", "status: draft", "status: paused")  # a pass that must write
        wait_for(lambda: _waiting_for_the_writers_lock(pg.url), "the daemon to wait for the lock", 60)
        daemon.process.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        daemon.process.wait(60)
        stopped = time.monotonic() - stopping
        holder.rollback()
    print(f"SIGTERM to exit: {stopped:.1f} s")
    assert daemon.process.returncode == 0, daemon.output
    assert stopped < 25, daemon.output  # STOP_GRACE (10 s) and a cancel; the lock timeout alone would take 30 s


# --- errors, the pool ------------------------------------------------------------------------------------------


def _require_a_password(cluster: pg_cluster.Cluster, role: str, password: str) -> None:
    """`role` logs in with `password` only (scram), on the session's cluster whose other users need none."""
    admin_url = cluster.url("postgres")
    hba = Path(_one(admin_url, "SHOW hba_file"))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        line = f"local all {role} scram-sha-256\n"
        if line not in hba.read_text():
            hba.write_text(line + hba.read_text())
        admin.execute("SELECT pg_reload_conf()")


def test_a_wrong_password_is_a_clear_error_that_never_shows_a_password(
    pg: Workspace, postgres_cluster: pg_cluster.Cluster
) -> None:
    _require_a_password(postgres_cluster, "mailer", "right-secret")
    parts = urlsplit(pg.url)
    host = next(pair for pair in parts.query.split("&") if pair.startswith("host="))
    wrong = f"postgresql://mailer:wrong-secret@{parts.path}?{host}"

    def refused() -> bool:
        try:
            psycopg.connect(wrong).close()
        except psycopg.OperationalError:
            return True
        return False

    wait_for(refused, "the server to read its new pg_hba.conf", 30)
    for command in (["status"], ["apply"], ["plan"], ["contacts", "export", "ann@example.com"]):
        done = reconciler(*command, cwd=pg.root, env={"RECONCILER_STATE": wrong})
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"Error: {parse(wrong).display()}: cannot connect to the state database:" in done.stderr
        assert "password authentication failed" in done.stderr and "check that the server runs" in done.stderr
        assert "wrong-secret" not in done.stdout + done.stderr and "right-secret" not in done.stdout + done.stderr
    assert not (pg.root / ".state").exists()


def test_the_pool_hands_out_connections_cancels_what_they_run_and_maps_their_errors(postgres_url: str) -> None:
    place = parse(postgres_url)
    pool = connection_pool(place)
    assert isinstance(pool, PostgresPool) and pool.location == place
    errors = unavailable_errors(place)
    for kind in (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled, psycopg.OperationalError):
        assert issubclass(kind, errors)
    failure: list[BaseException] = []

    def slow() -> None:
        try:
            with pool.connection() as db:
                db.execute("SELECT pg_sleep(60)")
        except BaseException as exc:
            failure.append(exc)

    try:
        worker = threading.Thread(target=slow)
        worker.start()
        wait_for(lambda: bool(pool.busy), "a connection handed out")
        wait_for(lambda: _sleeping(postgres_url), "the statement to run")
        pool.interrupt()  # as a stopping daemon does
        worker.join(30)
        assert not worker.is_alive() and isinstance(failure[0], psycopg.errors.QueryCanceled), failure
        assert isinstance(failure[0], errors)  # a 503 in the web service
        with pool.connection() as db:  # the connection goes on working
            assert db.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.close()


def _sleeping(url: str) -> bool:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%%' AND state = 'active'"
    return bool(_one(url, sql))
