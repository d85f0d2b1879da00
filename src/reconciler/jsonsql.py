"""How each state engine reads the JSON the state keeps in text columns (a contact's fields and tags, an event's
properties), as the fragments the segment compiler and the state's queries put together.

`SQLITE` gives exactly the text the compiler always wrote (SQLite's `json_extract`, `json_each`, `json_type`);
`POSTGRESQL` gives jsonb's: ``CAST(col AS jsonb) -> key``, `jsonb_typeof`, `jsonb_exists`, containment (`@>`),
never the `?` operator (it is a placeholder). On PostgreSQL a value is read as its declared type only when its JSON
type is that type (a number as `numeric`, a boolean as the integer 1 or 0 as SQLite reads it, a string as text
compared byte by byte, ``COLLATE "C"``, as SQLite compares it), and is NULL otherwise, so a comparison with a
value of another type is false as on SQLite and never an error.

Every name and value is a parameter; the only text a caller passes in is SQL of its own (a column, a placeholder,
a fragment from here). Each method returns (text, parameters).
"""

from __future__ import annotations

import json
from typing import Any

Fragment = tuple[str, tuple[Any, ...]]


def json_path(name: str) -> str:
    """SQLite's JSON path of a key, quoted so any name is one key (a parameter, never SQL text)."""
    return "$." + json.dumps(name)


class Dialect:
    """SQLite's JSON functions (the text the state code was written with)."""

    name = "sqlite"
    number_group_hint = "+"
    """Prefixed to the grouping key of an event `sum`: keeps SQLite from walking events in contact order."""

    def json_values(self, array: str) -> str:
        """A subquery of one column, `value`: the elements of the JSON array text `array` (strings as text)."""
        return f"SELECT value FROM json_each({array})"

    def column(self, column: str, type_: str) -> str:
        """The value of a contact's own column (email, country, tags ...) of type `type_`."""
        return column

    def field(self, document: str, name: str, type_: str) -> Fragment:
        """The value of key `name` of the JSON object text `document`, a field of type `type_`."""
        return f"json_extract({document}, ?)", (json_path(name),)

    def present(self, document: str, name: str) -> Fragment:
        """The value of key `name`, of any type: NULL when missing or JSON null."""
        return f"json_extract({document}, ?)", (json_path(name),)

    def typed(self, document: str, name: str, kinds: tuple[str, ...]) -> Fragment:
        """The value of key `name` when its JSON type is one of `kinds` (as SQLite's json_type names them), else
        NULL."""
        marks = ", ".join("?" * len(kinds))
        path = json_path(name)
        return f"(CASE WHEN json_type({document}, ?) IN ({marks}) THEN json_extract({document}, ?) END)", (
            path,
            *kinds,
            path,
        )

    def has_string(self, array: str) -> str:
        """The JSON array text `array` has the string `?` (a contact's tags)."""
        return f"EXISTS (SELECT 1 FROM json_each({array}) WHERE value = ?)"

    def list_has(self, value: str, params: tuple[Any, ...], item: Any) -> Fragment:
        """The list `value` (a `field` of type list) holds `item`."""
        return f"EXISTS (SELECT 1 FROM json_each({value}) WHERE value = ?)", (*params, item)

    def list_has_any(self, value: str, params: tuple[Any, ...], items: list[Any]) -> Fragment:
        return (
            f"EXISTS (SELECT 1 FROM json_each({value}) WHERE value IN (SELECT value FROM json_each(?)))",
            (*params, json.dumps(items)),
        )

    def list_length(self, value: str) -> str:
        return f"json_array_length({value})"

    def one_of(self, value: str, type_: str) -> str:
        """`value` (of type `type_`) is one of the elements of the JSON array text `?`: true, false or NULL."""
        return f"{value} IN (SELECT value FROM json_each(?))"

    def contains_text(self, value: str) -> str:
        """The text `value` contains the text `?`: true, false or NULL."""
        return f"instr({value}, ?) > 0"

    def number_sum(self, document: str, name: str) -> Fragment:
        """The sum over a group of the numbers at key `name`, 0 when there is none."""
        return f"coalesce(sum(json_extract({document}, ?)), 0)", (json_path(name),)


_SQL_TYPES = {"number": "numeric", "integer": "numeric", "boolean": "integer", "list": "jsonb"}
"""PostgreSQL's type of a field's value by its declared type; any other (string, date, datetime) is text."""
_JSON_TYPES = {"number": "number", "integer": "number", "boolean": "boolean", "list": "array"}
_KINDS = {"integer": "number", "real": "number", "text": "string", "true": "boolean", "false": "boolean"}


class PostgresDialect(Dialect):
    """PostgreSQL's jsonb functions over the same text columns."""

    name = "postgresql"
    number_group_hint = ""

    def json_values(self, array: str) -> str:
        return f"SELECT value FROM jsonb_array_elements_text(CAST({array} AS jsonb)) AS j(value)"

    def column(self, column: str, type_: str) -> str:
        if type_ == "list":
            return f"CAST({column} AS jsonb)"
        if _SQL_TYPES.get(type_, "text") == "text":
            return f'({column} COLLATE "C")'
        return column

    def field(self, document: str, name: str, type_: str) -> Fragment:
        return _typed(document, name, _JSON_TYPES.get(type_, "string"), _SQL_TYPES.get(type_, "text"))

    def present(self, document: str, name: str) -> Fragment:
        return f"(CAST({document} AS jsonb) ->> ?)", (name,)

    def typed(self, document: str, name: str, kinds: tuple[str, ...]) -> Fragment:
        json_types = {_KINDS[kind] for kind in kinds}
        if len(json_types) != 1:
            raise ValueError(
                "a condition on an event property whose values are of different JSON types (numbers and strings) "
                "is not supported on PostgreSQL yet"
            )
        (json_type,) = json_types
        return _typed(document, name, json_type, {"number": "numeric", "boolean": "integer"}.get(json_type, "text"))

    def has_string(self, array: str) -> str:
        return f"jsonb_exists(CAST({array} AS jsonb), CAST(? AS text))"

    def list_has(self, value: str, params: tuple[Any, ...], item: Any) -> Fragment:
        return f"coalesce({value} @> CAST(? AS jsonb), FALSE)", (*params, json.dumps([item]))

    def list_has_any(self, value: str, params: tuple[Any, ...], items: list[Any]) -> Fragment:
        return (
            f"EXISTS (SELECT 1 FROM jsonb_array_elements({value}) AS i(value) "
            "WHERE i.value IN (SELECT jsonb_array_elements(CAST(? AS jsonb))))",
            (*params, json.dumps(items)),
        )

    def list_length(self, value: str) -> str:
        return f"jsonb_array_length({value})"

    def one_of(self, value: str, type_: str) -> str:
        sql_type = _SQL_TYPES.get(type_, "text")
        elements = "jsonb_array_elements_text(CAST(? AS jsonb)) AS j(value)"
        return f"{value} IN (SELECT CAST(value AS {sql_type}) FROM {elements})"

    def contains_text(self, value: str) -> str:
        return f"strpos({value}, ?) > 0"

    def number_sum(self, document: str, name: str) -> Fragment:
        number, params = _typed(document, name, "number", "numeric")
        return f"coalesce(sum({number}), 0)", params


def _typed(document: str, name: str, json_type: str, sql_type: str) -> Fragment:
    """PostgreSQL: key `name` of `document` as `sql_type` when its JSON type is `json_type`, else NULL."""
    doc = f"CAST({document} AS jsonb)"
    if sql_type == "jsonb":
        read = f"{doc} -> ?"
    elif sql_type == "integer":  # a JSON boolean as SQLite reads it: 1 or 0
        read = f"CAST(CAST({doc} ->> ? AS boolean) AS integer)"
    elif sql_type == "text":
        read = f'({doc} ->> ?) COLLATE "C"'
    else:
        read = f"CAST({doc} ->> ? AS {sql_type})"
    return f"(CASE WHEN jsonb_typeof({doc} -> ?) = '{json_type}' THEN {read} END)", (name, name)


SQLITE = Dialect()
POSTGRESQL = PostgresDialect()
