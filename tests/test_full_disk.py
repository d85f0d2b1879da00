"""A state database on a filesystem that fills up mid-send: the daemon says so, loses nothing, and carries on when
there is room again. A real small filesystem (tmpfs) where the machine lets a test mount one; test_dispatch_faults
injects the same error at the SQLite layer everywhere else."""

from __future__ import annotations

import errno
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import wait_for
from daemon_process import WATCHING, Daemon, sending_daemon
from sending import import_contacts, ledger, workspace
from smtp_sink import Sink, SinkServer

pytestmark = pytest.mark.sqlite_only("a full disk under the state file")

RECIPIENTS = 400


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """The workspace's `.state` folder on a 16 MB tmpfs of its own."""
    folder = tmp_path / ".state"
    folder.mkdir()
    mount = shutil.which("mount")
    made = subprocess.run(
        [mount or "mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True
    )
    if mount is None or made.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root; test_dispatch_faults covers a full disk at the SQLite layer")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Writes a file until the filesystem has no room left; returns it (deleting it makes room again)."""
    filler = folder / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as out:  # unbuffered: nothing is left to fail again on close
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def problems(daemon: Daemon) -> str:
    try:
        answer = httpx.get(f"http://127.0.0.1:{daemon.port}/healthz", timeout=30)
    except httpx.TransportError:
        return ""
    return " ".join(map(str, answer.json()["problems"])) if answer.status_code == 503 else ""


def test_a_full_disk_mid_send_is_reported_and_sending_resumes_when_there_is_room(
    tmp_path: Path, small_disk: Path, daemons: list[Daemon]
) -> None:
    full = threading.Event()
    sink = Sink()

    def fill_after_100(*_: object) -> None:
        if not full.is_set() and len(sink.messages) >= 100:
            fill(small_disk)
            full.set()

    sink.on_message = fill_after_100
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port, connections=2)
        import_contacts(root, RECIPIENTS)
        daemons.append(sending_daemon(root))
        daemon = daemons[0]
        daemon.wait_for_output(WATCHING)
        wait_for(full.is_set, "the disk to fill mid-send", 60)
        wait_for(lambda: "full" in problems(daemon), "/healthz to say the disk is full", 60)
        stalled = len(sink.messages)
        assert daemon.process.poll() is None, daemon.output
        (small_disk / "filler").unlink()
        wait_for(lambda: ledger(root).get("queued", 0) == 0, "the campaign to be sent once there is room", 120)
        daemon.stop()
    states = ledger(root)
    received = sink.received()
    assert stalled < RECIPIENTS and max(received.values()) == 1  # nobody twice
    assert states["sent"] == len(received) and states["sent"] + states.get("uncertain", 0) == RECIPIENTS, states
    assert states.get("uncertain", 0) <= 2  # at most one per connection, on the wire when the disk filled
    assert "Traceback" not in daemon.output
