"""The pieces of state SQL that cannot be written the same way on both engines, each as a function of the
database that gives the text for its engine.

The state code's SQL is SQLite's (`dialect.to_postgres` translates what is only a matter of spelling). Where the
engines differ in what a function does (SQLite's JSON functions against PostgreSQL's jsonb ones), a statement
asks here for the fragment instead of branching on the engine itself. Each function takes SQL expressions (a
placeholder such as `?` or `:emails`, or a column), never values: values stay parameters. The SQLite text is
exactly what the statements said before they were ported, so SQLite's behaviour and plans do not change.

(The `noqa: S608` below: the text put into these fragments is the caller's own SQL, an expression, never a value.)
"""

from __future__ import annotations

from reconciler.jsonsql import POSTGRESQL, SQLITE, Dialect, json_path
from reconciler.state.postgres import PostgresDatabase, StateDatabase


def is_postgres(db: StateDatabase) -> bool:
    return isinstance(db, PostgresDatabase)


def dialect(db: StateDatabase) -> Dialect:
    """The engine's JSON functions, as the segment compiler writes them (`jsonsql`)."""
    return POSTGRESQL if is_postgres(db) else SQLITE


def same(db: StateDatabase) -> str:
    """The comparison operator for which NULL equals NULL: SQLite's `IS` (PostgreSQL's `IS NOT DISTINCT FROM`,
    which SQLite reads only from 3.39 on, later than some systems' SQLite)."""
    return "IS NOT DISTINCT FROM" if is_postgres(db) else "IS"


def differs(db: StateDatabase) -> str:
    """Its negation: SQLite's `IS NOT`, PostgreSQL's `IS DISTINCT FROM` (row values too)."""
    return "IS DISTINCT FROM" if is_postgres(db) else "IS NOT"


def indexed_by(db: StateDatabase, index: str) -> str:
    """SQLite's ` INDEXED BY index` after a table (a plan tuned by hand), nothing on PostgreSQL, whose planner
    has no such hint and weighs the indexes by their statistics."""
    return "" if is_postgres(db) else f" INDEXED BY {index}"


def unindexed(db: StateDatabase, column: str) -> str:
    """The column `column` as SQLite's `+column`, which keeps SQLite from choosing an index on it; as it is on
    PostgreSQL (which has no unary plus for text, and no need of the hint)."""
    return column if is_postgres(db) else f"+{column}"


def cross_join(db: StateDatabase) -> str:
    """The join that makes SQLite read its left table first (`CROSS JOIN … ON`); a plain `JOIN` on PostgreSQL,
    whose CROSS JOIN takes no ON and which chooses the order itself."""
    return "JOIN" if is_postgres(db) else "CROSS JOIN"


def count_if(db: StateDatabase, condition: str) -> str:
    """An aggregate: the rows of the group for which `condition` is true. SQLite's `sum(condition)` (NULL for an
    empty group); PostgreSQL's `count(*) FILTER (…)`, an integer (its sum of a number is a Decimal, and a boolean
    it does not sum at all)."""
    if is_postgres(db):
        return f"count(*) FILTER (WHERE {condition})"
    return f"sum({condition})"


def by_bytes_at(db: StateDatabase, position: str, expression: str) -> str:
    """An ORDER BY term that sorts text byte by byte as SQLite does: SQLite's column `position` (its text is the
    column's `expression`); on PostgreSQL the expression ``COLLATE "C"`` (a position cannot take a collation, and
    the database's own collation may sort 'B' after 'a')."""
    return f'{expression} COLLATE "C"' if is_postgres(db) else position


def seconds_after(db: StateDatabase, instant: str, modifier: str) -> str:
    """The ISO UTC text (`YYYY-MM-DDTHH:MM:SSZ`) of the ISO instant text `instant` moved by `modifier`, an SQL
    expression whose value is SQLite's time modifier `+N seconds` (PostgreSQL reads the same text as an
    interval)."""
    if is_postgres(db):
        moved = f"(CAST({instant} AS timestamptz) AT TIME ZONE 'UTC') + CAST({modifier} AS interval)"
        return f"""to_char({moved}, 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""
    return f"strftime('%Y-%m-%dT%H:%M:%SZ', {instant}, {modifier})"


def json_values(db: StateDatabase, array: str) -> str:
    """A subquery of one column, `value`: the elements of the JSON array text `array` (strings as text), for
    ``x IN (…)`` and joins."""
    return dialect(db).json_values(array)


def tag_union(db: StateDatabase, first: str, second: str) -> str:
    """A scalar subquery: the JSON array text (compact, sorted by byte order, as SQLite writes it) of the distinct
    strings of the two JSON array texts `first` and `second`."""
    if is_postgres(db):
        union = (
            f"SELECT jsonb_array_elements_text(CAST({first} AS jsonb)) "
            f"UNION SELECT jsonb_array_elements_text(CAST({second} AS jsonb))"
        )
        joined = """string_agg(to_json(value)::text, ',' ORDER BY value COLLATE "C")"""
        return f"(SELECT coalesce('[' || {joined} || ']', '[]') FROM ({union}) AS u(value))"  # noqa: S608
    union = f"SELECT value FROM json_each({first}) UNION SELECT value FROM json_each({second})"  # noqa: S608
    return f"(SELECT json_group_array(value) FROM ({union}))"  # noqa: S608


def json_merge(db: StateDatabase, target: str, patch: str) -> str:
    """The JSON object text `target` with the members of the object text `patch` set over its own (SQLite's
    `json_patch`). On PostgreSQL the merge is one level deep (jsonb's `||`): the same for the patches the state
    writes (an import's fields, whose values are never null nor objects)."""
    if is_postgres(db):
        return f"(CAST({target} AS jsonb) || CAST({patch} AS jsonb))::text"
    return f"json_patch({target}, {patch})"


def unit_separated(db: StateDatabase, expression: str) -> str:
    """An aggregate: the non-null values of `expression` in a group joined by the unit separator (character 31),
    in no particular order."""
    if is_postgres(db):
        return f"string_agg({expression}, chr(31))"
    return f"group_concat({expression}, char(31))"


def json_key(db: StateDatabase, document: str, key: str) -> str:
    """The scalar at the constant `key` (one of our own names, never YAML's; `goal.event` for a nested one) of the
    JSON object text `document`, as SQLite's `json_extract` gives it (text for a string)."""
    names = key.split(".")
    if not all(name.isidentifier() for name in names):
        raise ValueError(f"not a constant key: {key!r}")
    if is_postgres(db):
        return f"(CAST({document} AS jsonb) #>> '{{{','.join(names)}}}')"
    return f"json_extract({document}, '$.{key}')"


_SORTED_ARRAY = """coalesce('[' || string_agg(to_json(value)::text, ',' ORDER BY value COLLATE "C") || ']', '[]')"""
"""PostgreSQL: the strings `value` of a group as a compact, sorted JSON array text, as SQLite writes one."""


def tag_added(db: StateDatabase, tags: str) -> str:
    """A scalar subquery: the JSON array text `tags` with the string `?` added (sorted, once)."""
    if is_postgres(db):
        union = f"SELECT jsonb_array_elements_text(CAST({tags} AS jsonb)) UNION SELECT CAST(? AS text)"
        return f"(SELECT {_SORTED_ARRAY} FROM ({union}) AS u(value))"  # noqa: S608
    return f"(SELECT json_group_array(value) FROM (SELECT value FROM json_each({tags}) UNION SELECT ? ORDER BY 1))"  # noqa: S608


def tag_removed(db: StateDatabase, tags: str) -> str:
    """A scalar subquery: the JSON array text `tags` without the string `?`."""
    if is_postgres(db):
        elements = f"jsonb_array_elements_text(CAST({tags} AS jsonb)) AS u(value)"
        return f"(SELECT {_SORTED_ARRAY} FROM {elements} WHERE value <> ?)"  # noqa: S608
    return f"(SELECT json_group_array(value) FROM (SELECT value FROM json_each({tags}) WHERE value != ? ORDER BY 1))"  # noqa: S608


def field_key(db: StateDatabase, name: str) -> str:
    """The parameter that names the key `name` for `key_set` and `key_removed`: SQLite's quoted JSON path, or the
    key itself."""
    return name if is_postgres(db) else json_path(name)


def key_set(db: StateDatabase, document: str) -> str:
    """The JSON object text `document` with the key named by `?` (`field_key`) set to the JSON text `?`."""
    if is_postgres(db):
        return f"jsonb_set(CAST({document} AS jsonb), ARRAY[CAST(? AS text)], CAST(? AS jsonb))::text"
    return f"json_set({document}, ?, json(?))"


def key_removed(db: StateDatabase, document: str) -> str:
    """The JSON object text `document` without the key named by `?` (`field_key`)."""
    if is_postgres(db):
        return f"(CAST({document} AS jsonb) - CAST(? AS text))::text"
    return f"json_remove({document}, ?)"


def json_integers(db: StateDatabase, array: str) -> str:
    """A subquery of one column, `value`: the integers of the JSON array text `array` (ids), for ``id IN (…)``
    (PostgreSQL compares no bigint with the text `json_values` gives)."""
    if is_postgres(db):
        return f"SELECT CAST(value AS bigint) FROM jsonb_array_elements_text(CAST({array} AS jsonb)) AS j(value)"  # noqa: S608
    return f"SELECT value FROM json_each({array})"  # noqa: S608


def by_bytes(db: StateDatabase, expression: str) -> str:
    """The text `expression` compared (in an ORDER BY) byte by byte, as SQLite compares text: PostgreSQL's own
    collation is the database's, which may be a language's (where 'B' comes before 'a' only by chance)."""
    return f'{expression} COLLATE "C"' if is_postgres(db) else expression


def key_string(db: StateDatabase, document: str) -> str:
    """The value at the key named by `?` (`field_key`) of the JSON object text `document`, as text when it is a
    string (SQLite's `json_extract`; read it where `key_is_string` holds)."""
    if is_postgres(db):
        return f"(CAST({document} AS jsonb) ->> ?)"
    return f"json_extract({document}, ?)"


def key_is_string(db: StateDatabase, document: str) -> str:
    """A condition: the value at the key named by `?` (`field_key`) of the JSON object text `document` is a
    string."""
    if is_postgres(db):
        return f"jsonb_typeof(CAST({document} AS jsonb) -> ?) = 'string'"
    return f"json_type({document}, ?) = 'text'"
