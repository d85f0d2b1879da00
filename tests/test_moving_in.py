"""Moving in from another tool: files saved by Excel in other countries, the exports of Mailchimp, listmonk and Brevo
(written here from their documented columns), `--map`, and who must not be mailed: a status column, `contacts
suppress` and `contacts unsubscribe`. Each is run as a user runs it, against a real state database."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Literal

from conftest import reconciler
from state_helpers import connected

MAILCHIMP = [
    "Email Address",
    "First Name",
    "Last Name",
    "Address",
    "Phone Number",
    "Birthday",
    "Favourite Roast",
    "MEMBER_RATING",
    "OPTIN_TIME",
    "OPTIN_IP",
    "CONFIRM_TIME",
    "CONFIRM_IP",
    "LATITUDE",
    "LONGITUDE",
    "GMTOFF",
    "DSTOFF",
    "TIMEZONE",
    "CC",
    "REGION",
    "LAST_CHANGED",
    "LEID",
    "EUID",
    "NOTES",
    "TAGS",
]
UNSUBSCRIBED = ["UNSUB_TIME", "UNSUB_CAMPAIGN_TITLE", "UNSUB_CAMPAIGN_ID", "UNSUB_REASON", "UNSUB_REASON_OTHER"]
CLEANED = ["CLEAN_TIME", "CLEAN_CAMPAIGN_TITLE", "CLEAN_CAMPAIGN_ID"]


def _mailchimp_row(email: str, first: str, last: str, roast: str, tags: str, extra: list[str]) -> list[str]:
    return [
        email,
        first,
        last,
        "",
        "",
        "12/10",  # Mailchimp's birthday is MM/DD: not the workspace's date field, so not imported
        roast,
        "2",
        "2023-01-15 10:22:33",
        "",
        "2023-01-15 10:23:01",
        "203.0.113.9",
        "51.5072",
        "-0.1276",
        "0",
        "1",
        "Europe/London",
        "GB",
        "ENG",
        "2024-02-01 08:00:00",
        "123456789",
        "a1b2c3d4e5",
        "",
        tags,
        *extra,
    ]


def _csv(rows: list[list[str]], *, quoting: Literal[0, 1, 2, 3] = csv.QUOTE_ALL) -> str:
    out = io.StringIO()
    csv.writer(out, quoting=quoting, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


def _subscriptions(root: Path) -> dict[tuple[str, str], str]:
    with connected(root) as db:
        rows = db.execute(
            "SELECT c.email, s.list, s.status FROM subscriptions s JOIN contacts c ON c.id = s.contact_id"
        ).fetchall()
    return {(email, name): status for email, name, status in rows}


def _export(root: Path, email: str) -> dict[str, Any]:
    result = reconciler("contacts", "export", email, cwd=root)
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def test_a_semicolon_file_from_excel_imports_and_says_how_it_was_read(example: Path) -> None:
    (example / "kunden.csv").write_text(
        "email;first_name;orders_count\nann@example.com;Änne;3\nbob@example.com;Bob;1\n"
    )
    (example / "tabs.csv").write_text("email\tfirst_name\ncy@example.com\tCy\n")
    result = reconciler("contacts", "import", "kunden.csv", "--list", "offers", "--consent", "v1", cwd=example)
    assert result.returncode == 0, result.stderr
    assert "kunden.csv: semicolon-separated" in result.stdout
    assert "2 new" in result.stdout and "2 subscriptions added" in result.stdout
    tabs = reconciler("contacts", "import", "tabs.csv", cwd=example)
    assert tabs.returncode == 0 and "tabs.csv: tab-separated" in tabs.stdout, tabs.stderr
    with connected(example) as db:
        rows = db.execute("SELECT email, first_name, fields FROM contacts ORDER BY email").fetchall()
        assert [(email, name, json.loads(fields).get("orders_count")) for email, name, fields in rows] == [
            ("ann@example.com", "Änne", 3),
            ("bob@example.com", "Bob", 1),
            ("cy@example.com", "Cy", None),
        ]


def test_an_unknown_column_of_a_semicolon_file_is_named_alone_with_the_map_option(example: Path) -> None:
    (example / "kunden.csv").write_text("email;first_name;genre\nann@example.com;Ann;jazz\n")
    result = reconciler("contacts", "import", "kunden.csv", cwd=example)
    assert result.returncode == 1
    assert "unknown column 'genre'" in result.stderr and "'email;" not in result.stderr, result.stderr
    assert "--map 'genre=FIELD'" in result.stderr and "--map 'genre='" in result.stderr
    skipped = reconciler("contacts", "import", "kunden.csv", "--map", "genre=", cwd=example)
    assert skipped.returncode == 0 and "1 new" in skipped.stdout, skipped.stderr


def test_map_renames_columns_and_refuses_what_names_nothing(example: Path) -> None:
    (example / "people.csv").write_text("E-Mail;Vorname;Bestellungen\nann@example.com;Ann;4\n")
    args = ["--map", "E-Mail=email", "--map", "Vorname=first_name", "--map", "Bestellungen=orders_count"]
    result = reconciler("contacts", "import", "people.csv", *args, cwd=example)
    assert result.returncode == 0, result.stderr
    with connected(example) as db:
        rows = db.execute("SELECT first_name, fields FROM contacts").fetchall()
        assert [(name, json.loads(fields).get("orders_count")) for name, fields in rows] == [("Ann", 4)]
    typo = reconciler("contacts", "import", "people.csv", *args[:4], "--map", "Bestellungen=order_count", cwd=example)
    assert typo.returncode == 1 and "unknown field 'order_count' (did you mean 'orders_count'?)" in typo.stderr
    missing = reconciler("contacts", "import", "people.csv", *args, "--map", "Nachname=last_name", cwd=example)
    assert missing.returncode == 1 and "--map names 'nachname', which is no column" in missing.stderr
    (example / "two.csv").write_text("E-Mail;email\nann@example.com;ann@example.org\n")
    both = reconciler("contacts", "import", "two.csv", "--map", "E-Mail=email", cwd=example)
    assert both.returncode == 1 and "columns 'E-Mail' and 'email' both fill 'email'" in both.stderr, both.stderr
    (example / "people.jsonl").write_text('{"Mail": "bob@example.com", "Vorname": "Bob"}\n')
    jsonl = reconciler(
        "contacts", "import", "people.jsonl", "--map", "Mail=email", "--map", "Vorname=first_name", cwd=example
    )
    assert jsonl.returncode == 0 and "1 new" in jsonl.stdout, jsonl.stderr


def test_a_mailchimp_audience_export_and_its_unsubscribed_and_cleaned_files(example: Path) -> None:
    subscribed = [
        MAILCHIMP,
        _mailchimp_row("ada@example.com", "Ada", "Lovelace", "dark", '"VIP","Espresso lovers"', []),
        _mailchimp_row("bob@example.com", "Bob", "Martin", "light", "", []),
        _mailchimp_row("cy@example.com", "Cy", "Young", "", "", []),
    ]
    unsubscribed = [
        MAILCHIMP + UNSUBSCRIBED,
        _mailchimp_row(
            "bob@example.com", "Bob", "Martin", "light", "", ["2024-03-01 09:00:00", "Spring", "abc", "", ""]
        ),
        _mailchimp_row("dee@example.com", "Dee", "", "", "", ["2022-03-01 09:00:00", "Old", "abd", "NORMAL", ""]),
    ]
    cleaned = [
        MAILCHIMP + CLEANED,
        _mailchimp_row("cy@example.com", "Cy", "Young", "", "", ["2024-03-02 09:00:00", "Spring", "abc"]),
    ]
    (example / "subscribed_members_export_1a2b.csv").write_text(_csv(subscribed))
    (example / "unsubscribed_members_export_1a2b.csv").write_text(_csv(unsubscribed))
    (example / "cleaned_members_export_1a2b.csv").write_text(_csv(cleaned))
    offers = ["--list", "offers", "--consent", "Mailchimp signup form"]

    first = reconciler("contacts", "import", "subscribed_members_export_1a2b.csv", *offers, cwd=example)
    assert first.returncode == 0, first.stderr
    assert "recognised a Mailchimp audience export" in first.stdout
    assert "Email Address → email" in first.stdout and "not imported: Address, Phone Number, Birthday" in first.stdout
    assert "3 new" in first.stdout and "3 subscriptions added" in first.stdout
    ada = _export(example, "ada@example.com")["contact"]
    assert isinstance(ada, dict)
    assert (ada["first_name"], ada["last_name"], ada["country"], ada["timezone"]) == (
        "Ada",
        "Lovelace",
        "GB",
        "Europe/London",
    )
    assert ada["tags"] == ["Espresso lovers", "VIP"] and ada["fields"] == {"favourite_roast": "dark"}

    left = reconciler("contacts", "import", "unsubscribed_members_export_1a2b.csv", *offers, cwd=example)
    assert left.returncode == 0, left.stderr
    assert "of unsubscribed members (every row: unsubscribed)" in left.stdout
    assert "by status: unsubscribed 2" in left.stdout
    bounced = reconciler("contacts", "import", "cleaned_members_export_1a2b.csv", *offers, cwd=example)
    assert bounced.returncode == 0 and "by status: bounced 1" in bounced.stdout, bounced.stderr

    assert _subscriptions(example) == {
        ("ada@example.com", "offers"): "subscribed",
        ("bob@example.com", "offers"): "unsubscribed",
        ("cy@example.com", "offers"): "subscribed",  # stands, as after any bounce: the suppression keeps them out
        ("dee@example.com", "offers"): "unsubscribed",
    }
    bob = _export(example, "bob@example.com")
    assert [(c["action"], c["source"]) for c in bob["consent"]] == [
        ("subscribe", "import:subscribed_members_export_1a2b.csv"),
        ("unsubscribe", "import:unsubscribed_members_export_1a2b.csv"),
    ]
    # what Mailchimp knew of their consent outlives Mailchimp: in the consent records, as the proof it is
    proof = "opted in 2023-01-15 10:22:33; confirmed 2023-01-15 10:23:01 from 203.0.113.9"
    assert [c["text"] for c in bob["consent"]] == [
        f"Mailchimp signup form ({proof})",
        f"{proof}; unsubscribed 2024-03-01 09:00:00",
    ]
    dee = _export(example, "dee@example.com")["consent"]
    assert dee[-1]["text"].endswith("unsubscribed 2022-03-01 09:00:00; reason NORMAL"), dee
    cy = _export(example, "cy@example.com")["suppression"]
    assert cy == {"reason": "bounced", "at": cy["at"], "detail": "bounced (import:cleaned_members_export_1a2b.csv)"}

    again = reconciler("contacts", "import", "subscribed_members_export_1a2b.csv", *offers, cwd=example)
    assert "not resubscribed: bounced 1, unsubscribed 1" in again.stdout, again.stdout
    plan = reconciler("plan", "--now", "2030-11-26T12:00:00Z", cwd=example)
    assert "→ 1 recipient; excluded: unsubscribed 2, bounced 1" in plan.stdout, plan.stdout  # ada alone


def test_a_listmonk_export_splits_names_reads_attributes_and_honours_its_status(example: Path) -> None:
    rows = [
        ["uuid", "email", "name", "attributes", "status", "created_at", "updated_at"],
        [
            "0c554f0c-5a7e-4f1c-9a0e-3f0d4b3f8a11",
            "ada@example.com",
            "Ada King Lovelace",
            '{"orders_count": 3, "city": "London"}',
            "enabled",
            "2024-01-15 10:23:45.123456 +0000 UTC",
            "2024-02-01 08:00:00.5 +0000 UTC",
        ],
        ["8b2f...-1", "bob@example.com", "Bob", "{}", "blocklisted", "2024-01-15 10:23:45 +0000 UTC", ""],
        ["8b2f...-2", "cy@example.com", "Cy Young", "{}", "disabled", "2024-01-15 10:23:45 +0000 UTC", ""],
        ["8b2f...-3", "dee@example.com", "Dee", '{"orders_count": "many"}', "gone", "", ""],
        ["8b2f...-4", "eve@example.com", "Eve", '{"city": "x\\ud800y"}', "enabled", "", ""],  # half a UTF-16 pair
    ]
    (example / "subscribers.csv").write_text(_csv(rows, quoting=csv.QUOTE_MINIMAL))
    result = reconciler("contacts", "import", "subscribers.csv", "--list", "offers", "--consent", "v1", cwd=example)
    assert result.returncode == 1
    assert "recognised a listmonk subscribers export" in result.stdout
    assert "name → first_name + last_name" in result.stdout and "not imported: uuid, created_at" in result.stdout
    bad = [line for line in result.stderr.splitlines() if line.startswith("subscribers.csv:5:")]
    assert len(bad) == 2 and "orders_count" in bad[0] and "'gone' is not a status" in bad[1], result.stderr
    (eve,) = [line for line in result.stderr.splitlines() if line.startswith("subscribers.csv:6:")]
    assert "attributes" in eve and "\\ud800" in eve, result.stderr
    assert "by status: blocklisted 1, held 1" in result.stdout
    ada = _export(example, "ada@example.com")["contact"]
    assert isinstance(ada, dict)
    assert (ada["first_name"], ada["last_name"], ada["fields"]) == ("Ada", "King Lovelace", {"orders_count": 3})
    assert _subscriptions(example) == {("ada@example.com", "offers"): "subscribed"}
    bob = _export(example, "bob@example.com")
    assert bob["suppression"]["reason"] == "unsubscribed"
    assert [(c["list"], c["action"], c["source"]) for c in bob["consent"]] == [
        (None, "unsubscribe", "import:subscribers.csv")
    ]


def test_a_brevo_export_semicolons_capitals_and_its_blacklist(example: Path) -> None:
    text = (
        "EMAIL;FIRSTNAME;LASTNAME;SMS;ADDED_TIME;MODIFIED_TIME;EMAIL_BLACKLISTED\n"
        "ada@example.com;Ada;Lovelace;+33612345678;2023-05-12 10:34:12;2024-01-02 08:00:00;No\n"
        "bob@example.com;Bob;Martin;;2023-05-12 10:34:12;2024-01-02 08:00:00;Yes\n"
    )
    (example / "contacts_export.csv").write_text(text, encoding="utf-8-sig")  # Brevo writes a byte order mark
    result = reconciler("contacts", "import", "contacts_export.csv", "--list", "offers", "--consent", "v1", cwd=example)
    assert result.returncode == 0, result.stderr
    assert "semicolon-separated" in result.stdout and "recognised a Brevo contacts export" in result.stdout
    assert "FIRSTNAME → first_name" in result.stdout and "not imported: SMS, ADDED_TIME, MODIFIED_TIME" in result.stdout
    assert _subscriptions(example) == {("ada@example.com", "offers"): "subscribed"}
    assert _export(example, "bob@example.com")["suppression"]["reason"] == "unsubscribed"
    unsure = "EMAIL;FIRSTNAME;SMS;EMAIL_BLACKLISTED\ncy@example.com;Cy;;maybe\n"  # failed open: subscribed
    (example / "unsure.csv").write_text(unsure, encoding="utf-8")
    refused = reconciler("contacts", "import", "unsure.csv", "--list", "offers", "--consent", "v1", cwd=example)
    assert refused.returncode == 1 and "EMAIL_BLACKLISTED: 'maybe' is neither yes nor no" in refused.stderr
    assert ("cy@example.com", "offers") not in _subscriptions(example)


def test_a_status_column_brings_over_who_must_not_be_mailed(example: Path) -> None:
    (example / "status.csv").write_text(
        "email,status\n"
        "ann@example.com,subscribed\n"
        "bob@example.com,Unsubscribed\n"
        "cy@example.com,cleaned\n"
        "di@example.com,complained\n"
        "ed@example.com,pending\n"
    )
    result = reconciler("contacts", "import", "status.csv", "--list", "offers", "--consent", "v1", cwd=example)
    assert result.returncode == 0, result.stderr
    assert "by status: bounced 1, complained 1, held 1, unsubscribed 1" in result.stdout
    assert _subscriptions(example) == {
        ("ann@example.com", "offers"): "subscribed",
        ("bob@example.com", "offers"): "unsubscribed",
    }
    with connected(example) as db:
        reasons = db.execute(
            "SELECT c.email, p.reason, p.detail FROM suppressions p JOIN contacts c USING (email_hash) ORDER BY 1"
        ).fetchall()
    assert reasons == [
        ("cy@example.com", "bounced", "bounced (import:status.csv)"),
        ("di@example.com", "complained", "complained (import:status.csv)"),
    ]
    (example / "left.csv").write_text("email,status\nfay@example.com,unsubscribed\n")
    everything = reconciler("contacts", "import", "left.csv", cwd=example)  # no --list: from everything
    assert everything.returncode == 0, everything.stderr
    assert _export(example, "fay@example.com")["suppression"]["reason"] == "unsubscribed"


def test_contacts_suppress_takes_addresses_or_a_file_and_keeps_them_out_of_imports(example: Path) -> None:
    (example / "bounces.txt").write_text("# from the old relay\nann@example.com\n\nnot-an-address\nBob@Example.com\n")
    result = reconciler("contacts", "suppress", "--file", "bounces.txt", "--reason", "bounced", cwd=example)
    assert result.returncode == 1
    assert "bounces.txt:4: 'not-an-address' is not a valid email address" in result.stderr
    assert "2 addresses: 2 suppressed (bounced), 1 not an address" in result.stdout
    (example / "cleaned.csv").write_text(
        _csv([MAILCHIMP + CLEANED, _mailchimp_row("cy@example.com", "Cy", "", "", "", ["", "", ""])])
    )
    from_export = reconciler("contacts", "suppress", "--file", "cleaned.csv", "ann@example.com", cwd=example)
    assert from_export.returncode == 0, from_export.stderr
    assert "2 addresses: 1 suppressed (unsubscribed), already suppressed: bounced 1" in from_export.stdout

    (example / "people.csv").write_text("email\nann@example.com\nbob@example.com\ncy@example.com\ndi@example.com\n")
    imported = reconciler("contacts", "import", "people.csv", "--list", "offers", "--consent", "v1", cwd=example)
    assert "1 subscription added, not resubscribed: bounced 2, unsubscribed 1" in imported.stdout, imported.stdout
    cy = _export(example, "cy@example.com")["suppression"]
    assert cy["detail"] == "contacts suppress --file cleaned.csv"
    usage = reconciler("contacts", "suppress", cwd=example)
    assert usage.returncode == 2 and "--file" in usage.stderr
    for name, text in (
        ("a.csv", "Email Address,First Name\ned@example.com,Ed\n"),
        ("b.csv", "E-Mail;Name\nflo@example.com;Flo\n"),
    ):
        (example / name).write_text(text)  # as other tools and spreadsheets head the column
        found = reconciler("contacts", "suppress", "--file", name, cwd=example)
        assert found.returncode == 0 and "1 address: 1 suppressed" in found.stdout, found.stdout + found.stderr


def test_contacts_unsubscribe_from_one_list_or_from_everything(example: Path) -> None:
    (example / "people.csv").write_text("email\nann@example.com\nbob@example.com\n")
    args = ["--list", "offers", "--list", "customers", "--consent", "v1"]
    assert reconciler("contacts", "import", "people.csv", *args, cwd=example).returncode == 0

    one = reconciler("contacts", "unsubscribe", "Ann@example.com", "--list", "offers", cwd=example)
    assert one.returncode == 0 and one.stdout == "Unsubscribed ann@example.com from offers.\n", one.stderr
    twice = reconciler("contacts", "unsubscribe", "ann@example.com", "--list", "offers", cwd=example)
    assert "was not subscribed to offers: nothing to change there" in twice.stdout
    everything = reconciler("contacts", "unsubscribe", "bob@example.com", cwd=example)
    assert everything.returncode == 0, everything.stderr
    assert "from every marketing list (customers, newsletter, offers)" in everything.stdout
    stranger = reconciler("contacts", "unsubscribe", "zed@example.com", cwd=example)
    assert stranger.returncode == 0, stranger.stderr
    typo = reconciler("contacts", "unsubscribe", "ann@example.com", "--list", "offer", cwd=example)
    assert typo.returncode == 2 and "unknown list (did you mean 'offers'?)" in typo.stderr

    assert _subscriptions(example) == {
        ("ann@example.com", "offers"): "unsubscribed",
        ("ann@example.com", "customers"): "subscribed",
        ("bob@example.com", "offers"): "unsubscribed",
        ("bob@example.com", "customers"): "unsubscribed",
    }
    ann = _export(example, "ann@example.com")
    assert ann["consent"][-1]["source"] == "contacts unsubscribe"
    assert _export(example, "bob@example.com")["suppression"]["reason"] == "unsubscribed"
    assert _export(example, "zed@example.com")["suppression"]["detail"] == "contacts unsubscribe"


def test_an_unsubscribed_export_needs_no_consent_nor_confirmation_for_a_double_opt_in_list(example: Path) -> None:
    """Bringing over who left a double opt-in list subscribes nobody: neither --preconfirmed nor --consent is asked
    for (both are statements about people who subscribe)."""
    unsubscribed = [
        MAILCHIMP + UNSUBSCRIBED,
        _mailchimp_row("dee@example.com", "Dee", "", "", "", ["2022-03-01 09:00:00", "Old", "abd", "NORMAL", ""]),
    ]
    (example / "unsubscribed_members_export_9z.csv").write_text(_csv(unsubscribed))
    left = reconciler("contacts", "import", "unsubscribed_members_export_9z.csv", "--list", "newsletter", cwd=example)
    assert left.returncode == 0 and "by status: unsubscribed 1" in left.stdout, left.stdout + left.stderr
    assert "warning" not in left.stderr, left.stderr
    assert _subscriptions(example)[("dee@example.com", "newsletter")] == "unsubscribed"
    subscribed = [MAILCHIMP, _mailchimp_row("eve@example.com", "Eve", "", "", "", [])]
    (example / "subscribed_members_export_9z.csv").write_text(_csv(subscribed))
    refused = reconciler("contacts", "import", "subscribed_members_export_9z.csv", "--list", "newsletter", cwd=example)
    assert refused.returncode == 1 and "newsletter is a double opt-in list" in refused.stderr + refused.stdout
    assert ("eve@example.com", "newsletter") not in _subscriptions(example)
