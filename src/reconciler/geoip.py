"""The country of an IP address, from a MaxMind GeoIP2/GeoLite2 or DB-IP country (or city) database file.

Reports show where opens and clicks came from. Only the two-letter country code is kept with the open or click;
the address itself is never stored. The database is read with the maintained `maxminddb` reader, into memory (a
country database is a few MB): a file memory-mapped instead would crash the process with SIGBUS when someone cut it
short on disk (`cp` over it, a download half-written). It is read again when the file changes on disk, so a weekly
`geoipupdate` is picked up without a restart; a new file that cannot be read leaves the one read before in use.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import maxminddb
from maxminddb.errors import InvalidDatabaseError

log = logging.getLogger(__name__)

ENV = "RECONCILER_GEOIP_DATABASE"
"""The operator's override of Settings' `tracking.geoip_database`: a path anywhere on the server (the environment
is the operator's; a path in the reviewed YAML stays inside the workspace)."""


LOOK_AGAIN = 1.0
"""Seconds between two looks at the database file's size and time."""


class GeoIpError(Exception):
    """The file named as the GeoIP database cannot be used."""


def check(path: Path) -> str:
    """The database's type (e.g. "GeoLite2-Country"), or GeoIpError saying why the file cannot be used."""
    try:
        with maxminddb.open_database(str(path), maxminddb.MODE_MEMORY) as reader:
            kind = str(reader.metadata().database_type)
    except FileNotFoundError as exc:
        raise GeoIpError(f"{path} does not exist") from exc
    except (InvalidDatabaseError, ValueError, OSError) as exc:
        raise GeoIpError(f"{path} is not a MaxMind/DB-IP database ({exc})") from exc
    return kind


def _country(found: object) -> str | None:
    """The ISO code of a GeoIP2/DB-IP record: `country`, else `registered_country` (anycast and satellite
    addresses have only the latter)."""
    if not isinstance(found, dict):
        return None
    for key in ("country", "registered_country"):
        place = found.get(key)
        if isinstance(place, dict) and isinstance(place.get("iso_code"), str):
            code = place["iso_code"].upper()
            return code if len(code) == 2 and code.isascii() and code.isalpha() else None
    return None


@dataclass
class Locator:
    """Looks countries up in the file at `path`, reopening it when its size or mtime changes."""

    path: Path
    _reader: maxminddb.Reader | None = None
    _seen: tuple[int, int] | None = None
    _broken: tuple[int, int] | None = None
    _looked_at: float = -LOOK_AGAIN
    """When the file's size and time were last read: once a second at most, not once per open or click."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def country(self, ip: str | None) -> str | None:
        """The country of `ip`, or None (no address, a private one, not in the database, no usable database)."""
        if not ip:
            return None
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if not address.is_global:
            return None
        reader = self._current()
        if reader is None:
            return None
        try:
            return _country(reader.get(address))
        except (InvalidDatabaseError, ValueError, OSError):
            return None

    def due(self) -> bool:
        """Whether the next lookup looks at the file (its size and time, and reads it again when it changed): at
        most once every LOOK_AGAIN seconds. A caller on an event loop makes that lookup in a worker thread."""
        return time.monotonic() - self._looked_at >= LOOK_AGAIN

    def _current(self) -> maxminddb.Reader | None:
        now = time.monotonic()
        if now - self._looked_at < LOOK_AGAIN:
            return self._reader
        self._looked_at = now
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        stamp = (info.st_size, info.st_mtime_ns)
        with self._lock:
            if stamp != self._seen and stamp != self._broken:
                self._open(stamp)
            return self._reader

    def _open(self, stamp: tuple[int, int]) -> None:
        try:
            reader = maxminddb.open_database(str(self.path), maxminddb.MODE_MEMORY)
        except (InvalidDatabaseError, ValueError, OSError) as exc:
            log.warning(
                "cannot read the GeoIP database %s (%s); countries of opens and clicks are not recorded", self.path, exc
            )
            self._broken = stamp
            return
        if self._reader is not None:
            self._reader.close()
        self._reader, self._seen, self._broken = reader, stamp, None

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
            self._reader, self._seen = None, None


def database_path(root: Path, configured: str | None) -> Path | None:
    """Where the database is: the environment's override, else Settings' path inside the workspace, else None."""
    override = os.environ.get(ENV, "").strip()
    if override:
        return Path(override)
    return root / configured if configured else None
