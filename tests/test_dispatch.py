"""Sending exactly once, against a real SMTP server (aiosmtpd on loopback) with scripted faults.

Each test writes a small workspace whose transport points at the server, imports contacts into a real SQLite
file, and runs `reconciler tick` (or `run`) as a user would; assertions count what arrived at the server.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import reconciler
from dkim_keys import KEY_ENV, dkim_key, sign_with_dkim
from sending import LATER, MUCH_LATER, NOW, body, bucket, import_contacts, ledger, pairs, parse, query, tick, workspace
from smtp_sink import Sink, SinkServer
from state_helpers import connected, open_state


def test_every_recipient_of_2000_gets_exactly_one_message_that_parses_cleanly(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        emails = import_contacts(root, 2000)
        result = tick(root)
    assert "sent 2,000" in result.stdout
    received = sink.received()
    assert set(received) == set(emails) and set(received.values()) == {1}
    assert ledger(root) == Counter(sent=2000)

    rcpt, data = sink.messages[0]
    message = parse(data)
    assert message["To"].addresses[0].addr_spec == rcpt
    assert message["Subject"].startswith("Hello Pat")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https, mailto = (part.strip(" <>") for part in message["List-Unsubscribe"].split(","))
    assert https.startswith("https://mail.example.com/u/") and mailto.startswith("mailto:help@example.com?")
    assert message["List-Id"] == "News and offers <news.mail.example.com>"
    assert message["Precedence"] == "bulk" and message["Feedback-ID"] == "hello:main:campaign:mail.example.com"
    assert message["Message-ID"].endswith("@example.com>") and message["Date"]
    html, text = body(message), body(message, "plain")
    assert "Łódź" in html and "Łódź" in text
    assert html.count("https://mail.example.com/c/") == 4  # four http(s) links tracked, mailto and unsubscribe not
    assert "mailto:help@example.com" in html and https in html
    assert "https://mail.example.com/o/" in html  # the open pixel
    assert "Our news" in html  # the preheader, hidden first in the body
    # the click URL carries the destination with UTM parameters on the shop's own links only
    from urllib.parse import parse_qs, urlsplit

    targets = [
        parse_qs(urlsplit(u.replace("&amp;", "&")).query)["u"][0]
        for u in __import__("re").findall(r'href="(https://mail\.example\.com/c/[^"]+)"', html)
    ]
    assert targets[0] == "https://shop.example.com/a?utm_source=newsletter&utm_medium=email&utm_campaign=hello"
    assert targets[1].startswith("https://shop.example.com/b?x=1&y=2&utm_source=newsletter")
    assert targets[2].startswith(f"https://shop.example.com/c?who={rcpt}&utm_source")
    assert targets[3] == "https://other.example.org/d"
    status = json.loads(reconciler("status", "--format", "json", cwd=root).stdout)
    campaign = status["campaigns"][0]
    assert campaign["status"] == "sent" and campaign["progress"]["sent"] == 2000


def test_451s_and_dropped_connections_are_retried_until_everyone_has_exactly_one(tmp_path: Path) -> None:
    def script(rcpt: str, attempt: int, phase: str) -> str | None:
        if attempt == 1 and phase == "rcpt" and bucket(rcpt, 5) == 0:
            return "451 4.3.0 try again later"
        if attempt == 1 and phase == "rcpt" and bucket(rcpt, 5) == 1 and bucket(rcpt, 3) == 0:
            return "drop"
        return None

    sink = Sink(script)
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        emails = import_contacts(root, 500)
        tick(root)
        first = ledger(root)
        assert first["deferred"] > 100 and first["sent"] + first["deferred"] == 500
        tick(root, NOW)  # nothing is due again before its backoff
        assert ledger(root) == first
        tick(root, LATER)
    received = sink.received()
    assert set(received) == set(emails) and set(received.values()) == {1}
    assert ledger(root) == Counter(sent=500)
    assert any("dropped" in why for _, why in sink.refused)


def test_hard_bounces_suppress_policy_blocks_fail_and_nothing_is_retried(tmp_path: Path) -> None:
    def script(rcpt: str, attempt: int, phase: str) -> str | None:
        if rcpt.startswith("person1@"):
            return "550 5.1.1 no such user"
        if rcpt.startswith("person2@") and phase == "data":
            return "550 5.7.1 message refused as spam"
        if rcpt.startswith("person3@"):
            return "552 5.2.2 mailbox full"
        return None

    sink = Sink(script)
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        import_contacts(root, 20)
        tick(root)
        tick(root, MUCH_LATER)
    states = pairs(root, "SELECT c.email, l.state FROM ledger l JOIN contacts c ON c.id = l.contact_id")
    assert states["person1@example.net"] == states["person2@example.net"] == states["person3@example.net"] == "failed"
    assert sink.attempts["person1@example.net"] == sink.attempts["person2@example.net"] == 1
    suppressed = {row[0] for row in query(root, "SELECT reason FROM suppressions")}
    assert suppressed == {"bounced"} and len(query(root, "SELECT * FROM suppressions")) == 1
    export = json.loads(reconciler("contacts", "export", "person1@example.net", cwd=root).stdout)
    assert "bounced" in json.dumps(export)
    assert query(root, "SELECT policy_failures FROM campaigns") == [(1,)]
    assert len(sink.messages) == 17


def test_many_policy_rejections_pause_the_campaign_until_confirmed(tmp_path: Path) -> None:
    blocked = {"on": True}
    sink = Sink(lambda rcpt, attempt, phase: "554 5.7.1 rejected by policy" if blocked["on"] else None)
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port, connections=1)
        import_contacts(root, 300)
        tick(root)
        campaign = json.loads(reconciler("status", "--format", "json", cwd=root).stdout)["campaigns"][0]
        assert campaign["status"] == "paused" and campaign["reason"] == "PolicyRejections"
        assert ledger(root)["failed"] == 20 and ledger(root)["queued"] == 280
        plan = reconciler("plan", cwd=root)
        assert "apply --confirm hello" in plan.stdout + plan.stderr
        tick(root, LATER)  # the file still says scheduled: it stays paused without a confirmation
        assert ledger(root)["queued"] == 280
        blocked["on"] = False
        tick(root, LATER, "--confirm", "hello")
    assert ledger(root) == Counter(sent=280, failed=20)


def test_an_unsubscribe_recorded_mid_send_stops_that_contacts_message(tmp_path: Path) -> None:
    done = threading.Event()

    def unsubscribe_late_contact(rcpt: str, data: bytes) -> None:
        if rcpt == "person10@example.net" and not done.is_set():
            with connected(tmp_path) as db:  # what the web service will record
                db.execute(
                    "UPDATE subscriptions SET status = 'unsubscribed' WHERE contact_id = "
                    "(SELECT id FROM contacts WHERE email = 'person1500@example.net')"
                )
            done.set()

    sink = Sink(on_message=unsubscribe_late_contact)
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        import_contacts(root, 2000)
        tick(root)
    received = sink.received()
    assert done.is_set() and "person1500@example.net" not in received
    assert len(received) == 1999 and set(received.values()) == {1}
    reason = query(
        root,
        "SELECT l.state, l.last_reply FROM ledger l JOIN contacts c ON c.id = l.contact_id "
        "WHERE c.email = 'person1500@example.net'",
    )
    assert reason[0][0] == "skipped" and "unsubscribed" in str(reason[0][1])


def test_two_ticks_at_once_send_nothing_twice(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        emails = import_contacts(root, 2000)
        reconciler("apply", "--now", NOW, cwd=root)
        with ThreadPoolExecutor(2) as pool:  # two processes started together
            results = list(pool.map(lambda _: reconciler("tick", "--now", NOW, cwd=root), range(2)))
        assert all(r.returncode == 0 for r in results), [r.stdout + r.stderr for r in results]
    received = sink.received()
    assert set(received) == set(emails) and set(received.values()) == {1}
    assert ledger(root) == Counter(sent=2000)


def test_a_connection_cut_after_the_body_is_uncertain_and_not_resent(tmp_path: Path) -> None:
    sink = Sink(lambda rcpt, attempt, phase: "drop" if rcpt == "person3@example.net" and phase == "data" else None)
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        import_contacts(root, 10)
        tick(root)
        tick(root, MUCH_LATER)
    assert sink.attempts["person3@example.net"] == 1
    assert ledger(root) == Counter(sent=9, uncertain=1)


def test_resend_on_uncertain_uses_the_same_message_id(tmp_path: Path) -> None:
    sink = Sink(
        lambda rcpt, attempt, phase: (
            "drop" if attempt == 1 and phase == "data" and rcpt == "person3@example.net" else None
        )
    )
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        settings = root / "spec/settings.yaml"
        settings.write_text(settings.read_text().replace("timeout: 10", "timeout: 10\n    on_uncertain: resend"))
        import_contacts(root, 10)
        tick(root)
        tick(root, LATER)
    assert sink.attempts["person3@example.net"] == 2 and sink.received()["person3@example.net"] == 1
    stored = query(
        root,
        "SELECT l.message_id FROM ledger l JOIN contacts c ON c.id = l.contact_id "
        "WHERE c.email = 'person3@example.net'",
    )[0][0]
    (data,) = [d for r, d in sink.messages if r == "person3@example.net"]
    assert parse(data)["Message-ID"] == stored


def test_dkim_signature_verifies_and_covers_the_unsubscribe_headers(tmp_path: Path) -> None:
    dkim = pytest.importorskip("dkim")
    key = dkim_key()
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        sign_with_dkim(root)
        import_contacts(root, 3)
        result = reconciler("tick", "--now", NOW, cwd=root, env={KEY_ENV: key.pem})
        assert result.returncode == 0, result.stderr
    assert len(sink.messages) == 3
    data = sink.messages[0][1]
    assert dkim.verify(data, dnsfunc=key.dns())
    header = parse(data)["DKIM-Signature"].replace(" ", "").replace("\r\n", "").lower()
    signed = header.split("h=", 1)[1].split(";", 1)[0].split(":")
    assert signed.count("list-unsubscribe") == 2 and signed.count("list-unsubscribe-post") == 2
    tampered = data.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: x")
    assert not dkim.verify(tampered, dnsfunc=key.dns())


def test_a_contact_whose_data_cannot_go_in_a_header_fails_alone(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        (root / "c.jsonl").write_text(
            json.dumps({"email": "ok@example.net", "first_name": "Ola"})
            + "\n"
            + json.dumps({"email": "bad@example.net", "first_name": "Evil\r\nBcc: victim@example.org"})
            + "\n"
        )
        imported = reconciler("contacts", "import", "c.jsonl", "--list", "news", cwd=root)
        assert imported.returncode == 1 and "c.jsonl:2: first_name" in imported.stderr  # refused at import now
        with connected(root) as db:  # as an older version stored it
            db.execute(
                "INSERT INTO contacts(email, email_hash, first_name, created_at, updated_at) VALUES "
                "('bad@example.net', 'h-bad', 'Evil\r\nBcc: victim@example.org', '2026-11-01', '2026-11-01')"
            )
            db.execute(
                "INSERT INTO subscriptions(contact_id, list, status, updated_at) "
                "SELECT id, 'news', 'subscribed', '2026-11-01' FROM contacts WHERE email = 'bad@example.net'"
            )
        tick(root)
    assert [r for r, _ in sink.messages] == ["ok@example.net"]
    for _, data in sink.messages:
        assert b"victim" not in data
    assert ledger(root) == Counter(sent=1, failed=1)


STAGED = """
    kind: Campaign
    name: hello
    subject: "Hello {{ contact.first_name }}"
    template: news/hello
    audience: {lists: [news]}
    send_at: now
    status: scheduled
    stages:
      - {name: reminder, template: news/hello, subject: "Reminder", after: 2d, only: not_opened}
      - {name: thanks, template: news/hello, subject: "Thanks for reading", after: 1d, only: opened}
"""


def test_stages_follow_after_their_delay_to_those_who_did_or_did_not_open(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port, campaign=STAGED)
        import_contacts(root, 10)
        tick(root, "2026-11-24T10:00:00Z")
        assert len(sink.messages) == 10
        opened = ["person1@example.net", "person2@example.net"]
        with connected(root) as db:  # what the tracking pixel will record
            db.conn.executemany(
                "INSERT INTO engagement (ledger_id, contact_id, source_kind, source, stage, action, machine, at) "
                "SELECT l.id, l.contact_id, 'campaign', 'hello', '', 'opened', 0, '2026-11-24T11:00:00Z' "
                "FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE c.email = ?",
                [(e,) for e in opened],
            )
            db.execute(  # a machine open (a privacy proxy) is not an open
                "INSERT INTO engagement (ledger_id, contact_id, source_kind, source, stage, action, machine, at) "
                "SELECT l.id, l.contact_id, 'campaign', 'hello', '', 'opened', 1, '2026-11-24T11:00:00Z' "
                "FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE c.email = 'person3@example.net'"
            )
        tick(root, "2026-11-25T10:00:00Z")  # one day later: nothing yet
        assert len(sink.messages) == 10
        tick(root, "2026-11-26T10:00:01Z")
        reminders = {r for r, d in sink.messages if parse(d)["Subject"] == "Reminder"}
        assert reminders == {f"person{i}@example.net" for i in range(10)} - set(opened)
        status = json.loads(reconciler("status", "--format", "json", cwd=root).stdout)["campaigns"][0]
        assert status["status"] == "sending"
        tick(root, "2026-11-27T10:00:02Z")
        thanks = {r for r, d in sink.messages if parse(d)["Subject"] == "Thanks for reading"}
        assert thanks == set(opened)
        status = json.loads(reconciler("status", "--format", "json", cwd=root).stdout)["campaigns"][0]
        assert status["status"] == "sent" and status["progress"]["sent"] == 20
    assert len(sink.messages) == 20


def test_quiet_hours_and_the_frequency_cap_postpone_marketing_mail(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        settings = root / "spec/settings.yaml"
        settings.write_text(
            settings.read_text() + 'quiet_hours: {start: "21:00", end: "08:00"}\nfrequency_cap: {max: 1, per: 7d}\n'
        )
        (root / "c.csv").write_text("email,timezone\ntokyo@example.net,Asia/Tokyo\nwarsaw@example.net,Europe/Warsaw\n")
        assert reconciler("contacts", "import", "c.csv", "--list", "news", cwd=root).returncode == 0
        tick(root, "2026-11-24T14:00:00Z")  # 23:00 in Tokyo, 15:00 in Warsaw
        assert [r for r, _ in sink.messages] == ["warsaw@example.net"]
        waiting = query(root, "SELECT next_attempt_at, last_reply FROM ledger WHERE state = 'queued'")
        assert waiting == [("2026-11-24T23:00:00Z", "postponed: quiet hours in the contact's time zone")]
        tick(root, "2026-11-24T23:00:00Z")  # 08:00 in Tokyo
        assert sorted(r for r, _ in sink.messages) == ["tokyo@example.net", "warsaw@example.net"]

        second = root / "campaigns/second.yaml"
        second.write_text((root / "campaigns/hello.yaml").read_text().replace("name: hello", "name: second"))
        tick(root, "2026-11-25T10:00:00Z")  # 11:00 in Warsaw, 19:00 in Tokyo; both had one message this week
        assert len(sink.messages) == 2
        capped = query(root, "SELECT last_reply FROM ledger WHERE source = 'second'")
        assert {row[0] for row in capped} == {"postponed: frequency cap: at most 1 marketing message(s) per 7 days"}
        tick(root, "2026-12-01T14:00:01Z")  # a week after Warsaw's first message (Tokyo: quiet hours)
        assert len(sink.messages) == 3
        tick(root, "2026-12-01T23:00:01Z")  # a week after Tokyo's, 08:00 there
    assert sorted(r for r, _ in sink.messages) == ["tokyo@example.net"] * 2 + ["warsaw@example.net"] * 2


def test_the_outbox_writes_one_eml_per_message_and_resends_after_a_crash(tmp_path: Path) -> None:
    root = workspace(tmp_path, 1)
    settings = root / "spec/settings.yaml"
    text = settings.read_text().replace("transport: sink}", "transport: outbox}")
    settings.write_text(text.replace("transports:\n", "transports:\n  outbox: {type: outbox}\n"))
    import_contacts(root, 5)
    result = tick(root)
    assert "sent 5" in result.stdout
    files = sorted((root / ".state/outbox").glob("*.eml"))
    assert len(files) == 5
    for path in files:
        parse(path.read_bytes())
    with connected(root) as db:  # as a process killed while writing leaves it
        db.execute("UPDATE ledger SET state = 'sending', claimed_by = 'gone:1:x' WHERE id = 1")
        db.execute("UPDATE campaigns SET status = 'sending', finished_at = NULL")
    result = tick(root, LATER)
    assert "marked uncertain" not in result.stdout and ledger(root) == Counter(sent=5)
    assert len(list((root / ".state/outbox").glob("*.eml"))) == 5  # the same file, written again


def test_rate_limit_holds_across_two_campaigns_on_one_transport(tmp_path: Path) -> None:
    sink = Sink()
    arrivals: list[float] = []
    sink.on_message = lambda rcpt, data: arrivals.append(time.monotonic())
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        settings = root / "spec/settings.yaml"
        settings.write_text(settings.read_text().replace("timeout: 10", "timeout: 10\n    rate: {per_second: 20}"))
        second = root / "campaigns/second.yaml"
        second.write_text((root / "campaigns/hello.yaml").read_text().replace("name: hello", "name: second"))
        import_contacts(root, 40)
        tick(root)
    assert len(sink.messages) == 80
    # A token bucket of `cap` tokens refilled at `rate` a second (RateLimiter: cap = n, refill n per period) lets at
    # most cap + rate × w messages start in any w seconds, and it starts full. The sink sees arrivals, not starts:
    # each lags its start by the rendering and the SMTP exchange, more for some than for others on a busy machine,
    # which can bring the starts of up to `slack` seconds more into one window of arrivals (and shorten the span).
    cap, rate, slack = 20, 20.0, 0.5
    assert arrivals[-1] - arrivals[0] >= (len(arrivals) - cap) / rate - slack  # the 60 after the burst waited
    window = 1.0
    busiest = max(sum(1 for t in arrivals if start <= t < start + window) for start in arrivals)
    assert busiest <= cap + rate * (window + slack), busiest  # 50: without a shared bucket all 80 come within 1 s


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: the CA a test trusts through `ca_file`."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_starttls_checks_the_certificate_and_logs_in_with_the_password_from_the_environment(tmp_path: Path) -> None:
    import ssl

    from aiosmtpd.smtp import AuthResult, LoginPassword

    cert, key = _certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    logins: list[tuple[str, str]] = []

    def authenticator(
        server: object, session: object, envelope: object, mechanism: str, data: LoginPassword
    ) -> AuthResult:
        login, password = data.login.decode(), data.password.decode()
        logins.append((login, password))
        return AuthResult(success=password == "s3cret")

    sink = Sink()
    server = SinkServer(
        sink, tls_context=context, require_starttls=True, authenticator=authenticator, auth_required=True
    )
    with server as port:
        root = workspace(tmp_path / "ws", port)
        settings = root / "spec/settings.yaml"
        plain = settings.read_text()
        secure = plain.replace(
            "security: none", "security: starttls\n    username: mailer\n    password_env: TEST_SMTP"
        )
        settings.write_text(secure)
        import_contacts(root, 3)
        result = reconciler("tick", "--now", NOW, cwd=root, env={"TEST_SMTP": "s3cret"})
        # the system's CAs do not know the certificate: the server cannot be reached, nobody's message is attempted
        assert result.returncode == 1 and ledger(root) == Counter(queued=3)
        assert "cannot be reached" in result.stdout and "certificate" in result.stdout.lower()
        settings.write_text(secure.replace("timeout: 10", f"timeout: 10\n    ca_file: {cert}"))
        result = reconciler("tick", "--now", LATER, cwd=root, env={"TEST_SMTP": "s3cret"})
        assert result.returncode == 0, result.stderr
    assert ledger(root) == Counter(sent=3) and len(sink.messages) == 3
    assert set(logins) == {("mailer", "s3cret")}


def test_a_contact_who_chose_weekly_gets_at_most_one_marketing_email_a_week(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        import_contacts(root, 2)
        tick(root)
        with connected(root) as db:  # as the preference page records it
            db.execute("UPDATE contacts SET frequency = 'weekly' WHERE email = 'person0@example.net'")
        second = root / "campaigns/second.yaml"
        second.write_text((root / "campaigns/hello.yaml").read_text().replace("name: hello", "name: second"))
        tick(root, LATER)
        assert sorted(r for r, _ in sink.messages) == [
            "person0@example.net",
            "person1@example.net",
            "person1@example.net",
        ]
        reply = query(
            root,
            "SELECT l.last_reply FROM ledger l JOIN contacts c ON c.id = l.contact_id "
            "WHERE c.email = 'person0@example.net' AND l.source = 'second'",
        )
        assert reply == [("postponed: the contact chose at most one email a week",)]
        tick(root, "2026-12-01T10:00:01Z")
    assert len(sink.messages) == 4


def test_a_receipt_campaign_makes_no_marketing_campaign_wait_for_a_weekly_contact(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        import_contacts(root, 1, lists=("news", "receipts"))
        with connected(root) as db:  # as the preference page records it
            db.execute("UPDATE contacts SET frequency = 'weekly'")
        hello = root / "campaigns/hello.yaml"
        marketing = hello.read_text()
        hello.write_text(
            marketing.replace("name: hello", "name: receipt").replace("lists: [news]", "lists: [receipts]")
        )
        tick(root)
        assert query(root, "SELECT source, state FROM ledger") == [("receipt", "sent")]
        (root / "campaigns/news.yaml").write_text(marketing)
        tick(root, LATER)
        reply = query(root, "SELECT state, last_reply FROM ledger WHERE source = 'hello'")
    assert [state for state, _ in reply] == ["sent"], reply  # the receipt counts toward no marketing limit
    assert len(sink.messages) == 2


def test_dispatch_in_process_with_the_memory_transport(tmp_path: Path) -> None:
    """Without sockets: scripted replies decide each row's outcome."""
    import asyncio

    from reconciler.clock import FixedClock, parse_instant
    from reconciler.daemon import reconcile_once
    from reconciler.dispatch import Dispatcher
    from reconciler.transports import Delivery, MemoryTransport

    root = workspace(tmp_path, 1)
    import_contacts(root, 4)
    replies = {
        "person1@example.net": Delivery("bounced", "550 5.1.1 no such user", 550, "5.1.1"),
        "person2@example.net": Delivery("uncertain", "connection lost after the message was sent"),
    }
    memory = MemoryTransport(reply=lambda rcpt, data: replies.get(rcpt, Delivery("sent", "250 ok", 250)))
    clock = FixedClock(parse_instant(NOW))
    db = open_state(root)
    assert reconcile_once(root, db, now=clock.now()).started == ["hello"]
    report = asyncio.run(Dispatcher(db, root=root, clock=clock, transports={"sink": memory}).run_pass())
    db.conn.close()
    assert sorted(r for _, r, _ in memory.messages) == ["person0@example.net", "person3@example.net"]
    assert report.sources[0].outcomes == {"sent": 2, "failed": 1, "uncertain": 1}
    assert ledger(root) == Counter(sent=2, failed=1, uncertain=1)
