"""The JSON Schema of every document kind, for editors (VS Code's YAML extension) and other tools.

Editors' YAML language servers handle draft-07 best, so the schema is written as draft-07: definitions under
``definitions`` and a top-level ``oneOf`` chosen by each document's ``kind``.
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import json
import sys
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from reconciler.spec.types import Model
from reconciler.spec.workspace import KINDS

SCHEMA_ID = "https://reconciler.dev/schema/workspace.json"


def json_schema() -> dict[str, Any]:
    """One schema that accepts any single document of a workspace."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(model, "validation") for model in KINDS.values()]
    refs, schema = models_json_schema(models, ref_template="#/definitions/{model}")
    definitions = schema.get("$defs", {})
    _describe_fields(definitions)
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


def _describe_fields(definitions: dict[str, Any]) -> None:
    """Each property's description: the docstring written under its field in the model's class (or a base's)."""
    models = {model.__name__: model for model in _subclasses(Model)}
    for name, definition in definitions.items():
        model = models.get(name)
        if model is None:
            continue
        docs: dict[str, str] = {}
        for klass in reversed(model.__mro__):
            docs.update(_field_docstrings(klass))
        for field_name, field in model.model_fields.items():
            prop = definition.get("properties", {}).get(field.alias or field_name)
            if prop is not None and field_name in docs and "description" not in prop:
                prop["description"] = docs[field_name]


def _subclasses(model: type[Model]) -> Iterator[type[Model]]:
    for sub in model.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@functools.cache
def _module_tree(module: str) -> ast.Module | None:
    try:
        source = inspect.getsource(sys.modules[module])
    except (OSError, TypeError, KeyError):
        return None
    return ast.parse(source)


def _field_docstrings(klass: type) -> dict[str, str]:
    """{field: the string literal right after its annotated assignment} in the class's own body."""
    tree = _module_tree(klass.__module__)
    body = (
        next((node.body for node in tree.body if isinstance(node, ast.ClassDef) and node.name == klass.__name__), [])
        if tree
        else []
    )
    found = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            found[node.target.id] = inspect.cleandoc(after.value.value)
    return found


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
