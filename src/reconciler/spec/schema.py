"""The JSON Schema of every document kind, for editors (VS Code's YAML extension) and other tools.

Editors' YAML language servers handle draft-07 best, so the schema is written as draft-07: definitions under
``definitions`` and a top-level ``oneOf`` chosen by each document's ``kind``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from reconciler.spec.workspace import KINDS

SCHEMA_ID = "https://reconciler.dev/schema/workspace.json"


def json_schema() -> dict[str, Any]:
    """One schema that accepts any single document of a workspace."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(model, "validation") for model in KINDS.values()]
    refs, schema = models_json_schema(models, ref_template="#/definitions/{model}")
    definitions = schema.get("$defs", {})
    choices = []
    for kind, model in KINDS.items():
        ref = refs[(model, "validation")]
        choices.append({"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]}, "then": ref})
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": SCHEMA_ID,
        "title": "reconciler workspace document",
        "description": "One document of a reconciler workspace: Settings, List, Field, Segment, Campaign or Workflow.",
        "type": "object",
        "required": ["kind"],
        "properties": {"kind": {"enum": list(KINDS), "description": "The document kind."}},
        "allOf": choices,
        "definitions": _draft7_refs(definitions),
    }


def _draft7_refs(node: Any) -> Any:
    """Draft-07 ignores keys beside a ``$ref``; wrap the ref in ``allOf`` so descriptions and defaults show."""
    if isinstance(node, list):
        return [_draft7_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _draft7_refs(value) for key, value in node.items()}
    if "$ref" in node and len(node) > 1:
        ref = node.pop("$ref")
        node["allOf"] = [{"$ref": ref}]
    return node


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False, default=str) + "\n"
