"""What the processes of a bench run used while it ran, to say what limits it: CPU seconds of the daemons (and of
the render process each starts), of the PostgreSQL server's processes, of smtp-sink and of everything else on the
machine (other work sharing its cores), read from /proc every quarter of a second (a process that ends keeps what
it used last); and what PostgreSQL's sessions were doing, sampled every 100 ms from pg_stat_activity: running,
waiting for a lock (a row, an advisory lock: dispatchers serialised), or waiting for their client.

Linux only (/proc); elsewhere the figures are empty and the bench prints its rates alone.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
GROUPS = ("daemons", "render", "postgresql", "smtp-sink")


@dataclass
class Used:
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds by group: GROUPS, and "others" (the rest of the machine)."""
    by_daemon: list[float] = field(default_factory=list)
    """CPU seconds of each daemon with its render process."""
    sessions: Counter[str] = field(default_factory=Counter)
    """pg_stat_activity samples of the daemons' sessions: "active", "lock" (waiting for one), "idle in transaction",
    "idle"."""

    def cores(self, *groups: str) -> float:
        return sum(self.cpu.get(g, 0.0) for g in groups) / self.seconds if self.seconds else 0.0

    def per_message(self, group: str, messages: int) -> float:
        """Milliseconds of CPU per message."""
        return 1000 * self.cpu.get(group, 0.0) / messages if messages else 0.0

    def share(self, state: str) -> float:
        total = sum(self.sessions.values())
        return self.sessions[state] / total if total else 0.0


def _stat(pid: int) -> tuple[float, int] | None:
    """(CPU seconds so far, parent pid) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK, int(fields[1])


def _processes() -> dict[int, tuple[float, int]]:
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _stat(int(name))) is not None:
            found[int(name)] = stat
    return found


def _server(pid: int, folder: str) -> bool:
    """Whether the process is the PostgreSQL server whose data are in `folder` (its postmaster)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres" and folder in command
    except OSError:
        return False


class Usage:
    """`start()` when the daemons are let go, `stop()` when the last has ended: what was used in between."""

    def __init__(self, *, daemons: list[int], sink: int, server_folder: Path, url: str) -> None:
        self.daemons, self.sink, self.folder, self.url = daemons, sink, str(server_folder), url
        self.done = threading.Event()
        self.first: dict[int, tuple[float, int]] = {}
        self.last: dict[int, tuple[float, int]] = {}
        self.server: set[int] = set()
        self.sessions: Counter[str] = Counter()
        self.threads: list[threading.Thread] = []
        self.started = 0.0

    def start(self) -> None:
        if not Path("/proc/self/stat").exists():
            return
        self.first = _processes()
        self.last = dict(self.first)
        self.server = {pid for pid in self.first if _server(pid, self.folder)}
        self.started = time.monotonic()
        self.threads = [threading.Thread(target=self._read_processes), threading.Thread(target=self._read_sessions)]
        for thread in self.threads:
            thread.start()

    def _read_processes(self) -> None:
        while not self.done.wait(0.25):
            self.last.update(_processes())

    def _read_sessions(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.done.wait(0.1):
                for state, wait in conn.execute(
                    "SELECT state, wait_event_type FROM pg_stat_activity WHERE backend_type = 'client backend' "
                    "AND datname = current_database() AND pid <> pg_backend_pid()"
                ):
                    self.sessions["lock" if wait in ("Lock", "LWLock") else str(state)] += 1

    def stop(self) -> Used:
        self.done.set()
        for thread in self.threads:
            thread.join()
        if not self.threads:
            return Used(0.0)
        self.last.update(_processes())
        used = Used(time.monotonic() - self.started, {g: 0.0 for g in (*GROUPS, "others")}, [0.0] * len(self.daemons))
        used.sessions = self.sessions
        for pid, (cpu, parent) in self.last.items():
            spent = cpu - self.first.get(pid, (0.0, 0))[0]
            group = self._group(pid, parent)
            used.cpu[group] += spent
            owner = pid if pid in self.daemons else parent
            if owner in self.daemons:
                used.by_daemon[self.daemons.index(owner)] += spent
        return used

    def _group(self, pid: int, parent: int) -> str:
        if pid in self.daemons:
            return "daemons"
        if parent in self.daemons:
            return "render"
        if pid == self.sink:
            return "smtp-sink"
        if pid in self.server or parent in self.server:
            return "postgresql"
        return "others"
