"""The one JSON reader for what comes in (API bodies, webhooks, JSONL import lines) and the one writer of JSON
that goes into the database.

Python's `json` accepts what no other program writes and SQLite refuses: `NaN`, `Infinity` and `1e999` (which
becomes infinity). A value like that, once stored, makes every query that reads the row fail with "malformed JSON".
It also parses arbitrarily deep nesting until Python's recursion limit, which ends in a RecursionError that nobody
expects. `loads` refuses both with a `JsonInputError` (a ValueError) that says what is wrong; `dumps` never writes a
non-finite number.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32
"""Arrays and objects nested deeper than this are refused (a contact or an event needs three or four levels)."""


class JsonInputError(ValueError):
    """JSON we do not accept: malformed, a non-finite number, or nested too deep."""


class NonFiniteNumber(JsonInputError):
    """Well-formed text holding a number no database or other program can read back (NaN, Infinity, 1e999)."""


def _constant(name: str) -> Any:
    raise NonFiniteNumber(f"{name} is not a number JSON allows (write a finite number or null)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"the number {text[:40]} is too large (it would be infinite)")
    return value


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Strict JSON: no NaN or Infinity, no number that overflows to infinity, at most `max_depth` levels."""
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_float)
    except JsonInputError:
        raise
    except RecursionError:
        raise JsonInputError(f"nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (ValueError, UnicodeDecodeError) as exc:  # bytes that are not UTF-8, an integer of 4,300+ digits
        raise JsonInputError(f"not JSON: {exc}") from None
    check_depth(value, max_depth)
    raw = text if isinstance(text, str) else text.decode(json.detect_encoding(text), "replace")  # as json reads it
    if _SURROGATE.search(raw):
        _check_characters(value)
    return value


_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
"""An escape of half of a UTF-16 pair (`\\ud83d\\ude00` is one character, 😀; `\\ud800` alone is none)."""


def _check_characters(value: Any) -> None:
    """Raise JsonInputError for a string (a key or a value) holding half of a UTF-16 pair without the other: JSON's
    escapes allow it, but it is no character, UTF-8 cannot hold it and no database stores it."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _whole_characters(item)
        elif isinstance(item, dict):
            for key, child in item.items():
                _whole_characters(key)
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)


def _whole_characters(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        half = f"\\u{ord(text[exc.start]):04x}"
        raise JsonInputError(
            f"{half} is half of a UTF-16 pair without its other half, no character (write the character itself, "
            "or both halves of its pair)"
        ) from None


def check_depth(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise JsonInputError when `value` nests lists and dicts deeper than `max_depth` (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise JsonInputError(f"nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def dumps(value: Any) -> str:
    """Compact JSON for the database; a non-finite number is a ValueError, never stored."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"))
