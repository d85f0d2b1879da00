"""Ctrl-C during a large import, as a terminal sends it (SIGINT to the whole process group: the importing process
and its worker processes): it stops with one message saying what was saved, no traceback, and running the same
command again finishes the job without duplicating anyone."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import state_helpers
from conftest import reconciler, wait_for
from reconciler.imports import BATCH_ROWS, ImportInterrupted, import_file
from reconciler.load import load_workspace
from reconciler.state.postgres import PostgresDatabase

ROWS = 150_000
"""Enough bytes for the worker processes (imports.PARALLEL_FROM_BYTES) and many batches after the first."""


def _count(root: Path, sql: str) -> int:
    if state_helpers.on_postgres():
        return int(state_helpers.query(root, sql)[0][0])
    try:
        with sqlite3.connect(f"file:{root / '.state/reconciler.db'}?mode=ro", uri=True) as db:
            return int(db.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:  # not created, or not migrated yet
        return 0


def _big_import(example: Path) -> tuple[list[str], subprocess.Popen[str]]:
    """`contacts import` of ROWS rows, started in a session of its own (as a terminal runs it)."""
    lines = ["email,first_name,orders_count"] + [f"person{n}@example.com,Pat{n},{n % 7}" for n in range(ROWS)]
    (example / "big.csv").write_text("\n".join(lines) + "\n")
    command = [sys.executable, "-m", "reconciler", "contacts", "import", "big.csv", "--list", "offers"]
    command += ["--consent", "shop checkout v2"]
    env = {**{k: v for k, v in os.environ.items() if k != "RECONCILER_STATE"}, **state_helpers.state_env()}
    process = subprocess.Popen(
        command, cwd=example, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    return command, process


def test_ctrl_c_stops_an_import_between_batches_and_running_it_again_is_safe(example: Path) -> None:
    command, process = _big_import(example)
    try:
        wait_for(lambda: _count(example, "SELECT count(*) FROM contacts") > 0, "the first batch", timeout=120)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: every process of the terminal's group
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Aborted" not in err, err
    saved = _count(example, "SELECT count(*) FROM contacts")
    assert 0 < saved < ROWS and saved % 10_000 == 0, saved  # whole batches only
    assert f"big.csv: interrupted; {saved:,} contacts of it were saved" in err, err
    assert "Running the same command again is safe" in err
    assert _count(example, "SELECT count(*) FROM imports WHERE finished_at IS NULL") == 1
    assert _count(example, "SELECT count(*) FROM audit WHERE action = 'interrupted'") == 1

    again = reconciler(*command[3:], cwd=example)
    assert again.returncode == 0, again.stderr
    assert (
        f"{ROWS:,} rows, {ROWS - saved:,} new, {saved:,} updated, 0 rejected, {ROWS - saved:,} subscriptions added"
        in (again.stdout)
    )
    assert _count(example, "SELECT count(*) FROM contacts") == ROWS
    assert _count(example, "SELECT count(*) FROM subscriptions WHERE list = 'offers'") == ROWS
    assert _count(example, "SELECT count(*) FROM consent WHERE action = 'subscribe'") == ROWS  # nobody twice


def test_ctrl_c_twice_still_stops_the_import_at_once(example: Path) -> None:
    """An impatient second Ctrl-C, while the command was already stopping (its message printed), left it waiting
    for good on a worker process (only kill -9 ended it)."""
    _, process = _big_import(example)
    said: list[str] = []
    assert process.stderr is not None
    reader = threading.Thread(target=lambda: said.extend(iter(process.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: _count(example, "SELECT count(*) FROM contacts") > 0, "the first batch", timeout=120)
        os.killpg(process.pid, signal.SIGINT)
        try:
            wait_for(lambda: any("Running the same command again is safe" in line for line in said), "the message", 120)
        except AssertionError as timed_out:  # what it said instead, and whether it still runs
            raise AssertionError(f"{timed_out}; running: {process.poll() is None}; said: {said}") from None
        for _ in range(2):  # and again, while it stops
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=30)
        for pipe in (process.stdout, process.stderr):  # even when it failed: an open pipe fails a later test
            if pipe is not None:
                pipe.close()
    assert process.returncode == 130, said
    assert not any("Traceback" in line for line in said), said


def _import_in_process(example: Path, db: Any, progress: Callable[[int], None]) -> None:
    """`import_file` of three batches of new addresses, calling `progress` after each batch."""
    desired, problems = load_workspace(example)
    assert not problems
    (example / "big.csv").write_text("email\n" + "".join(f"person{n}@example.com\n" for n in range(3 * BATCH_ROWS)))
    now = datetime(2026, 12, 3, tzinfo=UTC)
    import_file(db, desired, example / "big.csv", lists=["offers"], consent_text=None, now=now, progress=progress)


class _SignalsInItsFinalizer:
    """An object whose `__del__` takes Ctrl-C, as a connection's or a pipe's finalizer may when the signal lands
    while the collector runs it: Python prints the KeyboardInterrupt raised there and drops it."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)
        sum(range(1000))  # bytecodes after the signal: its handler runs here, inside the finalizer


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped KeyboardInterrupt
def test_ctrl_c_that_lands_in_a_finalizer_still_stops_the_import_after_the_batch(example: Path) -> None:
    """A KeyboardInterrupt dropped in a finalizer let the import run to its end, exit 0, as if nobody had pressed
    Ctrl-C (a rare timing: the collector runs finalizers at any moment)."""
    db = state_helpers.open_state(example)

    def ctrl_c_in_a_finalizer(done: int) -> None:
        if done == BATCH_ROWS:
            _SignalsInItsFinalizer()  # collected at once, its finalizer runs here

    with pytest.raises(ImportInterrupted, match="Running the same command again is safe"):
        _import_in_process(example, db, ctrl_c_in_a_finalizer)
    assert _count(example, "SELECT count(*) FROM contacts") == BATCH_ROWS  # the batch written, none after it


@pytest.mark.skipif(not state_helpers.on_postgres(), reason="about PostgreSQL: a statement cut off inside psycopg")
def test_ctrl_c_that_cuts_a_statement_off_half_way_on_postgresql_still_says_what_was_saved(example: Path) -> None:
    """Ctrl-C inside psycopg between sending a statement and reading its answer left the connection refusing every
    other command: the import ended in "unexpected OperationalError: another command is already in progress"
    instead of saying what was saved (seen in CI as an import that never said it stopped)."""
    db = state_helpers.open_state(example)
    assert isinstance(db, PostgresDatabase)

    def ctrl_c_half_way_through_a_statement(done: int) -> None:
        if done == 2 * BATCH_ROWS:
            db.conn.raw.pgconn.send_query(b"SELECT count(*) FROM contacts")  # sent; its answer never read
            raise KeyboardInterrupt

    with pytest.raises(ImportInterrupted, match=f"{2 * BATCH_ROWS:,} contacts of it were saved"):
        _import_in_process(example, db, ctrl_c_half_way_through_a_statement)
    assert _count(example, "SELECT count(*) FROM imports WHERE finished_at IS NULL") == 1
