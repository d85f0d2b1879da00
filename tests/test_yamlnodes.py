"""YAML is read by YAML 1.2 rules, keeps positions, and refuses what would silently lose data."""

from __future__ import annotations

import pytest

from reconciler.yamlnodes import parse_documents

pytestmark = pytest.mark.no_state  # the PostgreSQL pass of the suite leaves it out


def one(text: str) -> object:
    documents, errors = parse_documents(text)
    assert errors == []
    assert len(documents) == 1
    return documents[0].value


def test_yaml_1_1_booleans_and_norway_stay_text() -> None:
    assert one("a: NO\nb: on\nc: yes\nd: Off\n") == {"a": "NO", "b": "on", "c": "yes", "d": "Off"}


def test_true_and_false_are_the_only_booleans() -> None:
    assert one("a: true\nb: False\n") == {"a": True, "b": False}


def test_leading_zero_numbers_keep_their_digits() -> None:
    assert one("zip: 012\nn: 12\nhex: 0x1F\n") == {"zip": "012", "n": 12, "hex": 31}


def test_times_of_day_are_not_sexagesimal_numbers() -> None:
    assert one("at: 09:00\nlong: 1:30:00\n") == {"at": "09:00", "long": "1:30:00"}


def test_timestamps_keep_their_utc_offset_as_written() -> None:
    assert one("at: 2026-11-27T09:00:00+01:00\nday: 2026-11-27\n") == {
        "at": "2026-11-27T09:00:00+01:00",
        "day": "2026-11-27",
    }


def test_null_float_and_quoted_values() -> None:
    assert one("a: ~\nb:\nc: 1.5\nd: '1.5'\n") == {"a": None, "b": None, "c": 1.5, "d": "1.5"}


def test_duplicate_key_is_an_error_at_the_second_key() -> None:
    documents, errors = parse_documents("kind: List\nname: a\ntitle: x\nname: b\n")
    assert documents[0].errors[0].line == 4
    assert "duplicate key 'name'" in documents[0].errors[0].message
    assert "line 2" in documents[0].errors[0].message
    assert errors == []


def test_every_key_and_item_has_its_position() -> None:
    documents, _ = parse_documents("---\nkind: Campaign\naudience:\n  lists:\n    - offers\n    - news\n")
    positions = documents[0].positions
    assert positions[("audience",)] == (3, 1)
    assert positions[("audience", "lists")] == (4, 3)
    assert positions[("audience", "lists", 1)] == (6, 7)


def test_several_documents_per_file_with_their_own_lines() -> None:
    documents, errors = parse_documents("kind: List\nname: a\n---\nkind: List\nname: b\n---\n")
    assert errors == []
    assert [(d.value["name"], d.line) for d in documents] == [("a", 1), ("b", 4)]


def test_syntax_error_is_located_and_earlier_documents_survive() -> None:
    documents, errors = parse_documents("kind: List\nname: a\n---\nkind: List\n  name: [b\n")
    assert len(documents) == 1
    assert errors[0].line == 5
    assert errors[0].message.startswith("YAML syntax")


def test_tabs_get_a_hint_about_spaces() -> None:
    _, errors = parse_documents("kind: List\n\tname: a\n")
    assert errors and "spaces" in errors[0].hint


def test_merge_keys_fill_in_without_overriding() -> None:
    text = "base: &b {opens: true, clicks: true}\nmine:\n  <<: *b\n  clicks: false\n"
    assert one(text) == {"base": {"opens": True, "clicks": True}, "mine": {"opens": True, "clicks": False}}


def test_alias_bomb_is_refused_instead_of_eating_memory() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    documents, errors = parse_documents("\n".join(lines) + "\n")
    assert documents == []
    assert "too many values" in errors[0].message


def test_unknown_tags_are_reported() -> None:
    documents, _ = parse_documents("password: !vault abc\n")
    assert "unknown tag" in documents[0].errors[0].message
