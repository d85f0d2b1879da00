"""What a segment condition's operand is compared as: event properties are not declared, so the type of a
comparison on one comes from its operand (`type_of`), and the JSON types a stored value may have to meet it
(`json_types`); `holds` checks bounds against a number known in Python (whether zero events meet a `count` or a
`sum`, which decides if contacts without events can match)."""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

from reconciler.spec.conditions import Operators

_CHECKS = dict(eq=operator.eq, ne=operator.ne, gt=operator.gt, gte=operator.ge, lt=operator.lt, lte=operator.le)


def holds(value: float, bounds: Mapping[str, float]) -> bool:
    return all(bool(_CHECKS[op](value, limit)) for op, limit in bounds.items())


def plain(value: Any) -> Any:
    """A boolean operand as the number JSON lists hold it as in SQL (true as 1)."""
    return int(value) if isinstance(value, bool) else value


def type_of(node: Operators) -> str:
    """The type an event property is compared as, from its operand (event properties are not declared)."""
    operand = node.operand
    sample = operand[0] if isinstance(operand, list) and operand else operand
    if node.operator in ("before", "after", "within"):
        return "datetime"
    return scalar_type(sample)


def scalar_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string"


JSON_TYPES = {"number": ("integer", "real"), "string": ("text",), "datetime": ("text",), "boolean": ("true", "false")}
"""The JSON types (as SQLite's json_type names them) of event properties that a comparison of each type can match."""


def json_types(node: Operators) -> tuple[str, ...]:
    """The JSON types a property may have to meet `node`: those of its operand (of each item, for `in`)."""
    if node.operator in ("before", "after", "within"):
        return JSON_TYPES["datetime"]
    operand = node.operand
    samples = operand if isinstance(operand, list) else [operand]
    return tuple(dict.fromkeys(kind for sample in samples for kind in JSON_TYPES[scalar_type(sample)]))
