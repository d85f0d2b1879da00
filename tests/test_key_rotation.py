"""Changing the key that signs links: links in mail already sent keep working when the old key is listed in
RECONCILER_SECRET_PREVIOUS (or was the one generated into the state database), new links use the new key, and a
change that breaks links already sent is announced when the daemon starts."""

from __future__ import annotations

import html
import re
from pathlib import Path

import httpx
import pytest

from conftest import reconciler
from daemon_process import WATCHING, Daemon
from sending import LATER, MUCH_LATER, TEMPLATE, body, import_contacts, parse, tick, workspace
from smtp_sink import Sink, SinkServer, free_port
from web_server import WebServer

FIRST = "first-server-secret-0123456789abcdef"
SECOND = "second-server-secret-0123456789abcdef"
LINKS = '<mj-text><a href="{{ preferences_url }}">Preferences</a> <a href="{{ view_online_url }}">View</a></mj-text>'
SECOND_CAMPAIGN = """\
kind: Campaign
name: again
subject: Again
template: news/hello
audience: {lists: [news]}
send_at: now
status: scheduled
"""


def _links(data: bytes) -> dict[str, str]:
    """The signed links of one received message, by what they are for."""
    message = parse(data)
    header = str(message["List-Unsubscribe"])
    hrefs = [html.unescape(h) for h in re.findall(r'href="([^"]+)"', body(message))]
    return {
        "unsubscribe": next(part.strip(" <>") for part in header.split(",") if "http" in part),
        "preferences": next(h for h in hrefs if "/p/" in h),
        "view": next(h for h in hrefs if "/v/" in h),
        "click": next(h for h in hrefs if "/c/" in h),
    }


def _answers(links: dict[str, str]) -> dict[str, int]:
    """What the web service answers each link (404: the token did not verify)."""
    with httpx.Client() as client:
        return {what: client.get(url, follow_redirects=False).status_code for what, url in links.items()}


WORKING = {"unsubscribe": 200, "preferences": 200, "view": 200, "click": 302}
BROKEN = {"unsubscribe": 404, "preferences": 404, "view": 404, "click": 404}


def test_links_in_sent_mail_survive_setting_and_rotating_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECONCILER_SECRET", raising=False)
    monkeypatch.delenv("RECONCILER_SECRET_PREVIOUS", raising=False)
    sink, web_port = Sink(), free_port()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port, public_url=f"http://127.0.0.1:{web_port}")
        template = root / "templates/news/hello.mjml"
        template.write_text(TEMPLATE.replace("</mj-column>", LINKS + "</mj-column>", 1))
        import_contacts(root, 2)
        tick(root)  # no RECONCILER_SECRET: signed with a key generated into the state database
        generated = _links(sink.messages[0][1])

        monkeypatch.setenv("RECONCILER_SECRET", FIRST)  # as the warning advises
        (root / "campaigns/again.yaml").write_text(SECOND_CAMPAIGN)
        tick(root, LATER)
        first = _links(sink.messages[-1][1])
    assert first["unsubscribe"] != generated["unsubscribe"]  # new links use the new key
    with WebServer(root, port=web_port):
        assert _answers(generated) == WORKING  # the generated key still verifies what it signed
        assert _answers(first) == WORKING

    monkeypatch.setenv("RECONCILER_SECRET", SECOND)  # rotated without listing the first key
    broken = reconciler("tick", "--now", MUCH_LATER, cwd=root)
    assert "RECONCILER_SECRET_PREVIOUS" in broken.stderr and "answer 404" in broken.stderr, broken.stderr
    with WebServer(root, port=web_port):
        assert _answers(first) == BROKEN

    monkeypatch.setenv("RECONCILER_SECRET_PREVIOUS", f"{FIRST}, another-retired-key")
    fixed = reconciler("tick", "--now", MUCH_LATER, cwd=root)
    assert "answer 404" not in fixed.stderr, fixed.stderr
    with WebServer(root, port=web_port):
        assert _answers(first) == WORKING and _answers(generated) == WORKING


def test_the_daemon_says_at_start_when_the_key_of_sent_links_is_gone(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        import_contacts(root, 1)
        assert reconciler("tick", cwd=root, env={"RECONCILER_SECRET": FIRST}).returncode == 0
    assert len(sink.messages) == 1
    with Daemon(root, "--interval", "60", env={"RECONCILER_SECRET": SECOND}) as daemon:
        daemon.wait_for_output(WATCHING)
        health = httpx.get(f"http://127.0.0.1:{daemon.port}/healthz", timeout=30)
        status = reconciler("status", cwd=root)
        output = daemon.stop()
    # the log said it once; /healthz and status keep saying it while the daemon runs so (it answered "ok")
    assert health.status_code == 503 and any("RECONCILER_SECRET_PREVIOUS" in p for p in health.json()["problems"])
    assert "RECONCILER_SECRET_PREVIOUS" in status.stdout, status.stdout
    warning = next(line for line in output.splitlines() if "RECONCILER_SECRET_PREVIOUS" in line)
    assert warning.startswith("WARNING") and "messages already sent" in warning, output
    assert FIRST not in output and SECOND not in output  # fingerprints only, never a key


def test_previous_keys_verify_mail_links_only() -> None:
    from reconciler.tokens import Signer

    old, new = Signer(b"old key"), Signer(b"new key", previous=(b"old key",))
    assert new.verify("unsubscribe", old.sign("unsubscribe", 42)) == 42
    assert new.verify("click", old.sign("click", 7, "https://a.example/"), "https://a.example/") == 7
    assert new.verify("csrf", old.sign("csrf", 1, "5")) is None  # forms and sessions are not in sent mail
    assert new.verify("session", old.sign("session", 1)) is None
    assert new.sign("unsubscribe", 42) != old.sign("unsubscribe", 42)
    assert Signer(b"old key").verify("unsubscribe", new.sign("unsubscribe", 42)) is None
