"""`reconciler schema` gives editors the same rules as `validate`, with help text for every key."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft7Validator

from conftest import REPO
from reconciler.spec.schema import json_schema
from reconciler.yamlnodes import parse_documents

pytestmark = pytest.mark.no_state  # the PostgreSQL pass of the suite leaves it out


def documents() -> list[tuple[str, Any]]:
    found = []
    for folder in ("spec", "campaigns"):
        for path in sorted((REPO / folder).rglob("*.yaml")):
            parsed, errors = parse_documents(path.read_text())
            assert errors == []
            found += [(f"{path.relative_to(REPO)}:{d.line}", d.value) for d in parsed]
    return found


def test_the_schema_is_valid_draft_7() -> None:
    Draft7Validator.check_schema(json_schema())


@pytest.mark.parametrize(("where", "document"), documents())
def test_every_example_document_matches_the_schema(where: str, document: Any) -> None:
    failures = [e.message for e in Draft7Validator(json_schema()).iter_errors(document)]
    assert failures == [], where


def test_the_schema_catches_a_typo_an_editor_should_underline() -> None:
    document = {"kind": "List", "name": "offers", "title": "Offers", "visibilty": "public"}
    messages = [e.message for e in Draft7Validator(json_schema()).iter_errors(document)]
    assert any("visibilty" in m for m in messages)


def test_the_schema_rejects_an_unknown_kind() -> None:
    assert not Draft7Validator(json_schema()).is_valid({"kind": "Campain", "name": "x"})


def _properties(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        properties = node.get("properties", {})
        if all(isinstance(value, dict) for value in properties.values()):  # a model's keys, not a key named so
            found += [(f"{path}.{key}", value) for key, value in properties.items()]
        for key, value in node.items():
            found += _properties(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _properties(value, f"{path}[{index}]")
    return found


def test_every_key_is_documented_for_the_editor() -> None:
    undocumented = [path for path, prop in _properties(json_schema()["definitions"]) if not prop.get("description")]
    assert undocumented == []


def test_the_schema_knows_the_exit_step() -> None:
    workflow = {
        "kind": "Workflow",
        "name": "w",
        "trigger": {"subscribed": "news"},
        "steps": [{"id": "out", "exit": True, "reason": "already a customer"}],
    }
    assert Draft7Validator(json_schema()).is_valid(workflow)
    workflow["steps"] = [{"id": "out", "exit": False}]
    assert not Draft7Validator(json_schema()).is_valid(workflow)
