"""Where the state is: a SQLite file, or a PostgreSQL database, as `--state` or RECONCILER_STATE name it.

A PostgreSQL database is named by a libpq URL, ``postgresql://user:password@host:port/dbname?param=value`` (or
``postgres://…``), or by libpq's key=value connection string after ``postgresql:``
(``postgresql:host=/run/postgresql dbname=mail``). Anything else is the path of a SQLite file, as before.

`display()` is how the location is shown in messages and logs: never with its password (a URL's password, or a
``password=`` parameter, in the query or the key=value string).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

ENV = "RECONCILER_STATE"
DEFAULT_PATH = ".state/reconciler.db"
URL_SCHEMES = ("postgresql://", "postgres://")
CONNINFO_PREFIX = "postgresql:"
_PAIR = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")
"""One key=value of a libpq connection string (a value may be quoted, with backslash escapes)."""


def _secret(key: str) -> bool:
    return "password" in unquote(key).lower()  # password, sslpassword


@dataclass(frozen=True)
class StateLocation:
    """A SQLite file (`path`) or a PostgreSQL database (`conninfo`, what libpq is given)."""

    path: Path | None = None
    conninfo: str | None = None

    @property
    def is_postgres(self) -> bool:
        return self.conninfo is not None

    def display(self) -> str:
        """The location for people to read: a PostgreSQL URL or connection string without its password."""
        if self.conninfo is None:
            return str(self.path)
        if self.conninfo.startswith(URL_SCHEMES):
            return _display_url(self.conninfo)
        pairs = [(key, value) for key, value in _PAIR.findall(self.conninfo) if not _secret(key)]
        return CONNINFO_PREFIX + " ".join(f"{key}={value}" for key, value in pairs)

    def scrub(self, text: str) -> str:
        """`text` (a driver's error message) with the location's password, wherever it appears, as `***`: a
        connection string libpq cannot parse is quoted back in its message."""
        for secret in sorted(self._secrets(), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _secrets(self) -> set[str]:
        """The passwords the location holds, as written and as decoded."""
        if self.conninfo is None:
            return set()
        if self.conninfo.startswith(URL_SCHEMES):
            found = _url_secrets(self.conninfo)
        else:
            found = [value for key, value in _PAIR.findall(self.conninfo) if _secret(key)]
            found += [value[1:-1].replace("\\'", "'").replace("\\\\", "\\") for value in found if value[:1] == "'"]
        return {text for value in found for text in (value, unquote(value)) if text}


def _url_user_end(rest: str) -> int:
    """Where the user part of a URL (after its `scheme://`) ends, at its `@`; -1 without one (see _display_url)."""
    slash = rest.find("/")
    at = (rest if slash < 0 else rest[:slash]).rfind("@")
    if at < 0 <= slash:
        path_end = rest.find("?", slash)
        at = rest.rfind("@", slash, len(rest) if path_end < 0 else path_end)
    return at


def _url_secrets(url: str) -> list[str]:
    rest = url.partition("://")[2]
    at = _url_user_end(rest)
    found = [rest[:at].split(":", 1)[1]] if at >= 0 and ":" in rest[:at] else []
    query = rest[at + 1 :].partition("?")[2]
    pairs = [pair.split("=", 1) for pair in query.split("&") if "=" in pair]
    return found + [value for key, value in pairs if _secret(key)]


def _display_url(url: str) -> str:
    """The URL without the password of its user part and without password parameters. As libpq reads it, the
    user part is there when an `@` comes before the first `/`; up to the last such `@` is left out (and up to an
    `@` in the path: a password with an unencoded `/`, which libpq misreads, is not shown either)."""
    scheme, _, rest = url.partition("://")
    at = _url_user_end(rest)
    user = rest[:at].split(":", 1)[0] if at >= 0 else ""
    place, _, query = rest[at + 1 :].partition("?")
    kept = [pair for pair in query.split("&") if pair and not _secret(pair.split("=", 1)[0])]
    return f"{scheme}://{user + '@' if user else ''}{place}" + ("?" + "&".join(kept) if kept else "")


def parse(text: str | Path) -> StateLocation:
    """The location a `--state` value or RECONCILER_STATE names."""
    if isinstance(text, str):
        if text.startswith(URL_SCHEMES):
            return StateLocation(conninfo=text)
        if text.startswith(CONNINFO_PREFIX):
            return StateLocation(conninfo=text[len(CONNINFO_PREFIX) :].strip())
    return StateLocation(path=Path(text))


def choose(workspace: Path, override: Path | str | None = None) -> StateLocation:
    """`--state`, else RECONCILER_STATE, else `.state/reconciler.db` under the workspace."""
    chosen = override or os.environ.get(ENV)
    return parse(chosen) if chosen else StateLocation(path=workspace / DEFAULT_PATH)
