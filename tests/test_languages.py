"""The pages a subscriber sees and the double opt-in email speak the subscriber's language: the contact's locale,
else the list's language, else the browser's; and a workspace can replace each with its own templates."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from babel.dates import format_date

from conftest import reconciler
from sending import body, parse, tick, workspace
from smtp_sink import Sink, SinkServer, free_port
from state_helpers import connected
from test_web import subscriptions, unsubscribe_url
from web_server import WebServer

TOKEN = "test-api-token"
LATER = "2030-01-01T00:00:00Z"
"""Requests are queued at the real time: ticks that send them run later."""


@pytest.fixture(autouse=True)
def api_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_API_TOKEN", TOKEN)


def speak(root: Path, **languages: str) -> None:
    """Give lists a language in spec/lists.yaml."""
    lists = root / "spec/lists.yaml"
    text = lists.read_text()
    for name, language in languages.items():
        text = text.replace(f"name: {name}\n", f"name: {name}\nlanguage: {language}\n")
    lists.write_text(text)


def import_people(root: Path, locales: dict[str, str]) -> None:
    rows = ["email,first_name,locale"] + [f"{email},Pat,{locale}" for email, locale in locales.items()]
    (root / "people.csv").write_text("\n".join(rows) + "\n")
    result = reconciler("contacts", "import", "people.csv", "--list", "news", "--preconfirmed", cwd=root)
    assert result.returncode == 0, result.stderr


def write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Sink, str, int]]:
    """News speaks Polish, Offers French; `hello` went to an Austrian, someone without a locale and a Brazilian."""
    sink = Sink()
    web_port = free_port()
    base = f"http://127.0.0.1:{web_port}"
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port, public_url=base)
        speak(root, news="pl", offers="fr")
        people = {"anna@example.at": "de-AT", "jan@example.pl": "", "joao@example.com.br": "pt-BR"}
        import_people(root, people)
        tick(root)
        yield root, sink, base, web_port


def received(sink: Sink, address: str) -> bytes:
    return next(data for rcpt, data in sink.messages if rcpt == address)


def test_pages_speak_the_contacts_locale_then_the_lists_language_then_the_browsers(
    site: tuple[Path, Sink, str, int],
) -> None:
    root, sink, base, port = site
    with WebServer(root, port=port), httpx.Client() as client:
        anna = client.get(unsubscribe_url(received(sink, "anna@example.at")))
        assert '<html lang="de-AT">' in anna.text and anna.headers["content-language"] == "de-AT"
        assert "<h1>Abmelden?</h1>" in anna.text and "Wählen Sie, was Sie erhalten" in anna.text
        assert "Datenschutzerklärung" not in anna.text  # the test shop has no privacy policy URL

        german = {"accept-language": "de-DE,de;q=0.9"}  # a browser's wish comes after the list's language
        jan = client.get(unsubscribe_url(received(sink, "jan@example.pl")), headers=german)
        assert '<html lang="pl">' in jan.text and "<h1>Wypisać się?</h1>" in jan.text
        joao = client.get(unsubscribe_url(received(sink, "joao@example.com.br")))  # no Portuguese catalog
        assert '<html lang="pl">' in joao.text

        done = client.post(unsubscribe_url(received(sink, "anna@example.at")), data={"List-Unsubscribe": "One-Click"})
        assert "<h1>Sie sind abgemeldet</h1>" in done.text and "anna@example.at erhält ab jetzt nicht mehr" in done.text
        preferences = anna.text.split('href="')[1].split('"')[0].replace("&amp;", "&")
        page = client.get(preferences)
        assert "<h1>Ihre E-Mail-Einstellungen</h1>" in page.text and "Höchstens eine E-Mail pro Woche" in page.text

        french = {"accept-language": "fr-CH, fr;q=0.9, en;q=0.8"}
        invalid = client.get(f"{base}/u/not-a-token", headers=french)
        assert invalid.status_code == 404 and '<html lang="fr-CH">' in invalid.text
        assert "Ce lien n'est pas valide" in invalid.text.replace("&#39;", "'")
        english = client.get(f"{base}/p/not-a-token")
        assert (
            english.status_code == 404
            and '<html lang="en">' in english.text
            and "This link is not valid" in english.text
        )
    assert subscriptions(root, "anna@example.at") == {"news": "unsubscribed"}


def test_the_preference_page_writes_dates_as_the_subscriber_does(site: tuple[Path, Sink, str, int]) -> None:
    root, sink, _base, port = site
    with connected(root) as db:
        (since,) = db.execute(
            "SELECT s.updated_at FROM subscriptions s JOIN contacts c ON c.id = s.contact_id WHERE c.email = ?",
            ("joao@example.com.br",),
        ).fetchone()
    polish = format_date(datetime.fromisoformat(since), "long", locale="pl")  # e.g. 3 marca 2031
    with WebServer(root, port=port), httpx.Client() as client:
        page = client.get(unsubscribe_url(received(sink, "joao@example.com.br")))
        preferences = client.get(page.text.split('href="')[1].split('"')[0].replace("&amp;", "&"))
    assert f"Subskrypcja od {polish}" in preferences.text


def test_the_confirmation_email_speaks_the_contacts_locale_or_the_lists_language(
    site: tuple[Path, Sink, str, int],
) -> None:
    root, sink, base, port = site
    with WebServer(root, port=port), httpx.Client() as client:
        form = client.post(f"{base}/subscribe", data={"email": "claire@example.fr", "list": "offers"})
        assert '<html lang="fr">' in form.text and "<h1>Merci</h1>" in form.text
        api = client.post(
            f"{base}/api/v1/contacts",
            json={"email": "lena@example.de", "locale": "de", "lists": ["offers"], "consent": "till"},
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        assert api.status_code == 200, api.text
        tick(root, LATER)
        claire, lena = (parse(received(sink, address)) for address in ("claire@example.fr", "lena@example.de"))
        assert str(claire["Subject"]) == "Merci de confirmer votre inscription à Offers"
        assert str(lena["Subject"]) == "Bitte bestätigen Sie Ihre Anmeldung zu Offers"
        html = body(lena)
        assert '<html lang="de"' in html and "Jemand, vermutlich Sie, möchte" in html
        assert "Anmeldung bestätigen" in body(lena, "plain")
        confirm = re.findall(r'href="([^"]*/confirm/[^"]*)"', body(claire))[0].replace("&amp;", "&")
        page = client.get(confirm)
        assert "Inscrire claire@example.fr à Offers ?" in page.text
        done = client.post(confirm)
        assert "<h1>Votre inscription est confirmée</h1>" in done.text
    assert subscriptions(root, "claire@example.fr") == {"offers": "subscribed"}


PAGE = """\
{% extends "base.html" %}
{% block content %}
<h1 class="own">{{ _("Your email preferences") }}</h1>
<p>Kettle &amp; Crow: {{ email }}, {{ format_number(1234.5) }}</p>
<form method="post"><input type="hidden" name="csrf" value="{{ csrf }}">
{% for item in lists %}
<label><input type="checkbox" name="list" value="{{ item.name }}"> {{ item.title }}</label>
{% endfor %}
<button type="submit" name="action" value="save">Save</button>
<button type="submit" name="action" value="unsubscribe_all">Unsubscribe from everything</button></form>
{% endblock %}
"""
CONFIRMATION = """\
<mjml lang="{{ language }}">
  <mj-head><mj-title>{{ _("Please confirm your subscription") }}: {{ list.title }}</mj-title></mj-head>
  <mj-body><mj-section><mj-column>
    <mj-text>Kettle &amp; Crow: one click and {{ list.title }} is yours.</mj-text>
    <mj-button href="{{ confirm_url }}">Yes, please</mj-button>
  </mj-column></mj-section></mj-body>
</mjml>
"""


def test_a_workspace_replaces_pages_and_the_confirmation_email(site: tuple[Path, Sink, str, int]) -> None:
    root, sink, base, port = site
    write(root, {"templates/pages/preferences.html": PAGE, "templates/pages/confirmation.mjml": CONFIRMATION})
    assert reconciler("validate", cwd=root).returncode == 0
    tick(root)
    with WebServer(root, port=port), httpx.Client() as client:
        anna = client.get(unsubscribe_url(received(sink, "anna@example.at")))
        assert "<h1>Abmelden?</h1>" in anna.text  # the pages it does not replace stay ours
        page = client.get(anna.text.split('href="')[1].split('"')[0].replace("&amp;", "&"))
        assert '<h1 class="own">Ihre E-Mail-Einstellungen</h1>' in page.text and "Kettle &amp; Crow" in page.text
        assert "1.234,5" in page.text and '<html lang="de-AT">' in page.text  # the layout is still ours
        client.post(f"{base}/subscribe", data={"email": "claire@example.fr", "list": "offers"})
        tick(root, LATER)
    message = parse(received(sink, "claire@example.fr"))
    assert str(message["Subject"]) == "Merci de confirmer votre inscription: Offers"  # its title, in French
    html = body(message)
    assert "one click and Offers is yours" in html and "/confirm/" in html and '<html lang="fr"' in html


def test_validate_names_the_file_and_line_of_a_page_that_cannot_work(site: tuple[Path, Sink, str, int]) -> None:
    root = site[0]
    write(
        root,
        {
            "templates/pages/preferences.html": PAGE.replace("{{ email }}", "{{ emial }}"),
            "templates/pages/unsubscribe.html": (
                '{% extends "base.html" %}\n{% block content %}{{ "".__class__.__mro__ }}{% endblock %}\n'
            ),
            "templates/pages/prefrences.html": "<p>typo</p>",
            "templates/pages/confirmation.mjml": CONFIRMATION.replace("{{ confirm_url }}", "https://shop.example"),
        },
    )
    speak(root, receipts="German")
    result = reconciler("validate", cwd=root)
    assert result.returncode == 1
    out = result.stdout
    assert (
        "templates/pages/preferences.html:4:1: Template pages/preferences.html: unknown variable or field 'emial'"
        in out
    )
    assert "templates/pages/unsubscribe.html:2:1: Template pages/unsubscribe.html: not allowed in a template" in out
    assert (
        "'prefrences.html' is not a page reconciler shows: it would never be used (did you mean 'preferences.html'?)"
        in out
    )
    assert (
        "templates/pages/confirmation.mjml:1:1: Template pages/confirmation: the confirmation email has no link" in out
    )
    assert "List receipts: language: 'German' is not a language babel knows (did you mean 'de'?" in out


def test_a_language_without_a_catalog_is_a_warning(site: tuple[Path, Sink, str, int]) -> None:
    root = site[0]
    speak(root, receipts="pt-BR")
    result = reconciler("validate", cwd=root)
    assert result.returncode == 0, result.stdout
    assert "List receipts: language: the subscriber pages and the confirmation email have no translation into" in (
        result.stdout + result.stderr
    )


def test_the_german_preference_page_in_chromium(site: tuple[Path, Sink, str, int]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    root, sink, _base, port = site
    artifacts = Path(__file__).resolve().parent.parent / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    url = unsubscribe_url(received(sink, "anna@example.at"))
    with WebServer(root, port=port), sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 390, "height": 844}, locale="en-US")  # the contact's locale wins
        page.goto(url)
        page.get_by_role("link", name="Wählen Sie, was Sie erhalten").click()
        page.wait_for_selector("text=Ihre E-Mail-Einstellungen")
        assert page.evaluate("document.documentElement.lang") == "de-AT"
        news = page.get_by_role("checkbox", name=re.compile("^News and offers"))
        assert news.is_checked() and page.get_by_text("Abonniert seit dem").count() == 1
        page.get_by_label("Höchstens eine E-Mail pro Monat").check()
        page.get_by_role("button", name="Einstellungen speichern").click()
        page.wait_for_selector("text=Ihre Einstellungen wurden gespeichert.")
        page.screenshot(path=str(artifacts / "preferences-de.png"), full_page=True)
        browser.close()
    assert urlsplit(url).path.startswith("/u/")
    assert (artifacts / "preferences-de.png").stat().st_size > 1000
    with connected(root) as db:
        assert db.execute("SELECT frequency FROM contacts WHERE email = 'anna@example.at'").fetchone() == ("monthly",)


def test_a_page_of_your_own_must_keep_the_way_to_unsubscribe(example: Path) -> None:
    """An unsubscribe page saying "call us to unsubscribe" passed validate and was served."""
    write(example, {"templates/pages/unsubscribe.html": "<h1>Unsubscribe</h1><p>Call us to unsubscribe.</p>\n"})
    done = reconciler("validate", cwd=example)
    assert done.returncode == 1, done.stdout
    assert (
        "templates/pages/unsubscribe.html:1:1: Template pages/unsubscribe.html: unsubscribe.html lacks a form that "
        'posts (method="post"): a subscriber could not unsubscribe with it' in done.stdout
    ), done.stdout
    assert 'lacks the field List-Unsubscribe="One-Click"' in done.stdout


def test_the_language_a_subscriber_read_the_form_in_is_the_one_of_their_confirmation(
    site: tuple[Path, Sink, str, int],
) -> None:
    """The thanks came in German (the browser's), the confirmation email in English: the page's language was lost."""
    root, sink, base, port = site
    lists = root / "spec/lists.yaml"
    lists.write_text(lists.read_text().replace("language: fr\n", ""))  # offers speaks no language of its own
    tick(root)
    with WebServer(root, port=port), httpx.Client() as client:
        form = client.post(
            f"{base}/subscribe", data={"email": "max@example.de", "list": "offers"}, headers={"accept-language": "de"}
        )
        assert '<html lang="de">' in form.text
        tick(root, LATER)
    assert str(parse(received(sink, "max@example.de"))["Subject"]) == "Bitte bestätigen Sie Ihre Anmeldung zu Offers"
