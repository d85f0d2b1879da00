"""How each state engine reads the JSON the state keeps in text columns (a contact's fields and tags, an event's
properties, the arrays of conditions' operands), as the fragments the segment compiler and the state's queries put
together.

`SQLITE` gives SQLite's `json_extract`, `json_each` and `json_type`: a condition on a custom field or an event
property reads the contact's or event's JSON, which SQLite parses fast (its JSON functions are in C, and a scan of
a million contacts' fields is under a second), and keeps no typed copy, so imports write one row per contact.
`POSTGRESQL` reads fields and properties from their typed rows instead (`typed_rows`: `contact_values`,
`event_values`, state/typed_values.py), since parsing jsonb per row there is several times slower, and gives
jsonb's `jsonb_exists` and containment (`@>`) for tags and lists, never the `?` operator (it is a placeholder).
Text is compared byte by byte on both (``COLLATE "C"`` on PostgreSQL, as SQLite compares it), numbers as numbers,
booleans as the integers 1 and 0.

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
    typed_rows = False
    """Custom fields and event properties are read from their typed rows (else from the JSON, by the four methods
    below, which only SQLite has)."""

    def json_values(self, array: str) -> str:
        """A subquery of one column, `value`: the elements of the JSON array text `array` (strings as text)."""
        return f"SELECT value FROM json_each({array})"

    def among(self, column: str, array: str) -> str:
        """`column` is one of the strings of the JSON array text `array` (a parameter: list names, reasons)."""
        return f"{column} IN ({self.json_values(array)})"

    def column(self, column: str, type_: str) -> str:
        """The value of a column of type `type_`: a contact's own (email, country, tags ...) or a typed row's
        (state/typed_values.py), read as the compiler compares it."""
        return column

    def typed_parameter(self, type_: str) -> str:
        """A placeholder for a value compared with a typed row's column of type `type_`, so that its index is used."""
        return "?"

    def field(self, document: str, name: str, type_: str) -> Fragment:
        """The value of key `name` of the JSON object text `document`, a field of type `type_`."""
        return f"json_extract({document}, ?)", (json_path(name),)

    def present(self, document: str, name: str) -> Fragment:
        """The value of key `name`, of any type: NULL when missing or JSON null."""
        return f"json_extract({document}, ?)", (json_path(name),)

    def typed(self, document: str, name: str, kinds: tuple[str, ...]) -> Fragment:
        """The value of key `name` when its JSON type is one of `kinds` (as `json_type` names them), else NULL."""
        marks = ", ".join("?" * len(kinds))
        path = json_path(name)
        return f"(CASE WHEN json_type({document}, ?) IN ({marks}) THEN json_extract({document}, ?) END)", (
            path,
            *kinds,
            path,
        )

    def number_sum(self, document: str, name: str) -> Fragment:
        """The sum over a group of the numbers at key `name`, 0 when there is none."""
        return f"coalesce(sum(json_extract({document}, ?)), 0)", (json_path(name),)

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


TEXT_ARRAY = "json_text_array"
"""PostgreSQL's function (migration 0020_text_array) from a JSON array of strings to text[]."""

_SQL_TYPES = {"number": "numeric", "integer": "numeric", "boolean": "integer", "list": "jsonb"}
"""PostgreSQL's type of a field's value by its declared type; any other (string, date, datetime) is text."""


class PostgresDialect(Dialect):
    """PostgreSQL's jsonb functions over the same text columns."""

    name = "postgresql"
    number_group_hint = ""
    typed_rows = True

    def json_values(self, array: str) -> str:
        return f"SELECT value FROM jsonb_array_elements_text(CAST({array} AS jsonb)) AS j(value)"

    def among(self, column: str, array: str) -> str:
        """`= ANY` of an array the planner sees: `json_text_array` (migration 0020) is immutable, so with the
        parameter's value at hand PostgreSQL computes it while planning and reads its statistics for each name. From
        a subquery over the JSON it assumed 100 names of average frequency: "subscribed to the list snapshot" of a
        million contacts took 2.5 s (a scan of every subscription), 0.5 s this way. A statement holding it is never
        prepared (state/postgres.py): a prepared statement's generic plan would call the function once per row."""
        return f"{column} = ANY({TEXT_ARRAY}(CAST({array} AS jsonb)))"

    def column(self, column: str, type_: str) -> str:
        if type_ == "list":
            return f"CAST({column} AS jsonb)"
        if _SQL_TYPES.get(type_, "text") == "text":
            return f'({column} COLLATE "C")'
        return column

    def typed_parameter(self, type_: str) -> str:
        return "CAST(? AS double precision)" if _SQL_TYPES.get(type_, "text") in ("numeric", "integer") else "?"

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
        if sql_type == "text":  # strings, dates: named to the planner, as lists are
            return self.among(value, "?")
        elements = "jsonb_array_elements_text(CAST(? AS jsonb)) AS j(value)"
        return f"{value} IN (SELECT CAST(value AS {sql_type}) FROM {elements})"

    def contains_text(self, value: str) -> str:
        return f"strpos({value}, ?) > 0"


SQLITE = Dialect()
POSTGRESQL = PostgresDialect()
