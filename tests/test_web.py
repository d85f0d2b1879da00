"""The web service under uvicorn on loopback: one-click unsubscribe from a received message, preferences, double
opt-in, tracking, the API and webhooks, against the same SQLite file `reconciler tick` sends from."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import reconciler, wait_for
from sending import LATER, NOW, body, import_contacts, ledger, pairs, parse, query, tick, workspace
from smtp_sink import Sink, SinkServer, free_port
from sns import CERT_URL, sns_key_and_certificate, sns_message
from state_helpers import connected
from web_server import WebServer

TOKEN = "test-api-token"


@pytest.fixture(autouse=True)
def api_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_API_TOKEN", TOKEN)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Sink, str, int]]:
    """A workspace whose links point at a web server on loopback, 20 contacts on `news` and `offers`, the campaign
    `hello` sent to `news`: (root, sink, base URL, web port)."""
    sink = Sink()
    web_port = free_port()
    base = f"http://127.0.0.1:{web_port}"
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port, public_url=base)
        import_contacts(root, 20, lists=("news", "offers"))
        tick(root)
        yield root, sink, base, web_port


def unsubscribe_url(data: bytes) -> str:
    header = str(parse(data)["List-Unsubscribe"])
    return next(part.strip(" <>") for part in header.split(",") if "http" in part)


def subscriptions(root: Path, email: str) -> dict[str, str]:
    return pairs(
        root,
        "SELECT s.list, s.status FROM subscriptions s JOIN contacts c ON c.id = s.contact_id WHERE c.email = ?",
        email,
    )


def test_one_click_unsubscribe_from_a_received_message(site: tuple[Path, Sink, str, int]) -> None:
    root, sink, base, port = site
    rcpt, data = next((r, d) for r, d in sink.messages if r == "person3@example.net")
    url = unsubscribe_url(data)
    assert url.startswith(f"{base}/u/")
    with WebServer(root, port=port), httpx.Client() as client:
        page = client.get(url)
        assert page.status_code == 200 and "Unsubscribe?" in page.text
        assert subscriptions(root, rcpt) == {"news": "subscribed", "offers": "subscribed"}  # a GET changes nothing

        path = urlsplit(url).path
        token = path.rsplit("/", 1)[1]
        flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
        for bad in (f"{base}/u/{flipped}", f"{base}/u/{token[1:]}", f"{base}/u/x"):
            answer = client.post(bad, data={"List-Unsubscribe": "One-Click"})
            assert answer.status_code == 404 and answer.text == client.get(f"{base}/u/nothing").text
        assert subscriptions(root, rcpt) == {"news": "subscribed", "offers": "subscribed"}

        assert client.post(url, data={"something": "else"}).status_code == 400  # not RFC 8058's body: no change
        assert subscriptions(root, rcpt) == {"news": "subscribed", "offers": "subscribed"}
        done = client.post(url, data={"List-Unsubscribe": "One-Click"}, follow_redirects=False)
        assert done.status_code == 200 and "You are unsubscribed" in done.text
        assert done.headers["referrer-policy"] == "no-referrer" and done.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in done.headers["content-security-policy"]
        # a provider may post multipart/form-data
        other = next(d for r, d in sink.messages if r == "person4@example.net")
        multipart = client.post(unsubscribe_url(other), files={"List-Unsubscribe": (None, "One-Click")})
        assert multipart.status_code == 200
    assert subscriptions(root, rcpt) == {"news": "unsubscribed", "offers": "subscribed"}
    assert subscriptions(root, "person4@example.net")["news"] == "unsubscribed"
    consent = json.loads(reconciler("contacts", "export", rcpt, cwd=root).stdout)
    assert "one-click" in json.dumps(consent)

    second = root / "campaigns/second.yaml"
    second.write_text((root / "campaigns/hello.yaml").read_text().replace("name: hello", "name: second"))
    before = len(sink.messages)
    with SinkServer(sink) as smtp_port:
        settings = root / "spec/settings.yaml"
        text = settings.read_text()
        settings.write_text(text.replace(f"port: {text.split('port: ')[1].split()[0]}", f"port: {smtp_port}"))
        tick(root, LATER)
    later = [r for r, _ in sink.messages[before:]]
    assert len(later) == 18 and rcpt not in later and "person4@example.net" not in later


def test_preference_page_in_chromium(site: tuple[Path, Sink, str, int]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    root, sink, _base, port = site
    rcpt, data = next((r, d) for r, d in sink.messages if r == "person5@example.net")
    artifacts = Path(__file__).resolve().parent.parent / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with WebServer(root, port=port), sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
        page.goto(unsubscribe_url(data))
        page.get_by_role("link", name="Choose what you receive").click()
        page.wait_for_selector("text=Your email preferences")
        news, offers = (page.get_by_role("checkbox", name=re.compile(f"^{title}")) for title in ("News", "Offers"))
        assert news.is_checked() and offers.is_checked()
        assert "receipts" in page.content().lower()
        news.uncheck()
        page.get_by_label("At most one email a week").check()
        page.get_by_role("button", name="Save my preferences").click()
        page.wait_for_selector("text=Your preferences were saved")
        assert not news.is_checked() and offers.is_checked()
        assert page.get_by_label("At most one email a week").is_checked()
        page.screenshot(path=str(artifacts / "preferences-saved.png"), full_page=True)
        page.get_by_role("button", name="Unsubscribe from all marketing emails").click()
        page.wait_for_selector("text=You are unsubscribed from all marketing emails")
        page.screenshot(path=str(artifacts / "preferences-unsubscribed.png"), full_page=True)
        browser.close()
    assert subscriptions(root, rcpt) == {"news": "unsubscribed", "offers": "unsubscribed"}
    assert query(root, "SELECT frequency FROM contacts WHERE email = ?", rcpt) == [("weekly",)]
    assert query(
        root,
        "SELECT p.reason FROM suppressions p JOIN contacts c ON c.email_hash = p.email_hash WHERE c.email = ?",
        rcpt,
    ) == [("unsubscribed",)]
    consent = "SELECT action FROM consent c JOIN contacts p ON p.id = c.contact_id WHERE p.email = ? AND source = ?"
    actions = [a for (a,) in query(root, consent + " ORDER BY c.id", rcpt, "preferences")]
    assert actions == ["unsubscribe", "unsubscribe", "unsubscribe"]
    assert (artifacts / "preferences-saved.png").stat().st_size > 1000


def test_preference_form_needs_its_csrf_field_and_our_origin(site: tuple[Path, Sink, str, int]) -> None:
    root, sink, _base, port = site
    rcpt = "person6@example.net"
    with connected(root) as db:
        contact_id = db.execute("SELECT id FROM contacts WHERE email = ?", (rcpt,)).fetchone()[0]
    with WebServer(root, port=port) as server_base, httpx.Client() as client:
        page = client.get(unsubscribe_url(next(d for r, d in sink.messages if r == rcpt)))
        preferences = page.text.split('href="')[1].split('"')[0].replace("&amp;", "&")
        assert preferences.startswith(f"{server_base}/p/")
        form = client.get(preferences).text
        csrf = form.split('name="csrf" value="')[1].split('"')[0]
        assert client.post(preferences, data={"list": "offers"}).status_code == 403
        assert client.post(preferences, data={"csrf": csrf + "x", "list": "offers"}).status_code == 403
        hostile = client.post(
            preferences, data={"csrf": csrf, "list": "offers"}, headers={"Origin": "https://evil.example"}
        )
        assert hostile.status_code == 403
        assert subscriptions(root, rcpt) == {"news": "subscribed", "offers": "subscribed"}
        saved = client.post(preferences, data={"csrf": csrf, "list": "offers"}, follow_redirects=False)
        assert saved.status_code == 303
    assert subscriptions(root, rcpt) == {"news": "unsubscribed", "offers": "subscribed"}
    assert contact_id


def test_double_opt_in_from_form_to_confirmed_subscription(tmp_path: Path) -> None:
    sink = Sink()
    web_port = free_port()
    base = f"http://127.0.0.1:{web_port}"
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port, public_url=base)
        import_contacts(root, 1)
        tick(root)  # applies the lists; the campaign goes to person0
        with WebServer(root, port=web_port), httpx.Client() as client:
            answer = client.post(
                f"{base}/subscribe",
                data={
                    "email": " New.Reader@Example.NET ",
                    "list": "offers",
                    "consent": "Yes, send me offers (form v3)",
                },
            )
            assert answer.status_code == 200 and "Thank you" in answer.text
            assert subscriptions(root, "new.reader@example.net") == {"offers": "pending"}
            tick(root, "2030-01-01T00:00:00Z")  # the request was queued at the real time; tick at a later one
            (data,) = [d for r, d in sink.messages if r == "new.reader@example.net"]
            message = parse(data)
            assert "confirm" in str(message["Subject"]).lower()
            html = body(message)
            assert "/c/" not in html and "/o/" not in html  # no tracking, no advertising
            confirm = re.findall(r'href="([^"]*/confirm/[^"]*)"', html)[0].replace("&amp;", "&")
            assert confirm.startswith(f"{base}/confirm/")
            page = client.get(confirm)  # a link scanner's visit
            assert "Confirm my subscription" in page.text
            assert subscriptions(root, "new.reader@example.net") == {"offers": "pending"}
            done = client.post(confirm)
            assert done.status_code == 200 and "You are subscribed" in done.text
    assert subscriptions(root, "new.reader@example.net") == {"offers": "subscribed"}
    export = json.loads(reconciler("contacts", "export", "new.reader@example.net", cwd=root).stdout)
    consent = export["consent"]
    assert [c["action"] for c in consent] == ["subscribe", "confirm"]
    assert consent[0]["text"] == "Yes, send me offers (form v3)" and consent[0]["ip"] == "127.0.0.1"


def test_subscribe_form_is_rate_limited_per_address(site: tuple[Path, Sink, str, int]) -> None:
    root, _sink, base, port = site
    with WebServer(root, port=port), httpx.Client() as client:
        answers = [
            client.post(f"{base}/subscribe", data={"email": "spam@example.org", "list": "offers"}) for _ in range(4)
        ]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert int(answers[-1].headers["retry-after"]) > 0
        assert client.post(f"{base}/subscribe", data={"email": "x@example.org", "list": "receipts"}).status_code == 422
        big = client.post(
            f"{base}/subscribe", content=b"x" * 2_000_000, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert big.status_code == 413
    confirmations = query(root, "SELECT count(*) FROM ledger WHERE source = 'double-opt-in'")[0][0]
    assert confirmations == 3


def test_opens_and_clicks_are_recorded_with_machines_apart(site: tuple[Path, Sink, str, int]) -> None:
    root, sink, _base, port = site
    _, data = sink.messages[0]
    html = body(parse(data))
    pixel = html.split('<img src="')[-1].split('"')[0]
    clicks = [part.split('"')[0].replace("&amp;", "&") for part in html.split('href="')[1:] if "/c/" in part[:60]]
    human = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120 Safari/537.36"
    apple = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    with WebServer(root, port=port), httpx.Client() as client:
        opened = client.get(pixel, headers={"user-agent": human})
        assert opened.status_code == 200 and opened.headers["content-type"] == "image/gif"
        assert opened.headers["cache-control"] == "no-store"
        client.get(pixel, headers={"user-agent": apple})
        bad = client.get(pixel.replace("/o/", "/o/z"), headers={"user-agent": human})
        assert bad.status_code == 200 and bad.content == opened.content
        followed = client.get(clicks[0], headers={"user-agent": human}, follow_redirects=False)
        assert followed.status_code == 302 and followed.headers["location"].startswith("https://shop.example.com/a")
        client.head(clicks[0], headers={"user-agent": human})
        elsewhere = clicks[0].split("?u=")[0] + "?u=https%3A%2F%2Fevil.example.org%2F"
        assert client.get(elsewhere, follow_redirects=False).status_code == 404
        wait_for(lambda: len(query(root, "SELECT id FROM engagement")) == 4, "the batched engagement writes")
    rows = query(root, "SELECT action, machine FROM engagement ORDER BY id")
    assert rows == [("opened", 0), ("opened", 1), ("clicked", 0), ("clicked", 1)]


def test_webhooks_suppress_count_and_ignore_replays(
    site: tuple[Path, Sink, str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _sink, base, port = site
    key, pem = sns_key_and_certificate()
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        assert url == CERT_URL
        return pem

    bounced = [{"emailAddress": "person1@example.net", "diagnosticCode": "smtp; 550 5.1.1"}]
    hard = sns_message(
        key,
        {
            "notificationType": "Bounce",
            "bounce": {"bounceType": "Permanent", "bounceSubType": "General", "bouncedRecipients": bounced},
        },
    )
    transient = [{"emailAddress": "person2@example.net"}]
    soft = sns_message(
        key,
        {"notificationType": "Bounce", "bounce": {"bounceType": "Transient", "bouncedRecipients": transient}},
        version="2",
    )
    complaint = sns_message(
        key,
        {
            "notificationType": "Complaint",
            "complaint": {"complainedRecipients": [{"emailAddress": "person3@example.net"}]},
        },
    )
    forged = dict(
        hard,
        Message=json.dumps(
            {
                "notificationType": "Complaint",
                "complaint": {"complainedRecipients": [{"emailAddress": "person9@example.net"}]},
            }
        ),
    )
    foreign = dict(hard, SigningCertURL="https://evil.example.org/SimpleNotificationService-1.pem")
    auth = {"authorization": "Basic " + base64.b64encode(f"postmark:{TOKEN}".encode()).decode()}
    with WebServer(root, port=port, fetch=fetch), httpx.Client() as client:
        ses = f"{base}/api/v1/webhooks/ses"
        assert client.post(ses, json=hard).json() == {"events": 1, "recorded": 1, "repeated": 0, "invalid": 0}
        redelivered = client.post(ses, json=hard).json()
        assert redelivered == {"events": 1, "recorded": 0, "repeated": 1, "invalid": 0}
        assert client.post(ses, json=soft).status_code == 200
        assert client.post(ses, json=complaint).status_code == 200
        assert client.post(ses, json=forged).status_code == 403
        assert client.post(ses, json=foreign).status_code == 403
        # SNS signs every AWS account's messages alike: only the operator's topics are taken
        strangers = sns_message(key, json.loads(str(complaint["Message"])), topic="arn:aws:sns:us-east-1:999:mine")
        refused = client.post(ses, json=strangers)
        assert refused.status_code == 403 and "is not one of RECONCILER_SNS_TOPICS" in refused.text
        monkeypatch.delenv("RECONCILER_SNS_TOPICS")
        unset = client.post(ses, json=complaint)
        assert unset.status_code == 403 and "refused until RECONCILER_SNS_TOPICS names your topics" in unset.text
        monkeypatch.setenv("RECONCILER_SNS_TOPICS", "arn:aws:sns:eu-west-1:123:ses")
        postmark = f"{base}/api/v1/webhooks/postmark"
        record = {"RecordType": "Bounce", "ID": 42, "Type": "HardBounce", "Email": "person4@example.net"}
        assert client.post(postmark, json=record).status_code == 401
        bad = {"authorization": "Basic " + base64.b64encode(b"postmark:wrong").decode()}
        assert client.post(postmark, json=record, headers=bad).status_code == 401
        assert client.post(postmark, json=record, headers=auth).json()["recorded"] == 1
        assert client.post(postmark, json=record, headers=auth).json()["repeated"] == 1
        spam = {"RecordType": "SpamComplaint", "ID": 43, "Email": "person5@example.net"}
        assert client.post(postmark, json=spam, headers=auth).json()["recorded"] == 1
        generic = f"{base}/api/v1/webhooks/generic"
        event = [
            {"id": "g-1", "type": "bounce", "bounce_type": "soft", "email": "person6@example.net"},
            {"id": "g-2", "type": "complaint", "email": "person7@example.net"},
        ]
        assert client.post(generic, json=event).status_code == 401
        bearer = {"authorization": f"Bearer {TOKEN}"}
        assert client.post(generic, json=event, headers=bearer).json()["recorded"] == 2
        assert client.post(generic, json=[{"id": "x"}], headers=bearer).status_code == 400
    assert fetched == [CERT_URL]  # the certificate is fetched once
    suppressed = pairs(
        root, "SELECT c.email, p.reason FROM suppressions p JOIN contacts c ON c.email_hash = p.email_hash"
    )
    assert suppressed == {
        "person1@example.net": "bounced",
        "person3@example.net": "complained",
        "person4@example.net": "bounced",
        "person5@example.net": "complained",
        "person7@example.net": "complained",
    }
    soft_counted = query(root, "SELECT count(*) FROM engagement WHERE action = 'bounced' AND detail LIKE 'soft:%'")
    assert soft_counted == [(2,)]


def test_the_generic_webhook_records_an_unsubscribe_once_and_says_where_it_came_from(
    site: tuple[Path, Sink, str, int],
) -> None:
    root, _sink, base, port = site
    bearer = {"authorization": f"Bearer {TOKEN}"}
    events = [
        {"id": "u-1", "type": "unsubscribe", "email": "Person1@example.net", "detail": "relay list-unsubscribe"},
        {"id": "u-2", "type": "unsubscribe", "email": "stranger@example.org", "detail": "old tool's opt-out"},
    ]
    with WebServer(root, port=port), httpx.Client() as client:
        generic = f"{base}/api/v1/webhooks/generic"
        assert client.post(generic, json=events, headers=bearer).json() == {
            "events": 2,
            "recorded": 2,
            "repeated": 0,
            "invalid": 0,
        }
        assert client.post(generic, json=events[:1], headers=bearer).json()["repeated"] == 1
        wrong = client.post(generic, json=[{"id": "u-3", "type": "unsub", "email": "a@example.org"}], headers=bearer)
        assert wrong.status_code == 400 and "bounce, complaint, unsubscribe" in wrong.json()["error"]
    assert subscriptions(root, "person1@example.net") == {"news": "unsubscribed", "offers": "unsubscribed"}
    shown = reconciler("contacts", "show", "person1@example.net", cwd=root)
    assert "suppressed: unsubscribed" in shown.stdout, shown.stdout
    assert "unsubscribe every list (webhook:generic)" in shown.stdout and "unsubscribed hello" in shown.stdout
    stranger = json.loads(reconciler("contacts", "export", "stranger@example.org", cwd=root).stdout)
    assert stranger["suppression"]["detail"] == "webhook:generic: old tool's opt-out"
    again = reconciler("contacts", "import", "contacts.csv", "--list", "news", "--preconfirmed", cwd=root)
    assert "not resubscribed: unsubscribed 1" in again.stdout, again.stdout
    (root / "new.csv").write_text("email\nnew@example.org\n")  # a contact who was never sent anything
    assert reconciler("contacts", "import", "new.csv", cwd=root).returncode == 0
    with WebServer(root, port=port), httpx.Client() as client:
        unsubscribed = [{"id": "u-4", "type": "unsubscribe", "email": "new@example.org"}]
        assert client.post(f"{base}/api/v1/webhooks/generic", json=unsubscribed, headers=bearer).status_code == 200
    new = reconciler("contacts", "show", "new@example.org", cwd=root)  # it failed with a TypeError
    assert new.returncode == 0 and "unsubscribed (no message)" in new.stdout, new.stdout + new.stderr


def test_api_contacts_events_health_and_metrics(site: tuple[Path, Sink, str, int]) -> None:
    root, _sink, base, port = site
    bearer = {"authorization": f"Bearer {TOKEN}"}
    with WebServer(root, port=port), httpx.Client() as client:
        contact = {
            "email": "API.User@Example.org",
            "first_name": "Api",
            "city": "Gdańsk",
            "lists": ["news"],
            "consent": "signed up at the till",
        }
        assert client.post(f"{base}/api/v1/contacts", json=contact).status_code == 401
        assert (
            client.post(f"{base}/api/v1/contacts", json=contact, headers={"authorization": "Bearer no"}).status_code
            == 401
        )
        created = client.post(f"{base}/api/v1/contacts", json=contact, headers=bearer)
        assert created.json() == {"created": 1, "updated": 0, "subscribed": 1, "pending": 0}
        wrong = client.post(f"{base}/api/v1/contacts", json=[{"email": "a@example.org", "citty": "x"}], headers=bearer)
        assert wrong.status_code == 422 and "citty" in wrong.text
        events = [
            {
                "email": "api.user@example.org",
                "type": "purchase",
                "properties": {"value": 30},
                "id": "o-1",
                "occurred_at": "2026-11-24T09:00:00Z",
            },
            {"email": "api.user@example.org", "type": "purchase", "id": "o-2"},
        ]
        assert client.post(f"{base}/api/v1/events", json=events, headers=bearer).json() == {"added": 2, "repeated": 0}
        assert client.post(f"{base}/api/v1/events", json=events, headers=bearer).json() == {"added": 0, "repeated": 2}
        health = client.get(f"{base}/healthz").json()
        assert health["status"] == "ok" and health["revision"]["applied"]
        assert client.get(f"{base}/metrics").status_code == 401
        metrics = client.get(f"{base}/metrics", headers=bearer).text
        assert 'reconciler_messages{state="sent"} 20.0' in metrics
        assert "reconciler_http_requests_total" in metrics and "/api/v1/events" in metrics
    assert subscriptions(root, "api.user@example.org") == {"news": "subscribed"}
    (fields,) = query(root, "SELECT fields FROM contacts WHERE email = 'api.user@example.org'")[0]
    assert json.loads(str(fields)) == {"city": "Gdańsk"}
    assert ledger(root)["sent"] == 20 and NOW


def test_view_online_shows_the_message_as_its_recipient_got_it(site: tuple[Path, Sink, str, int]) -> None:
    from reconciler.tokens import Signer

    root, _sink, base, port = site
    (key,) = query(root, "SELECT value FROM meta WHERE key = 'signing_key'")[0]
    (row_id,) = query(
        root, "SELECT l.id FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE c.email = 'person7@example.net'"
    )[0]
    url = f"{base}/v/{Signer(str(key).encode()).sign('view', int(str(row_id)))}"
    with WebServer(root, port=port), httpx.Client() as client:
        page = client.get(url)
        assert page.status_code == 200 and "Hello Pat7" in page.text and "Łódź" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert client.get(url[:-2]).status_code == 404
