"""A throwaway PostgreSQL cluster for the tests: initdb into a temporary folder, a server listening only on a unix
socket in that folder (no TCP port), durability switched off (fsync, synchronous_commit, full_page_writes: a crash
loses nothing a test needs), started once per test session and stopped at its end, on failure and on Ctrl-C too.
A watchdog process stops it and removes the folder if the test process is killed outright.

PostgreSQL refuses to run as root: as root (CI may be), the cluster belongs to `nobody` and its commands run through
`runuser`; as anyone else, as that user. Each test that asks gets a fresh, empty database of its own.

Where PostgreSQL is not installed, the tests that need it are skipped, unless RECONCILER_TEST_POSTGRES=1 (CI sets
it), where they fail: a CI that silently skipped them would prove nothing.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

REQUIRED_ENV = "RECONCILER_TEST_POSTGRES"
RUN_AS = "nobody"
"""The unprivileged user the cluster runs as when the tests run as root."""
SUPERUSER = "postgres"
DEBIAN = "/usr/lib/postgresql/*/bin/initdb"
SETTINGS = {
    "listen_addresses": "''",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'32MB'",
    "max_connections": "60",
    "log_min_messages": "warning",
}
WATCHDOG = """
import os, shutil, subprocess, sys, time
parent, folder, command = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
while True:
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        break
    time.sleep(1)
subprocess.run(command, capture_output=True, timeout=60)
shutil.rmtree(folder, ignore_errors=True)
"""
"""Run beside the tests: once the test process is gone (killed, so no finaliser ran), stop the server and remove
its folder."""


class NotInstalled(Exception):
    """No initdb on PATH nor under /usr/lib/postgresql/*/bin."""


def binaries() -> Path:
    """The folder of initdb and pg_ctl: the one on PATH (symlinks followed), else Debian's newest."""
    found = shutil.which("initdb")
    if found:
        folder = Path(found).resolve().parent
        if (folder / "pg_ctl").exists():
            return folder
    versions = sorted(glob.glob(DEBIAN), key=lambda p: int(Path(p).parts[-3]))
    if versions:
        return Path(versions[-1]).parent
    raise NotInstalled(
        "PostgreSQL is not installed (no initdb on PATH nor under /usr/lib/postgresql/*/bin): install Debian's "
        f"`postgresql` package to run these tests; {REQUIRED_ENV}=1 makes this a failure instead of a skip"
    )


class Cluster:
    """One running server; `database()` makes a fresh empty database and returns its URL."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.bin = binaries()
        self.settings = {**SETTINGS, **(settings or {})}
        """postgresql.conf's lines: the tests' SETTINGS, with what the caller changes (bench/scale.py: more memory)."""
        self.folder = Path(tempfile.mkdtemp(prefix="reconciler-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam(RUN_AS)
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", RUN_AS, "--"]
        self.watchdog: subprocess.Popen[bytes] | None = None
        self.running = False

    def _run(self, *command: str) -> None:
        done = subprocess.run(
            [*self.as_user, *command], cwd=self.folder, capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}\n{log}")

    def start(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )
        settings = {**self.settings, "unix_socket_directories": f"'{self.folder}'"}
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self.watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(self.folder), *self.as_user, *self._stop_command()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the tests' process group does not stop it before it cleans up
        )
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        self.running = True

    def _stop_command(self) -> list[str]:
        return [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]

    def stop(self) -> None:
        try:
            if self.running:  # already stopped (the watchdog, a crash) is fine: the folder goes all the same
                subprocess.run([*self.as_user, *self._stop_command()], cwd="/", capture_output=True, timeout=120)
                self.running = False
        finally:
            if self.watchdog is not None:
                self.watchdog.kill()
                self.watchdog.wait()
                self.watchdog = None
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str) -> str:
        """A libpq URL reaching `database` over the cluster's unix socket."""
        return f"postgresql:///{database}?host={quote(str(self.folder), safe='')}&user={SUPERUSER}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql)

    def database(self, *, icu_locale: str | None = None, template: str | None = None) -> str:
        """A new empty database; its URL. `icu_locale` (such as "en-US"): its collation is that language's, by
        ICU, instead of the cluster's C. `template`: a copy of that database (by name) instead."""
        name = "t_" + uuid.uuid4().hex[:16]
        if template is not None:
            if not re.fullmatch(r"t_[0-9a-f]{16}", template):
                raise ValueError(f"not a database of this cluster: {template!r}")
            self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        elif icu_locale is None:
            self._admin(f'CREATE DATABASE "{name}"')
        else:
            if not re.fullmatch(r"[A-Za-z0-9-]+", icu_locale):
                raise ValueError(f"not a locale name: {icu_locale!r}")
            self._admin(f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '{icu_locale}'")
        return self.url(name)

    def drop(self, url: str) -> None:
        name = name_of(url)
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def name_of(url: str) -> str:
    """The database name in a URL `Cluster.url` made."""
    return url.split("?", 1)[0].rsplit("/", 1)[1]
