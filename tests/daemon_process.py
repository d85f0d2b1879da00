"""`reconciler run` as a child process on a free port, its output read by a thread so a test can wait for a line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

from conftest import wait_for
from smtp_sink import free_port
from state_helpers import state_env

WATCHING = "reconciler: watching"  # logged once the file watcher is in place, before the first pass


class Daemon:
    """`with Daemon(root, "--interval", "60") as daemon:` runs the daemon on 127.0.0.1:`daemon.port` (never the
    fixed default 8780: a developer's `make run` or a parallel test run may hold it). Leaving the block kills it if
    it still runs; the pipe is always closed, so no ResourceWarning reaches a later test."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        environment = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
        environment.pop("RECONCILER_STATE", None)  # the test's state (state_helpers), unless `env` names one
        environment.update(state_env())
        environment.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run", "--port", str(self.port), *args],
            cwd=root,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"daemon-output-{self.process.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:  # closed here, at end of file: when the daemon (and any child of it) has exited
            for line in self.process.stdout:
                with self._lock:
                    self._lines.append(line)

    @property
    def output(self) -> str:
        """Everything the daemon printed so far (stdout and stderr)."""
        with self._lock:
            return "".join(self._lines)

    def wait_for_output(self, text: str, timeout: float = 60.0) -> None:
        """Until the daemon has printed `text`; fails at once if it exits first."""
        wait_for(lambda: text in self.output or self.process.poll() is not None, f"{text!r} from the daemon", timeout)
        assert text in self.output, f"the daemon exited ({self.process.returncode}) without {text!r}:\n{self.output}"

    def stop(self, timeout: float = 60.0) -> str:
        """SIGTERM, as systemd stops it; its whole output once it has exited, which must be with status 0."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)
        self._finish(timeout)
        assert self.process.returncode == 0, self.output
        return self.output

    def kill(self) -> None:
        """SIGKILL: a crash, nothing cleaned up."""
        self.process.kill()
        self.process.wait()

    def _finish(self, timeout: float) -> None:
        self._reader.join(timeout)
        assert not self._reader.is_alive(), f"the daemon's output stayed open after it exited:\n{self.output}"

    def __enter__(self) -> Daemon:
        return self

    def close(self) -> None:
        """Kill it if it still runs; wait for it and for the end of its output (the pipe is closed then)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._finish(60.0)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def sending_daemon(root: Path, *args: str) -> Daemon:
    """A daemon that sends: a fixed signing key, rendering in its own process (as on a one-core server)."""
    env = {"RECONCILER_SECRET": "test-secret", "RECONCILER_RENDER_PROCESSES": "0"}
    return Daemon(root, "--interval", "60", *args, env=env)
