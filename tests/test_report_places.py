"""Where opens and clicks came from: a GeoIP country database named in Settings (built here with mmdb-writer, as
MaxMind's and DB-IP's files are laid out), real opens and clicks through the app under uvicorn, and the report's
countries counted by hand. Only the country is kept, never the address."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from unittest.mock import AsyncMock

import httpx
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from conftest import reconciler, wait_for
from journeys import Journey
from reconciler import geoip
from reconciler.check import validate_workspace
from reconciler.clock import SystemClock
from reconciler.errors import Problem
from reconciler.web.context import WebContext, fetch_url
from report_state import seed
from smtp_sink import Sink, SinkServer, free_port
from web_server import WebServer

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
GMAIL_PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
SCANNER = "Mozilla/5.0 (compatible; Barracuda Sentinel)"


def country_database(path: Path, networks: Mapping[str, dict[str, Any]]) -> Path:
    """A country database as GeoLite2-Country lays it out: an IPv6 tree holding the IPv4 space too."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country")
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.to_db_file(str(path))
    return path


PLACES: dict[str, dict[str, Any]] = {
    "81.2.69.0/24": {"country": {"iso_code": "GB", "names": {"en": "United Kingdom"}}},
    "89.160.20.0/24": {"country": {"iso_code": "SE"}},
    "2a02:ec0::/29": {"registered_country": {"iso_code": "PL"}},  # an anycast range: only where it is registered
    "74.125.0.0/16": {"country": {"iso_code": "US"}},  # Google's image proxy
}


@pytest.fixture
def located(tmp_path: Path) -> Iterator[tuple[Journey, str, Sink]]:
    country_database(tmp_path / "geo/country.mmdb", PLACES)
    port = free_port()
    sink = Sink()
    with SinkServer(sink) as smtp:
        j = seed(
            tmp_path, sink, smtp, public_url=f"http://127.0.0.1:{port}",
            settings="tracking: {geoip_database: geo/country.mmdb}",
        )  # fmt: skip
        with WebServer(tmp_path, port=port) as base:
            yield j, base, sink


def _links(sink: Sink, person: str, subject: str) -> tuple[str, str]:
    """The tracking pixel and the first tracked link of `person`'s message with `subject`."""
    for rcpt, data in sink.messages:
        text = data.decode("utf-8", "replace").replace("=\r\n", "").replace("=3D", "=")
        if rcpt == f"{person}@example.com" and f"Subject: {subject}" in text:
            pixel = re.search(r"(/o/[^\"'\s]+\.gif)", text)
            click = re.search(r"(/c/[^\"'\s]+)", text)
            assert pixel and click, text[:2000]
            return pixel.group(1), click.group(1).replace("&amp;", "&")
    raise AssertionError(f"no message {subject!r} to {person}")


def _report(root: Path, *args: str) -> dict[str, Any]:
    done = reconciler("report", "launch", "--format", "json", *args, cwd=root)
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def test_the_report_says_where_people_opened_and_clicked_from(located: tuple[Journey, str, Sink]) -> None:
    j, base, sink = located
    with httpx.Client(base_url=base) as client:

        def fetch(person: str, what: str, ip: str, agent: str = BROWSER) -> None:
            pixel, click = _links(sink, person, "Reminder")
            answer = client.get(
                pixel if what == "open" else click, headers={"x-forwarded-for": ip, "user-agent": agent}
            )
            assert answer.status_code in (200, 302), (person, what, answer.status_code)

        fetch("a", "open", "81.2.69.142")  # a: two opens and a click from the UK: one person, three
        fetch("a", "open", "81.2.69.160")
        fetch("a", "click", "81.2.69.142")
        fetch("b", "open", "89.160.20.112")  # b: Sweden
        fetch("b", "open", "89.160.20.112", SCANNER)  # a scanner at the same address: a machine, no place
        fetch("c", "open", "10.1.2.3")  # c: a private address: no country
        fetch("c", "open", "74.125.1.1", GMAIL_PROXY)  # c through Gmail's proxy: counted, but the place is Google's
        fetch("d", "click", "2a02:ec0::1")  # d: only a registered country
    wait_for(lambda: sum(c["opens_and_clicks"] for c in _report(j.root)["ip_countries"]) == 5, "the opens written")
    counted = _report(j.root)
    assert counted["ip_countries"] == [
        {"country": "GB", "people": 1, "opens_and_clicks": 3},
        {"country": "PL", "people": 1, "opens_and_clicks": 1},
        {"country": "SE", "people": 1, "opens_and_clicks": 1},
    ]
    assert _report(j.root, "--since", "2000-01-01T00:00:00Z")["ip_countries"] == counted["ip_countries"]
    assert reconciler("report", "--rebuild", cwd=j.root).returncode == 0
    assert _report(j.root)["ip_countries"] == counted["ip_countries"]
    text = reconciler("report", "launch", cwd=j.root).stdout
    assert "Where opens and clicks came from (GeoIP; people only)" in text and re.search(r"GB\s+1\s+3", text)
    html = reconciler("report", "launch", "--format", "html", cwd=j.root).stdout
    assert 'id="ip-countries"' in html and "<svg" in html
    stored = j.db.conn.execute("SELECT * FROM engagement").fetchall()
    assert not any("81.2.69" in str(value) or "89.160" in str(value) for row in stored for value in row)


def test_validate_names_a_geoip_database_it_cannot_use(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as smtp:
        seed(tmp_path, sink, smtp)
    settings = tmp_path / "spec/settings.yaml"
    original = settings.read_text()
    (tmp_path / "geo").mkdir()
    (tmp_path / "geo/notes.txt").write_text("not a database\n")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.mmdb"
    country_database(outside, PLACES)
    (tmp_path / "geo/linked.mmdb").symlink_to(outside)
    cases = {
        "geo/missing.mmdb": "cannot use 'geo/missing.mmdb' as the GeoIP database: geo/missing.mmdb does not exist",
        "geo/notes.txt": "cannot use 'geo/notes.txt' as the GeoIP database: geo/notes.txt is not a MaxMind/DB-IP",
        "geo/linked.mmdb": "it leads outside the workspace",
        "../country.mmdb": "is not a path inside the workspace",
    }
    for configured, expected in cases.items():
        settings.write_text(original + f"tracking: {{geoip_database: {configured!r}}}\n")
        done = reconciler("validate", cwd=tmp_path)
        assert done.returncode == 1 and expected in done.stdout + done.stderr, (configured, done.stdout)
        assert "settings.yaml:" in done.stdout + done.stderr
    settings.write_text(original + "tracking: {geoip_database: geo/country.mmdb}\n")
    checked: dict[str, list[Problem]] = {}  # as the daemon remembers a revision's problems from pass to pass
    assert any("geo/country.mmdb does not exist" in p.message for p in validate_workspace(tmp_path, checked=checked)[1])
    country_database(tmp_path / "geo/country.mmdb", PLACES)  # the file arrives; the workspace's files are the same
    assert [p for p in validate_workspace(tmp_path, checked=checked)[1] if p.severity == "error"] == []
    assert reconciler("validate", cwd=tmp_path).returncode == 0


def test_a_database_replaced_on_disk_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(geoip, "LOOK_AGAIN", 0.0)  # every lookup looks at the file (the daemon: once a second)
    path = country_database(tmp_path / "country.mmdb", {"81.2.69.0/24": {"country": {"iso_code": "GB"}}})
    locator = geoip.Locator(path)
    assert locator.country("81.2.69.142") == "GB"
    assert locator.country("192.168.1.1") is None and locator.country("not an address") is None
    assert locator.country("8.8.8.8") is None  # not in this database
    newer = country_database(tmp_path / "new.mmdb", {"81.2.69.0/24": {"country": {"iso_code": "IE"}},
                                                     "8.8.8.0/24": {"country": {"iso_code": "US"}}})  # fmt: skip
    os.replace(newer, path)  # as geoipupdate does
    assert locator.country("81.2.69.142") == "IE" and locator.country("8.8.8.8") == "US"
    path.write_bytes(b"truncated")  # a broken download: the database read before stays in use
    assert locator.country("81.2.69.142") == "IE"
    assert geoip.Locator(path).country("81.2.69.142") is None  # and a daemon starting now has none: no exception
    monkeypatch.setenv(geoip.ENV, str(tmp_path / "elsewhere.mmdb"))
    assert geoip.database_path(tmp_path, "geo/country.mmdb") == tmp_path / "elsewhere.mmdb"
    monkeypatch.delenv(geoip.ENV)
    assert geoip.database_path(tmp_path, "geo/country.mmdb") == tmp_path / "geo/country.mmdb"
    assert geoip.database_path(tmp_path, None) is None


def test_the_file_is_read_in_a_worker_thread_never_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a database of megabytes on the event loop would stall every page and the send loop's sibling."""
    path = country_database(tmp_path / "country.mmdb", {"81.2.69.0/24": {"country": {"iso_code": "GB"}}})
    monkeypatch.setenv(geoip.ENV, str(path))
    on_loop: list[bool] = []
    opened = geoip.Locator._open

    def spy(self: geoip.Locator, stamp: tuple[int, int]) -> None:
        on_loop.append(threading.current_thread() is threading.main_thread())
        opened(self, stamp)

    monkeypatch.setattr(geoip.Locator, "_open", spy)
    web = WebContext(cast(Any, None), SystemClock(), tmp_path, fetch_url)
    settings = SimpleNamespace(tracking=SimpleNamespace(geoip_database=None))  # the environment names the file
    site = SimpleNamespace(runtime=SimpleNamespace(settings=settings))
    monkeypatch.setattr(web, "site", AsyncMock(return_value=site))
    request = cast(Any, SimpleNamespace(client=SimpleNamespace(host="81.2.69.142")))

    async def opens() -> list[str | None]:
        return [await web.country(request) for _ in range(3)]

    assert asyncio.run(opens()) == ["GB", "GB", "GB"]  # read once (LOOK_AGAIN), then from memory on the loop
    assert on_loop == [False]


CUT_SHORT = """
import os, sys
from reconciler import geoip
path = sys.argv[1]
locator = geoip.Locator(path)
before = locator.country("10.0.0.1"), locator.country("100.0.200.1")
os.truncate(path, 4096)  # `cp` over the file, or a download half-written, while opens arrive
print(before, locator.country("100.0.200.1"), locator.country("100.1.2.3"))
"""


def test_a_database_cut_short_on_disk_never_crashes_the_process(tmp_path: Path) -> None:
    """The reader memory-mapped the file: cut short in place, the next lookup killed the daemon with SIGBUS."""
    codes = ("FR", "DE")  # neighbours differ, so the tree cannot fold them: a file of some hundred KB
    networks = {f"100.{n // 256}.{n % 256}.0/24": {"country": {"iso_code": codes[n % 2]}} for n in range(20_000)}
    path = country_database(tmp_path / "big.mmdb", networks)
    assert path.stat().st_size > 50_000
    done = subprocess.run([sys.executable, "-c", CUT_SHORT, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "(None, 'FR') FR FR", done.stdout  # the database read before answers on
