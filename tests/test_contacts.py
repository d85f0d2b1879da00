"""Importing, exporting and erasing contacts, against real SQLite files."""

from __future__ import annotations

import csv
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from conftest import reconciler
from reconciler.imports import ImportFileError, import_file
from reconciler.load import load_workspace
from reconciler.plan import count_audience
from reconciler.rows import _plain_address, convert, normalise_email
from reconciler.spec import DesiredState
from reconciler.state import observe
from reconciler.state.contacts import erase_contact, export_contact
from state_helpers import open_state, set_status, suppress_address

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def _desired(example: Path) -> DesiredState:
    desired, problems = load_workspace(example)
    assert not problems
    return desired


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_a_10000_row_file_reports_exactly_its_bad_rows_and_imports_the_rest_once(example: Path) -> None:
    rng = random.Random(7)
    rows: list[list[str]] = []
    bad_lines: dict[int, str] = {}
    expected: dict[str, str] = {}
    for index in range(10_000):
        line = index + 2  # the header is line 1
        if index % 200 == 17:  # 50 bad rows, of several kinds
            kind = (index // 200) % 5
            email, spend = [
                ("not-an-address", "1"),
                ("two@@example.com", "1"),
                ("", "3"),
                (f"ok{index}@example.com", "lots"),
                (f"ok{index}@example.com", "1"),
            ][kind]
            country = "Poland" if kind == 4 else "PL"
            bad_lines[line] = {0: "email", 1: "email", 2: "email", 3: "total_spend", 4: "country"}[kind]
            rows.append([email, "Bad", spend, country])
            continue
        number = rng.randrange(index) if index > 100 and rng.random() < 0.1 else index
        if number % 200 == 17:
            number = index
        address = f"person{number}@example.com"
        expected[address] = address
        shown = address.upper() if rng.random() < 0.5 else address
        rows.append([f"  {shown}\t", f"Name{number}", f"{number}.5", "pl"])
    path = example / "contacts.csv"
    _write_csv(path, ["email", "first_name", "total_spend", "country"], rows)
    db = open_state(example)

    report = import_file(
        db, _desired(example), path, lists=["newsletter"], consent_text="form v3", now=NOW, preconfirmed=True
    )

    assert {bad.line: bad.message.split(":")[0] for bad in report.bad} == {
        line: ("email" if field == "email" else field) for line, field in bad_lines.items()
    }
    assert len(report.bad) == 50
    assert report.rows == 10_000
    assert report.created == len(expected)
    assert report.created + report.duplicates == 10_000 - 50
    stored = [row[0] for row in db.conn.execute("SELECT email FROM contacts")]
    assert sorted(stored) == sorted(expected)
    assert db.conn.execute("SELECT count(*) FROM subscriptions WHERE list = 'newsletter'").fetchone()[0] == len(
        expected
    )
    assert db.conn.execute("SELECT count(*) FROM consent WHERE text = 'form v3'").fetchone()[0] == len(expected)
    country, fields = db.conn.execute(
        "SELECT country, fields FROM contacts WHERE email = 'person5@example.com'"
    ).fetchone()
    assert (country, json.loads(fields)["total_spend"]) == ("PL", 5.5)


def test_an_unsubscribed_or_erased_address_stays_out_after_reimport(example: Path) -> None:
    path = example / "c.csv"
    _write_csv(
        path,
        ["email", "first_name"],
        [["ann@example.com", "Ann"], ["bob@example.com", "Bob"], ["cy@example.com", "Cy"], ["di@example.com", "Di"]],
    )
    db = open_state(example)
    desired = _desired(example)
    import_file(db, desired, path, lists=["offers"], consent_text=None, now=NOW)
    set_status(db, "ann@example.com", "offers", "unsubscribed", at="2026-11-24T13:00:00Z")
    erase_contact(db, "bob@example.com", at="2026-11-24T13:00:00Z")
    suppress_address(db, "cy@example.com", "bounced", at="2026-11-24T13:00:00Z")

    report = import_file(db, desired, path, lists=["offers"], consent_text=None, now=NOW)

    subscribed = {
        row[0]
        for row in db.conn.execute(
            "SELECT c.email FROM subscriptions s JOIN contacts c ON c.id = s.contact_id "
            "WHERE s.list = 'offers' AND s.status = 'subscribed'"
        )
    }
    assert subscribed == {"cy@example.com", "di@example.com"}  # cy's subscription stands; the bounce keeps them out
    histogram = observe(db).audience
    assert histogram is not None
    audience = count_audience(histogram, lists=["offers"])
    assert (audience.recipients, dict(audience.excluded)) == (1, {"bounced": 1, "unsubscribed": 1})
    assert db.conn.execute("SELECT count(*) FROM contacts WHERE email = 'bob@example.com'").fetchone()[0] == 0
    assert report.skipped_erased == 1
    assert report.kept_out == {"unsubscribed": 1, "bounced": 1}
    assert "not resubscribed: bounced 1, unsubscribed 1" in report.summary()


def test_jsonl_rows_merge_fields_and_tags_into_the_existing_contact(example: Path) -> None:
    path = example / "c.jsonl"
    path.write_text(
        '{"email": "Ann@Example.com", "tags": ["vip"], "orders_count": 2, "birthday": "1990-05-01"}\n'
        "\n"
        '{"email": "ann@example.com", "tags": ["beans"], "wholesale": "yes", "first_name": "Ann"}\n'
        "[1, 2]\n"
        '{"email": "x@example.com", "orders_count": 2.5}\n'
        "{broken\n"
        '{"email": "y@example.com", "orders": 2}\n'
    )
    db = open_state(example)
    report = import_file(db, _desired(example), path, lists=[], consent_text=None, now=NOW)
    assert [(bad.line, bad.message.split(":")[0]) for bad in report.bad] == [
        (4, "not a JSON object (each line holds one contact"),
        (5, "orders_count"),
        (6, "not JSON"),
        (7, "unknown field 'orders' (did you mean 'orders_count'?)"),
    ]
    exported = export_contact(db, "ann@example.com")
    assert exported is not None
    contact = exported["contact"]
    assert contact["tags"] == ["beans", "vip"]
    assert contact["fields"] == {"orders_count": 2, "birthday": "1990-05-01", "wholesale": True}
    assert contact["first_name"] == "Ann"


def test_unknown_columns_stop_the_import_before_anything_is_written(example: Path) -> None:
    path = example / "c.csv"
    _write_csv(path, ["email", "frist_name"], [["ann@example.com", "Ann"]])
    db = open_state(example)
    with pytest.raises(ImportFileError, match="unknown column 'frist_name' \\(did you mean 'first_name'\\?\\)"):
        import_file(db, _desired(example), path, lists=[], consent_text=None, now=NOW)
    assert db.conn.execute("SELECT count(*) FROM contacts").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("value", "type_", "expected"),
    [
        ("1,234.5", "number", 1234.5),
        ("12", "integer", 12),
        (" yes ", "boolean", True),
        ("0", "boolean", False),
        ("2026-02-01", "date", "2026-02-01"),
        ("2026-02-01T10:00:00", "datetime", "2026-02-01T09:00:00Z"),
        ("a; b;", "list", ["a", "b"]),
        (3, "integer", 3),
    ],
)
def test_values_are_converted_to_the_declared_field_type(value: object, type_: str, expected: object) -> None:
    assert convert(value, type_, timezone="Europe/Warsaw") == expected


@pytest.mark.parametrize(
    ("value", "type_"),
    [("1.5", "integer"), ("maybe", "boolean"), ("nan", "number"), ("31/12/2026", "date"), (True, "number")],
)
def test_values_of_the_wrong_type_are_refused(value: object, type_: str) -> None:
    with pytest.raises(ValueError, match="is not"):
        convert(value, type_, timezone="UTC")


def test_addresses_are_trimmed_lowercased_and_checked_without_dns() -> None:
    assert normalise_email("  Ann.Smith@Example.COM ") == "ann.smith@example.com"
    for bad in ("ann", "ann@", "a b@example.com", "ann@localhost"):
        with pytest.raises(ValueError, match="not a valid email address"):
            normalise_email(bad)


def test_the_quick_path_for_plain_addresses_says_what_email_validator_says() -> None:
    from email_validator import EmailNotValidError, validate_email

    long_domain = ".".join(["d" * 60] * 3) + ".com"
    addresses = [
        "Ann.Smith@Example.COM",
        "a+b@x.co",
        "POSTMASTER@x.org",
        "a!#$%&'*+-/=?^_`{|}~@x.com",
        "a..b@x.com",
        ".a@x.com",
        "a.@x.com",
        "a@x",
        "a@localhost",
        "a@x.test",
        "a@x.local",
        "a@x.invalid",
        "a@-x.com",
        "a@x-.com",
        "a@x..com",
        "a@.x.com",
        "a@x.com.",
        "a@1.2.3.4",
        "a@x.123",
        "a@x.c0m",
        "a@xn--bcher-kva.example",
        "a@XN--BCHER-KVA.de",
        "a@" + "b" * 64 + ".com",
        "x" * 70 + "@x.com",
        "x" * 60 + "@" + long_domain,
        "x" * 80 + "@" + long_domain,
        "a@[1.2.3.4]",
        '"a b"@x.com',
        "a b@x.com",
        "a@b@x.com",
        "ann@bücher.de",
        "ännа@x.com",
        "Ann <ann@x.com>",
    ]
    for address in addresses:
        try:
            expected: str | None = validate_email(address, check_deliverability=False).normalized.lower()
        except EmailNotValidError:
            expected = None
        quick = _plain_address(address)
        assert quick is None or quick == expected, address
        if expected is not None and expected.split("@")[0].isascii():
            assert normalise_email(address) == expected, address
        elif expected is None:
            with pytest.raises(ValueError, match="not a valid email address"):
                normalise_email(address)
    assert _plain_address("Reader7@Bench.Example") == "reader7@bench.example"  # the common address takes it


def test_export_and_erase_from_the_command_line(example: Path) -> None:
    (example / "c.csv").write_text("email,first_name\nann@example.com,Ann\nbob@example.com,Bob\n")
    imported = reconciler(
        "contacts", "import", "c.csv", "--list", "newsletter", "--preconfirmed", "--consent", "v1", cwd=example
    )
    assert imported.returncode == 0, imported.stderr
    assert "2 new" in imported.stdout

    exported = reconciler("contacts", "export", "ANN@example.com", cwd=example)
    assert exported.returncode == 0, exported.stderr
    data = json.loads(exported.stdout)
    assert data["contact"]["first_name"] == "Ann"
    assert [c["action"] for c in data["consent"]] == ["preconfirmed"]  # newsletter is double opt-in
    assert data["consent"][0]["text"] == "v1"

    refused = reconciler("contacts", "erase", "ann@example.com", cwd=example)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    erased = reconciler("contacts", "erase", "ann@example.com", "--yes", cwd=example)
    assert erased.returncode == 0 and "Erased ann@example.com" in erased.stdout
    after = reconciler("contacts", "export", "ann@example.com", cwd=example)
    assert json.loads(after.stdout)["suppression"]["reason"] == "erased"
    assert "Ann" not in after.stdout

    again = reconciler("contacts", "import", "c.csv", "--list", "newsletter", "--preconfirmed", cwd=example)
    assert "1 erased on request (not stored)" in again.stdout
    db = open_state(example)
    assert [row[0] for row in db.conn.execute("SELECT email FROM contacts")] == ["bob@example.com"]


def test_bad_rows_make_the_import_exit_1_and_name_their_lines(example: Path) -> None:
    (example / "c.csv").write_text("email,orders_count\nann@example.com,1\nnope,2\nbob@example.com,two\n")
    result = reconciler("contacts", "import", "c.csv", cwd=example)
    assert result.returncode == 1
    assert "c.csv:3: email: 'nope' is not a valid email address" in result.stderr
    assert "c.csv:4: orders_count: 'two' is not an integer" in result.stderr
    assert "1 new" in result.stdout
