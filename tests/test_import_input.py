"""Odd files for `contacts import`: other encodings, bad bytes deep in a large file, huge cells, deep JSON, repeated
columns, values of the wrong type, addresses that could never be sent, double opt-in lists. Each ends in a clear
message with its line, and a file that cannot be read as a whole writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import reconciler
from state_helpers import connected, exists, query

HEADER = "email,first_name,orders_count\n"


def _rows(count: int) -> str:
    return "".join(f"person{n}@example.com,Pat{n},{n % 9}\n" for n in range(count))


def _import(example: Path, name: str, data: bytes, *args: str) -> tuple[int, str, str]:
    (example / name).write_bytes(data)
    result = reconciler("contacts", "import", name, *args, cwd=example)
    return result.returncode, result.stdout, result.stderr


def _count(example: Path, sql: str = "SELECT count(*) FROM contacts") -> int:
    if not exists(example):
        return 0
    return int(query(example, sql)[0][0])


def test_a_latin_1_file_names_its_first_bad_line_and_writes_nothing(example: Path) -> None:
    text = HEADER + _rows(3) + "jose@example.com,José,1\n" + _rows(2)
    code, _out, err = _import(example, "people.csv", text.encode("latin-1"))
    assert code == 1
    assert "people.csv: line 5 is not UTF-8 (saved as Latin-1?): save the file as UTF-8" in err
    assert "unexpected" not in err and _count(example) == 0


def test_a_bad_byte_deep_in_a_large_file_stops_the_import_before_any_batch_is_written(example: Path) -> None:
    data = (HEADER + _rows(22_000)).encode() + b"late@example.com,Caf\xe9,1\n" + _rows(3_000).encode()
    code, _out, err = _import(example, "big.csv", data)
    assert code == 1 and "line 22002 is not UTF-8" in err, err
    assert _count(example) == 0
    assert _count(example, "SELECT count(*) FROM imports") == 0


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-8-sig"])
def test_files_with_a_byte_order_mark_are_read_in_their_encoding(example: Path, encoding: str) -> None:
    text = HEADER + "zoe@example.com,Zoë,2\n" + _rows(2)
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    code, out, err = _import(example, "people.csv", data)
    assert code == 0, err
    assert "3 new" in out
    with connected(example) as db:
        assert db.execute("SELECT first_name FROM contacts WHERE email = 'zoe@example.com'").fetchone() == ("Zoë",)


def test_utf_16_without_a_byte_order_mark_is_named(example: Path) -> None:
    code, _out, err = _import(example, "people.csv", (HEADER + _rows(2)).encode("utf-16-le"))
    assert code == 1 and "UTF-16" in err and "unexpected" not in err, err
    assert _count(example) == 0


def test_a_cell_over_the_csv_limit_is_a_row_error_with_its_line(example: Path) -> None:
    text = HEADER + _rows(2) + f'huge@example.com,"{"x" * 200_000}",1\n' + "last@example.com,Last,1\n"
    code, out, err = _import(example, "people.csv", text.encode())
    assert code == 1, err
    assert "people.csv:4: " in err and "longer than" in err, err
    assert "3 new" in out and "1 rejected" in out


@pytest.mark.parametrize("header", ["email,first_name,Email", "email,first_name,email", "email;first_name; EMAIL "])
def test_a_repeated_column_is_a_file_error_naming_it(example: Path, header: str) -> None:
    delimiter = header[5]
    data = f"{header}\na@example.com{delimiter}A{delimiter}b@example.com\n".encode()
    code, _out, err = _import(example, "people.csv", data)
    assert code == 1 and "repeated column 'email' (columns 1, 3)" in err, err
    assert _count(example) == 0


def test_jsonl_lines_that_are_too_deep_or_of_the_wrong_type_are_row_errors(example: Path) -> None:
    lines = [
        {"email": "ok@example.com", "first_name": "Ok", "orders_count": 3},
        "[" * 5000 + "]" * 5000,
        {"email": "list@example.com", "first_name": ["x"]},
        {"email": "tags@example.com", "tags": {"a": 1}},
        {"email": "big@example.com", "orders_count": 1e300},
        '{"email": "nan@example.com", "total_spend": NaN}',
        {"email": "nul@example.com", "last_name": "A\u0000B"},
        {"email": "zoë@example.com"},
        {"email": "Puny@XN--BCHER-KVA.example"},
        {"email": "puny@bücher.example", "first_name": "Same"},
        '{"email": "half@example.com", "first_name": "x\\ud800y"}',  # half of a UTF-16 pair: no character
        '{"email": "key@example.com", "\\udfff": "x"}',
        '{"email": "pair@example.com", "first_name": "\\ud83d\\ude00"}',  # a whole pair is a character
    ]
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    code, out, err = _import(example, "people.jsonl", text.encode())
    assert code == 1
    errors = {int(line.split(":")[1]): line for line in err.splitlines() if line.startswith("people.jsonl:")}
    assert sorted(errors) == [2, 3, 4, 5, 6, 7, 8, 11, 12], err
    assert "nested deeper than" in errors[2]
    assert "first_name" in errors[3] and "tags" in errors[4] and "orders_count" in errors[5]
    assert "NaN" in errors[6] and "last_name" in errors[7] and "SMTPUTF8" in errors[8]
    assert "\\ud800" in errors[11] and "\\udfff" in errors[12]
    assert "unexpected" not in err
    assert "3 new" in out and "1 duplicates merged" in out  # the punycode and the Unicode domain are one address


def test_a_double_opt_in_list_needs_preconfirmed_and_the_consent_says_so(example: Path) -> None:
    data = (HEADER + _rows(3)).encode()
    code, _out, err = _import(example, "people.csv", data, "--list", "newsletter", "--consent", "paper form")
    assert code == 1 and "newsletter" in err and "--preconfirmed" in err, err
    assert _count(example) == 0
    code, out, err = _import(example, "people.csv", data, "--list", "newsletter", "--list", "offers", "--preconfirmed")
    assert code == 0, err
    assert "6 subscriptions added" in out
    actions = "SELECT list, action, count(*) FROM consent GROUP BY 1, 2 ORDER BY 1"
    with connected(example) as db:
        assert db.execute(actions).fetchall() == [("newsletter", "preconfirmed", 3), ("offers", "subscribe", 3)]


def test_a_bad_row_is_reported_with_every_problem_it_has(example: Path) -> None:
    data = b"email,orders_count,country,birthday\nnope,two,Poland,31/12\nok@example.com,1,PL,2000-01-31\n"
    code, out, err = _import(example, "people.csv", data)
    assert code == 1
    assert err.splitlines() == [
        "people.csv:2: email: 'nope' is not a valid email address: An email address must have an @-sign.",
        "people.csv:2: orders_count: 'two' is not an integer",
        "people.csv:2: country: 'Poland' is not a two-letter country code (write e.g. PL)",
        "people.csv:2: birthday: '31/12' is not a date (write 2026-11-27)",
    ]
    assert "1 new, 0 updated, 1 rejected" in out


def test_list_without_consent_warns_that_the_consent_records_will_say_nothing(example: Path) -> None:
    data = (HEADER + _rows(2)).encode()
    code, out, err = _import(example, "people.csv", data, "--list", "offers")
    assert code == 0 and "2 subscriptions added" in out
    assert err.startswith("warning: subscribed to offers without --consent: the consent records do not say what"), err
    code, _out, err = _import(example, "people.csv", data, "--list", "offers", "--consent", "checkout form v2")
    assert code == 0 and "warning" not in err, err
