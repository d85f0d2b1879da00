"""`reconciler send-test`: one message to someone who checks it, through the real transport, with nothing written.

Each test runs the command as a user would, against a real SMTP server on loopback (aiosmtpd) or the outbox
folder, a real state database and, for the links in the message, the real web app under uvicorn; assertions are on
what arrived, what the command printed, what the pages answer and the database's content before and after.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import httpx
import pytest

from conftest import reconciler
from dkim_keys import KEY_ENV, dkim_key, sign_with_dkim
from sending import body, import_contacts, ledger, parse, query, workspace
from smtp_sink import Sink, SinkServer
from state_helpers import dump
from web_server import WebServer

TO = "reviewer@example.org"


def content_digest(root: Path) -> str:
    """Everything the state database holds, as SQL text, hashed: equal digests, equal content."""
    return hashlib.sha256("\n".join(dump(root)).encode()).hexdigest()


def with_page_links(root: Path) -> None:
    """The test workspace's template, with the preference and view-online links a footer usually has."""
    template = root / "templates/news/hello.mjml"
    links = '<a href="{{ preferences_url }}">Preferences</a> <a href="{{ view_online_url }}">View online</a> '
    template.write_text(
        template.read_text().replace('<a href="{{ unsubscribe_url }}">', links + '<a href="{{ unsubscribe_url }}">')
    )


def test_a_test_send_arrives_untracked_for_a_real_contact_and_changes_nothing(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        with_page_links(root)
        import_contacts(root, 3)
        before = content_digest(root)
        result = reconciler(
            "send-test", "hello", "--to", "Reviewer@Example.org", "--contact", "person1@example.net", cwd=root
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Sent a test of hello as person1@example.net gets it to {TO} through sink: 250")
    assert content_digest(root) == before and ledger(root) == Counter()

    assert [rcpt for rcpt, _ in sink.messages] == [TO]
    message = parse(sink.messages[0][1])
    assert message["To"] == TO and message["Subject"] == "[TEST] Hello Pat1"
    html, text = body(message), body(message, "plain")
    assert "Hello Pat1, Łódź" in html and "Łódź" in text  # the contact's own data
    assert 'href="https://shop.example.com/a?utm_source=newsletter' in html  # straight to the shop, no redirect
    assert "mail.example.com/c/" not in html + text and "mail.example.com/o/" not in html  # no click, no pixel
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # the links point to the real pages, which answer them as invalid: nothing can act on person1
    unsubscribe = message["List-Unsubscribe"].split(",")[0].strip(" <>")
    preferences, view = (
        re.search(rf'href="https://mail\.example\.com(/{kind}/[^"]+)"', html).group(1)  # type: ignore[union-attr]
        for kind in ("p", "v")
    )
    with WebServer(root) as base:
        one_click = httpx.post(
            base + unsubscribe.removeprefix("https://mail.example.com"), data={"List-Unsubscribe": "One-Click"}
        )
        pages = [httpx.get(base + path) for path in (preferences, view)]
    assert one_click.status_code == 404 and [page.status_code for page in pages] == [404, 404]
    assert query(
        root,
        "SELECT s.status FROM subscriptions s JOIN contacts c ON c.id = s.contact_id WHERE c.email = ?",
        "person1@example.net",
    ) == [("subscribed",)]


def test_a_refused_test_send_fails_with_the_reply_and_changes_nothing(tmp_path: Path) -> None:
    sink = Sink(script=lambda rcpt, attempt, phase: "550 5.7.1 rejected by policy" if phase == "rcpt" else None)
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        import_contacts(root, 2)
        before = content_digest(root)
        result = reconciler("send-test", "hello", "--to", TO, "--contact", "person0@example.net", cwd=root)
    assert result.returncode == 1 and not sink.messages
    assert f"hello: the test message to {TO} was not sent: transport sink answered: 550 5.7.1 rejected" in (
        result.stderr
    )
    assert content_digest(root) == before  # not a policy rejection of the campaign, not an attempt


def test_dkim_signs_a_test_send_with_the_key_from_the_environment(tmp_path: Path) -> None:
    dkim = pytest.importorskip("dkim")
    key = dkim_key()
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        sign_with_dkim(root)
        unsigned = reconciler("send-test", "hello", "--to", TO, cwd=root)
        signed = reconciler("send-test", "hello", "--to", TO, cwd=root, env={KEY_ENV: key.pem})
    assert unsigned.returncode == 1
    assert "transport sink signs with DKIM, but TEST_DKIM_KEY is not set here" in unsigned.stderr
    assert signed.returncode == 0, signed.stderr
    assert "as the sample contact gets it" in signed.stdout
    assert len(sink.messages) == 1  # the unsigned one never left
    data = sink.messages[0][1]
    assert dkim.verify(data, dnsfunc=key.dns())
    assert parse(data)["Subject"] == "[TEST] Hello Alex"
    assert not (root / ".state/reconciler.db").exists()  # a sample contact needs no state database


def test_a_relay_password_missing_from_the_environment_is_named(tmp_path: Path) -> None:
    root = workspace(tmp_path, 25)
    settings = root / "spec/settings.yaml"
    settings.write_text(
        settings.read_text().replace("timeout: 10", "timeout: 10\n    username: mailer\n    password_env: TEST_PW")
    )
    result = reconciler("send-test", "hello", "--to", TO, cwd=root, env={"TEST_PW": ""})
    assert result.returncode == 1
    assert "transport sink logs in as mailer with the password in TEST_PW, which is not set here" in result.stderr


def test_the_outbox_gets_a_test_of_a_campaign_a_stage_and_a_workflow_step(example: Path) -> None:
    targets = {
        "black-friday-2030": "[TEST] ",
        "holiday-gift-guide-2030:reminder": "[TEST] Two days left for delivery before Christmas",
        "welcome:hello": "[TEST] Welcome to Kettle & Crow, Alex",
    }
    written = []
    for target, subject in targets.items():
        result = reconciler("send-test", target, "--to", TO, cwd=example)
        assert result.returncode == 0, result.stderr
        found = re.match(r"Wrote (\.state/outbox/\S+\.eml): a test of ", result.stdout)
        assert found, result.stdout
        message = parse((example / found.group(1)).read_bytes())
        assert message["To"] == TO and message["Subject"].startswith(subject)
        html = body(message)
        assert "mail.kettleandcrow.example/c/" not in html and "mail.kettleandcrow.example/o/" not in html
        written.append(found.group(1))
    assert len(set(written)) == 3  # a new Message-ID each time: no mailbox folds two tests into one
    assert not (example / ".state/reconciler.db").exists()

    stage = reconciler("render", "holiday-gift-guide-2030:reminder", cwd=example)
    assert stage.returncode == 0 and "orders placed by Wednesday 18 December" in stage.stdout
    workflow = reconciler("send-test", "welcome", "--to", TO, cwd=example)
    assert workflow.returncode == 2 and "welcome is a workflow: name one of its send steps (welcome:hello, " in (
        workflow.stderr
    )


def test_send_test_refuses_a_bad_address_a_broken_workspace_and_unknown_names(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        bad_to = reconciler("send-test", "hello", "--to", "reviewer@", cwd=root)
        no_contact = reconciler("send-test", "hello", "--to", TO, "--contact", "nobody@example.net", cwd=root)
        no_stage = reconciler("send-test", "hello:reminder", "--to", TO, cwd=root)
        campaign = root / "campaigns/hello.yaml"
        campaign.write_text(campaign.read_text().replace("subject:", "subjct:"))
        broken = reconciler("send-test", "hello", "--to", TO, cwd=root)
    assert not sink.messages
    assert bad_to.returncode == 2 and "--to: 'reviewer@' is not a valid email address" in bad_to.stderr
    assert no_contact.returncode == 2
    assert "--contact: nobody@example.net is not a contact in the state database" in no_contact.stderr
    assert no_stage.returncode == 2 and "campaign hello has no stage named 'reminder'; its stages: none" in (
        no_stage.stderr
    )
    assert broken.returncode == 1
    assert "campaigns/hello.yaml:3:1: Campaign hello: subjct: unknown key 'subjct'" in broken.stdout
