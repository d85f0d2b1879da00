"""YAML text -> plain Python values, with the position of every key and item.

We compose ruamel.yaml's node graph and build the values ourselves instead of letting a constructor guess, so that:

- duplicate keys are errors (a second ``subject:`` silently winning is a classic review miss);
- scalars follow YAML 1.2 (``NO``, ``on``, ``yes`` stay text; ``09:00`` is not sexagesimal), and a number with a
  leading zero (``012``) stays the text it was written as instead of becoming an octal or a decimal;
- timestamps stay text, so pydantic sees the UTC offset as written;
- every key and list item keeps its line and column, so a pydantic error location points at the file;
- alias bombs and recursive aliases end in an error instead of eating memory.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Loc = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_LEADING_ZERO = re.compile(r"^[-+]?0[0-9_]+$")
MAX_NODES = 200_000
"""More values than any real spec has; past it a document is refused (alias bombs)."""
MAX_DEPTH = 64
"""Lists and mappings nested deeper than this are refused before composing: the C composer recurses and would
crash the process (a segfault, not an exception) on a document nested some 50,000 deep."""


@dataclass(frozen=True)
class NodeError:
    """A YAML-level mistake at a 1-based position."""

    line: int
    column: int
    message: str
    hint: str = ""


@dataclass
class Document:
    """One YAML document: its value, where it starts, and where each key and item sits."""

    value: Any
    line: int
    column: int
    positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    errors: list[NodeError] = field(default_factory=list)
    """Mistakes inside this document (duplicate keys, unknown tags); its value is still usable."""


class _Builder:
    def __init__(self) -> None:
        self.errors: list[NodeError] = []
        self.positions: dict[Loc, tuple[int, int]] = {}
        self.count = 0
        self.active: set[int] = set()

    def build(self, node: Node, loc: Loc) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooLarge
        if len(loc) > MAX_DEPTH:  # only aliases get here: the text itself was measured before composing
            raise _TooDeep(node)
        if id(node) in self.active:
            self.errors.append(_at(node, "an alias refers to itself", "remove the recursive alias"))
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, ScalarNode):
                return self.scalar(node)
            if isinstance(node, SequenceNode):
                items = []
                for index, item in enumerate(node.value):
                    self.positions.setdefault((*loc, index), _pos(item))
                    items.append(self.build(item, (*loc, index)))
                return items
            if isinstance(node, MappingNode):
                return self.mapping(node, loc)
            self.errors.append(_at(node, f"unsupported YAML node {type(node).__name__}"))
            return None
        finally:
            self.active.discard(id(node))

    def mapping(self, node: MappingNode, loc: Loc) -> dict[str, Any]:
        result: dict[str, Any] = {}
        first_seen: dict[str, int] = {}
        merged: list[MappingNode] = []
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                merged.extend(n for n in sources if isinstance(n, MappingNode))
                continue
            if not isinstance(key_node, ScalarNode):
                self.errors.append(_at(key_node, "a key must be plain text", "write the key as a word"))
                continue
            key = str(key_node.value)
            if key in first_seen:
                self.errors.append(
                    _at(
                        key_node,
                        f"duplicate key {key!r} (first at line {first_seen[key]})",
                        "keep one of them: YAML would silently use the last",
                    )
                )
                continue
            first_seen[key] = key_node.start_mark.line + 1
            self.positions[(*loc, key)] = _pos(key_node)
            result[key] = self.build(value_node, (*loc, key))
        for source in merged:  # `<<: *defaults` fills in keys the mapping did not set itself
            for key, value in self.mapping(source, loc).items():
                result.setdefault(key, value)
        return result

    def scalar(self, node: ScalarNode) -> Any:
        text: str = node.value
        tag = node.tag or ""
        if tag in (_TAG + "str", _TAG + "timestamp", _TAG + "binary") or node.style in ("'", '"', "|", ">"):
            return text
        if tag == _TAG + "null":
            return None
        if tag == _TAG + "bool":
            return text.lower() == "true"
        if tag == _TAG + "int":
            if _LEADING_ZERO.match(text):
                return text
            try:
                return int(text.replace("_", ""), 0)
            except ValueError:
                return text
        if tag == _TAG + "float":
            try:
                number = float(text.replace("_", "").lower().replace(".inf", "inf").replace(".nan", "nan"))
            except ValueError:
                return text
            if not math.isfinite(number):
                hint = "write a finite number, or quote it to mean text"
                self.errors.append(
                    _at(node, f"{text} is not a finite number, which no comparison or store can use", hint)
                )
                return text
            return number
        self.errors.append(_at(node, f"unknown tag {tag!r}", "remove the tag; write plain values"))
        return text


class _TooLarge(Exception):
    pass


class _TooDeep(Exception):
    def __init__(self, node: Node) -> None:
        super().__init__()
        self.node = node


def _too_deep(text: str) -> tuple[int, NodeError] | None:
    """The first document nested deeper than MAX_DEPTH (its index) and where it got too deep, found from the parser's
    events, which need no recursion. Text that cannot nest that deep is not parsed twice: every level starts with a
    flow bracket, or a block collection, of which a line starts at most one plus one per `-` or `?` on it."""
    starts = text.count("[") + text.count("{") + text.count("\n") + 1 + text.count("-") + text.count("?")
    if starts <= MAX_DEPTH:
        return None
    depth, document = 0, -1
    try:
        for event in _yaml().parse(text):
            name = type(event).__name__
            if name == "DocumentStartEvent":
                document += 1
            elif name in ("SequenceStartEvent", "MappingStartEvent"):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    return max(document, 0), NodeError(mark.line + 1, mark.column + 1, _DEEP, _DEEP_HINT)
            elif name in ("SequenceEndEvent", "MappingEndEvent"):
                depth -= 1
    except (YAMLError, ValueError):
        return None  # a syntax error: composing reports it, at the same place
    return None


_DEEP = f"nested deeper than {MAX_DEPTH} levels"
_DEEP_HINT = "no spec needs that many; flatten the lists and mappings here"


def _pos(node: Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _at(node: Node, message: str, hint: str = "") -> NodeError:
    line, column = _pos(node)
    return NodeError(line, column, message, hint)


def _yaml() -> YAML:
    """The C parser when ruamel.yaml.clib is installed (~8x faster than the pure one); positions are the same.

    A new instance per parse (~40 µs): an instance keeps a `DocInfo` for every document it ever parsed, so one
    kept for the daemon's life grows on every pass, and one shared between threads would mix their state."""
    return YAML(typ="safe", pure=False)


def parse_documents(text: str) -> tuple[list[Document], list[NodeError]]:
    """All documents of a YAML stream, and the syntax error that ended it early, if any.

    Documents before a syntax error are kept, so their own mistakes are still reported.
    """
    yaml = _yaml()
    documents: list[Document] = []
    errors: list[NodeError] = []
    deep = _too_deep(text)
    if deep is not None:
        errors.append(deep[1])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for node in _compose_all(yaml, text, stop_before=deep[0] if deep else None):
                if node is None or (isinstance(node, ScalarNode) and node.tag == _TAG + "null"):
                    continue  # an empty document, e.g. after a trailing ---
                builder = _Builder()
                try:
                    value = builder.build(node, ())
                except _TooLarge:
                    errors.append(_at(node, "the document expands to too many values (an alias bomb?)"))
                    continue
                except _TooDeep as exc:
                    errors.append(_at(exc.node, f"{_DEEP} (through aliases)", _DEEP_HINT))
                    continue
                line, column = _pos(node)
                documents.append(Document(value, line, column, builder.positions, builder.errors))
    except MarkedYAMLError as exc:
        # An unclosed bracket or quote is noticed lines later; where it opened is where the fix goes.
        opened = (exc.context or "").startswith(("while parsing a flow", "while scanning a quoted"))
        mark = (exc.context_mark if opened else None) or exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        errors.append(NodeError(line, column, f"YAML syntax: {problem}", _syntax_hint(problem)))
    except (YAMLError, ValueError, RecursionError) as exc:
        errors.append(NodeError(1, 1, f"YAML syntax: {exc}", "check indentation and quoting"))
    return documents, errors


def _compose_all(yaml: YAML, text: str, *, stop_before: int | None) -> Iterator[Node | None]:
    """The stream's documents, composed one by one, up to (not including) document `stop_before`."""
    if stop_before == 0:
        return
    for index, node in enumerate(yaml.compose_all(text)):
        yield node
        if stop_before is not None and index + 1 >= stop_before:
            return  # asking for the next document would compose the one that is too deep


def _syntax_hint(problem: str) -> str:
    if "tab" in problem or "'\\t'" in problem:
        return "indent with spaces, not tabs"
    if "mapping values are not allowed" in problem:
        return "a value containing ': ' needs quotes"
    if "found character" in problem and "that cannot start any token" in problem:
        return "put the value in quotes"
    return "check indentation and quoting around this line"
