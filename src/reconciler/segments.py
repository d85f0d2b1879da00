"""Conditions -> parameterised SQL. Nothing from YAML ever reaches SQL text: every name and value is a parameter.

Every compiled condition is a boolean expression over the contact row aliased ``c`` that is always 0 or 1, never
NULL: a missing value makes a comparison false, and `not` flips it (two-valued logic, so ``ne`` is exactly
``not eq`` and includes contacts without the field). Dates and times compare as stored (dates ``YYYY-MM-DD``,
date-times UTC ``YYYY-MM-DDTHH:MM:SSZ``); bounds written as a date mean the start of that day in the workspace's
time zone; relative bounds (``30d``) are measured from the `now` the compiler is given.

The compiler writes the SQL of one engine, its `dialect` (`jsonsql`: SQLite by default, or PostgreSQL). Custom
fields and event properties are read where each engine reads them fastest (`Dialect.typed_rows`): on SQLite from
the contact's or event's JSON (`json_extract`, in C, faster there than a join for a condition most contacts meet,
and nothing more for an import to write); on PostgreSQL from their typed rows (`contact_values`, `event_values`:
state/typed_values.py), never parsing jsonb per contact: a condition on a field is the set of rows of that field
and kind whose value meets it, found through the index on (field, kind, value). On both, a value of another JSON
type than the field is declared with counts as missing, and field and property names are parameters, never SQL
text. A condition is a boolean on both.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from reconciler.jsonsql import SQLITE, Dialect
from reconciler.segment_operands import holds, json_types, plain, scalar_type, type_of
from reconciler.spec.conditions import (
    AllCondition,
    AnyCondition,
    EngagedCondition,
    EventCondition,
    FieldCondition,
    InSegmentCondition,
    ListCondition,
    NotCondition,
    Operators,
    PropertyCondition,
    TagCondition,
    walk,
)
from reconciler.spec.contact import BUILTIN_FIELDS
from reconciler.spec.documents import Segment
from reconciler.spec.types import DURATION_PATTERN, parse_duration
from reconciler.spec.workspace import DesiredState

COLUMNS = {name: f"c.{name}" for name in BUILTIN_FIELDS}
"""Built-in fields and the columns holding them (constants: the only identifiers that reach SQL text)."""
KINDS = {"number": "number", "integer": "number", "boolean": "boolean", "list": "array"}
KINDS |= dict.fromkeys(("string", "date", "datetime"), "string")
"""The JSON type (the `kind` of a typed row, state/typed_values.py) a value of each declared type is stored as."""
VALUE_COLUMNS = {"number": "number", "boolean": "number", "string": "text", "array": "text"}
"""The column of a typed row that holds a value of each kind."""


@dataclass(frozen=True)
class Sql:
    """A fragment of SQL and its parameters, in order."""

    text: str
    params: tuple[Any, ...] = ()
    cost: int = 0
    """0: a column or a probe into a set computed once; 1: parses a contact's JSON. Cheaper tests go first."""

    def __and__(self, other: Sql) -> Sql:
        return join_sql(" AND ", [self, other])


TRUE = Sql("TRUE")
FALSE = Sql("FALSE")


class Compiler:
    """Compiles the conditions of one workspace at one moment."""

    def __init__(
        self,
        segments: Mapping[str, Segment],
        field_types: Mapping[str, str],
        *,
        now: datetime,
        timezone: str,
        dialect: Dialect = SQLITE,
    ) -> None:
        self.dialect = dialect
        self.segments = segments
        self.types = {**BUILTIN_FIELDS, **field_types}
        self.now = now.astimezone(UTC)
        self.zone = ZoneInfo(timezone)
        self.probes = False
        """Every condition a probe of the contact ``c``'s own rows (indexes by contact) instead of a set computed
        once: for testing a few contacts (state/segment_sets.py), where building each set would cost more."""

    def probing(self) -> Compiler:
        """This compiler writing probes (`probes`)."""
        other = copy.copy(self)
        other.probes = True
        return other

    # --- segments -----------------------------------------------------------------------------------------------

    def members(self, name: str) -> Sql:
        """``SELECT c.id FROM contacts c ...``: the segment's members, top-N applied."""
        segment = self.segments[name]
        where = self.base(segment)
        order, joined = "", Sql("")
        params = where.params
        if segment.order_by is not None:
            joined, value = self.order_value(segment.order_by.field)
            direction = "DESC" if segment.order_by.direction == "desc" else "ASC"
            order = f" ORDER BY ({value.text}) IS NULL, {value.text} {direction}, c.id"
            params = joined.params + params + value.params + value.params
        if segment.limit is not None:
            order += " LIMIT ?"
            params += (segment.limit,)
        return Sql(f"SELECT c.id FROM contacts c{joined.text} WHERE {where.text}{order}", params)

    def order_value(self, field: str) -> tuple[Sql, Sql]:
        """A join for the order field and its value: a typed row's joined once (PostgreSQL), not looked up twice per
        contact as the value of a subquery; any other field's value (no join)."""
        type_ = self.types.get(field, "string")
        if not self.dialect.typed_rows or field in COLUMNS or type_ == "list":
            return Sql(""), self.value(field)
        kind = KINDS[type_]
        joined = " LEFT JOIN contact_values o ON o.contact_id = c.id AND o.field = ? AND o.kind = ?"
        return Sql(joined, (field, kind)), Sql(self.dialect.column(f"o.{VALUE_COLUMNS[kind]}", type_))

    def base(self, segment: Segment) -> Sql:
        """The segment's condition and list base, without top-N."""
        where = self.condition(segment.where) if segment.where is not None else TRUE
        if segment.lists:
            where = self.subscribed(segment.lists) & where
        return where

    def subscribed(self, lists: Sequence[str]) -> Sql:
        """The contact is subscribed to any of `lists`."""
        if not self.probes:
            return subscribed_to(lists, dialect=self.dialect)
        return Sql(
            "EXISTS (SELECT 1 FROM subscriptions s WHERE s.contact_id = c.id AND "
            f"{self.dialect.among('s.list', '?')} AND s.status = 'subscribed')",
            (json.dumps(sorted(lists)),),
            cost=1,
        )

    def membership(self, name: str) -> Sql:
        """A boolean expression: the contact ``c`` is a member of segment `name`."""
        segment = self.segments[name]
        if segment.limit is None:
            return self.base(segment)
        sets = copy.copy(self)
        sets.probes = False  # a top-N is computed once, whoever asks
        members = sets.members(name)
        return Sql(f"(c.id IN (SELECT id FROM ({members.text}) AS m))", members.params)

    # --- conditions -------------------------------------------------------------------------------------------------

    def condition(self, node: Any) -> Sql:
        if isinstance(node, AllCondition):
            return join_sql(" AND ", [self.condition(child) for child in node.all])
        if isinstance(node, AnyCondition):
            return join_sql(" OR ", [self.condition(child) for child in node.any])
        if isinstance(node, NotCondition):
            child = node.not_
            if isinstance(child, EventCondition) and child.count is None and child.sum is None:
                # "no purchase lately" usually narrows others' results: probe the index per remaining contact
                # instead of first collecting everyone who did purchase
                inner = self.event(child, correlated=True)
                return Sql(f"(NOT {inner.text})", inner.params, cost=1)
            inner = self.condition(child)
            return Sql(f"(NOT {inner.text})", inner.params, inner.cost)
        if isinstance(node, FieldCondition):
            return self.field(node)
        if isinstance(node, TagCondition):
            return Sql(self.dialect.has_string("c.tags"), (node.tag,), cost=1)
        if isinstance(node, ListCondition):
            return self.subscribed([node.list])
        if isinstance(node, InSegmentCondition):
            return self.membership(node.in_segment)
        if isinstance(node, EventCondition):
            return self.event(node, correlated=self.probes)
        if isinstance(node, EngagedCondition):
            return self.engaged(node)
        raise TypeError(f"not a segment condition: {type(node).__name__}")

    def value(self, field: str) -> Sql:
        """The SQL value of a field of the contact ``c``: a built-in's column, or a custom field's JSON value or typed
        row (NULL when the contact has none of the field's declared type)."""
        type_ = self.types.get(field, "string")
        if field in COLUMNS:
            return Sql(self.dialect.column(COLUMNS[field], type_))
        if not self.dialect.typed_rows:
            text, params = self.dialect.field("c.fields", field, type_)
            return Sql(text, params, cost=1)
        kind = KINDS[type_]
        read = (
            f"(SELECT v.{VALUE_COLUMNS[kind]} FROM contact_values v WHERE v.contact_id = c.id AND v.field = ? "
            "AND v.kind = ?)"
        )
        return Sql(self.dialect.column(read, type_), (field, kind), cost=1)

    def field(self, node: FieldCondition) -> Sql:
        type_ = self.types[node.field]
        if node.field in COLUMNS or type_ == "list" or self.probes or not self.dialect.typed_rows:
            value = self.value(node.field)
            test = self.compare(value, type_, node)
            return Sql(test.text, test.params, value.cost)
        kind = KINDS[type_]
        return self.typed(
            node,
            type_,
            "c.id IN (SELECT v.contact_id FROM contact_values v WHERE v.field = ? AND v.kind = ?{test})",
            (node.field, kind),
            self.dialect.column(f"v.{VALUE_COLUMNS[kind]}", type_),
        )

    def typed(self, node: Operators, type_: str, rows: str, params: tuple[Any, ...], column: str) -> Sql:
        """A condition on a typed value as a probe into the rows `rows` that hold it (`{test}`: where the test of
        `column` goes): the rows that meet the node's operator, found through the index on (name, kind, value). A
        negated operator (`ne`, `not_in`, `exists: false`) is the negation of the rows that meet the positive one."""
        op, operand = node.operator, node.operand
        if op == "exists":
            present = Sql(rows.format(test=""), params)
            return present if operand else Sql(f"(NOT {present.text})", present.params)
        if op in ("ne", "not_in"):
            positive = Operators.model_validate({"eq" if op == "ne" else "in": operand})
            inner = self.typed(positive, type_, rows, params, column)
            return Sql(f"(NOT {inner.text})", inner.params, inner.cost)
        test = self.bare(column, type_, node)
        return Sql(rows.format(test=f" AND {test.text}"), params + test.params)

    def bare(self, v: str, type_: str, node: Operators) -> Sql:
        """The node's (positive) operator on the typed column `v`, without the NULL handling of `compare`: a row is
        only there when the value is, and a range test stays one the index answers."""
        op, operand = node.operator, node.operand
        mark = self.dialect.typed_parameter(type_)
        if op == "eq":
            return Sql(f"{v} = {mark}", (self.operand(operand, type_),))
        if op == "in":
            values = [self.operand(o, type_) for o in operand]
            return Sql(self.dialect.one_of(v, type_), (json.dumps(values),))
        if op in ("gt", "gte", "lt", "lte", "before", "after"):
            sign = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "before": "<", "after": ">"}[op]
            bound = self.bound(operand, type_) if op in ("before", "after") else self.operand(operand, type_)
            return Sql(f"{v} {sign} {mark}", (bound,))
        if op == "within":
            assert isinstance(operand, timedelta)
            start, end = self.instant(self.now - operand, type_), self.instant(self.now, type_)
            return Sql(f"{v} >= {mark} AND {v} <= {mark}", (start, end))
        if op == "contains":
            return Sql(self.dialect.contains_text(v), (str(operand),))
        if op == "starts_with":
            return Sql(f"substr({v}, 1, ?) = ?", (len(operand), operand))
        raise ValueError(f"operator {op} does not apply to a {type_} field")

    def compare(self, value: Sql, type_: str, node: Operators) -> Sql:
        """Apply the node's one operator to `value`, a field of type `type_`."""
        op, operand = node.operator, node.operand
        v, vp = value.text, value.params
        if op == "exists":
            present = (
                Sql(f"({v} IS NOT NULL AND {self.dialect.list_length(v)} > 0)", vp + vp)
                if type_ == "list"
                else Sql(f"({v} IS NOT NULL)", vp)
            )
            return present if operand else Sql(f"(NOT {present.text})", present.params)
        if op in ("ne", "not_in"):
            positive = Operators.model_validate({"eq" if op == "ne" else "in": operand})
            inner = self.compare(value, type_, positive)
            return Sql(f"(NOT {inner.text})", inner.params)
        if type_ == "list":
            if op in ("eq", "contains"):
                return Sql(*self.dialect.list_has(v, vp, plain(operand)))
            if op == "in":
                return Sql(*self.dialect.list_has_any(v, vp, [plain(o) for o in operand]))
        if op == "eq":
            return Sql(f"coalesce({v} = ?, FALSE)", (*vp, self.operand(operand, type_)))
        if op == "in":
            values = [self.operand(o, type_) for o in operand]
            return Sql(f"coalesce({self.dialect.one_of(v, type_)}, FALSE)", (*vp, json.dumps(values)))
        if op in ("gt", "gte", "lt", "lte", "before", "after"):
            sign = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "before": "<", "after": ">"}[op]
            bound = self.bound(operand, type_) if op in ("before", "after") else self.operand(operand, type_)
            return Sql(f"coalesce({v} {sign} ?, FALSE)", (*vp, bound))
        if op == "within":
            assert isinstance(operand, timedelta)
            start, end = self.instant(self.now - operand, type_), self.instant(self.now, type_)
            return Sql(f"coalesce({v} >= ? AND {v} <= ?, FALSE)", (*vp, start, *vp, end))
        if op == "contains":
            return Sql(f"coalesce({self.dialect.contains_text(v)}, FALSE)", (*vp, str(operand)))
        if op == "starts_with":
            return Sql(f"coalesce(substr({v}, 1, ?) = ?, FALSE)", (*vp, len(operand), operand))
        raise ValueError(f"operator {op} does not apply to a {type_} field")

    def operand(self, operand: Any, type_: str) -> Any:
        """A literal as stored for a field of `type_` (dates and times normalised, booleans as 0/1)."""
        if isinstance(operand, bool):
            return int(operand)
        if type_ in ("date", "datetime") and isinstance(operand, str):
            return self.bound(operand, type_)
        return operand

    def bound(self, text: str, type_: str) -> str:
        """A before/after bound: a date, a date-time, or a duration ago, as the field stores it."""
        if re.match(DURATION_PATTERN, text):
            return self.instant(self.now - parse_duration(text), type_)
        if "T" in text or " " in text:
            moment = datetime.fromisoformat(text.replace("z", "Z"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=self.zone)
            return self.instant(moment, type_)
        day = date.fromisoformat(text)
        if type_ == "date":
            return day.isoformat()
        return self.instant(datetime.combine(day, time(0, 0), tzinfo=self.zone), type_)

    def instant(self, moment: datetime, type_: str) -> str:
        """An instant as a date field (the local day) or a date-time field (UTC) stores it."""
        if type_ == "date":
            return moment.astimezone(self.zone).date().isoformat()
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    # --- events and engagement --------------------------------------------------------------------------------------

    def event(self, node: EventCondition, *, correlated: bool = False) -> Sql:
        """Subqueries that do not depend on the contact: SQLite runs each once and probes the result per contact."""
        where = "e.type = ?"
        params: tuple[Any, ...] = (node.event,)
        if node.within is not None:
            where += " AND e.occurred_at >= ?"
            params += (self.instant(self.now - node.within, "datetime"),)
        for prop in node.properties():
            test = self.property(prop)
            where += f" AND {test.text}"
            params += test.params
        if node.count is None and node.sum is None:
            if correlated:
                return Sql(f"EXISTS (SELECT 1 FROM events e WHERE e.contact_id = c.id AND {where})", params)
            return Sql(f"c.id IN (SELECT e.contact_id FROM events e WHERE {where})", params)
        tests: list[Sql] = []
        zero_ok = True  # does a contact without any matching event meet the bounds?
        if node.count is not None:
            tests += [_bound("count(*)", (), op, limit) for op, limit in node.count.bounds().items()]
            zero_ok &= holds(0, node.count.bounds())
        joined = ""
        if node.sum is not None and self.dialect.typed_rows:  # the summed property's number, where there is one
            joined = " LEFT JOIN event_values s ON s.event_id = e.id AND s.name = ? AND s.kind = 'number'"
            params = (node.sum.property, *params)
            tests += [_bound("coalesce(sum(s.number), 0)", (), op, limit) for op, limit in node.sum.bounds().items()]
        elif node.sum is not None:
            total, path = self.dialect.number_sum("e.properties", node.sum.property)
            tests += [_bound(total, path, op, limit) for op, limit in node.sum.bounds().items()]
        if node.sum is not None:
            zero_ok &= holds(0, node.sum.bounds())
        having = join_sql(" AND ", tests)
        # "+" keeps SQLite from walking events in contact order to group them (it then reads every event's row);
        # the type-and-time index plus a sort is several times faster when a sum has to read properties
        key = f"{self.dialect.number_group_hint}e.contact_id" if node.sum is not None else "e.contact_id"
        if correlated:  # one aggregate over the contact's own events: no row when the bounds do not hold
            own = f"SELECT count(*) FROM events e{joined} WHERE e.contact_id = c.id AND {where}"
            probe = f"EXISTS ({own} HAVING {having.text})"
            return Sql(probe, params + having.params, cost=1)
        grouped = f"SELECT e.contact_id FROM events e{joined} WHERE {where} GROUP BY {key} HAVING"
        if zero_ok:
            return Sql(f"c.id NOT IN ({grouped} NOT {having.text})", params + having.params)
        return Sql(f"c.id IN ({grouped} {having.text})", params + having.params)

    def property(self, prop: PropertyCondition) -> Sql:
        """A test of one property of the event `e` (segments' event conditions, workflows' event triggers), read from
        its JSON (SQLite) or its typed row (`event_values`, PostgreSQL).

        A value of another JSON type than the condition compares counts as missing: SQLite orders any text above
        any number, so `gte: 100` would otherwise match "abc", "5" or [500]. An `in` whose operands are of several
        types matches a value equal to one of its own type."""
        if not self.dialect.typed_rows:
            if prop.operator == "exists":
                return self.compare(Sql(*self.dialect.present("e.properties", prop.name)), type_of(prop), prop)
            found = self.dialect.typed("e.properties", prop.name, json_types(prop))
            return self.compare(Sql(*found), type_of(prop), prop)
        rows = "EXISTS (SELECT 1 FROM event_values p WHERE p.event_id = e.id AND p.name = ?{test})"
        if prop.operator == "exists":
            return self.typed(prop, "string", rows, (prop.name,), "")
        if prop.operator in ("in", "not_in"):
            groups: dict[str, list[Any]] = {}
            for operand in prop.operand:
                groups.setdefault(scalar_type(operand), []).append(operand)
            if len(groups) > 1:
                parts = [
                    self.property(PropertyCondition.model_validate({"name": prop.name, "in": values}))
                    for values in groups.values()
                ]
                either = join_sql(" OR ", parts)
                return Sql(f"(NOT {either.text})", either.params) if prop.operator == "not_in" else either
        type_ = type_of(prop)
        kind = KINDS[type_]
        column = self.dialect.column(f"p.{VALUE_COLUMNS[kind]}", type_)
        return self.typed(prop, type_, rows.replace("{test}", " AND p.kind = ?{test}"), (prop.name, kind), column)

    def engaged(self, node: EngagedCondition) -> Sql:
        engaged = node.engaged
        if engaged.action == "sent":
            params: tuple[Any, ...] = ()
            where = "l.contact_id IS NOT NULL AND l.state = 'sent'"
            table, alias, at = "ledger", "l", "updated_at"
        else:
            where, params = "g.contact_id IS NOT NULL AND g.action = ?", (engaged.action,)
            table, alias, at = "engagement", "g", "at"
            if not engaged.include_machine:
                where += " AND g.machine = 0"
        if engaged.campaign:
            where += f" AND {alias}.source_kind = 'campaign' AND {alias}.source = ?"
            params += (engaged.campaign,)
        if engaged.workflow:  # a ledger row's source is the run; engagement names the workflow
            column = "workflow" if table == "ledger" else "source"
            where += f" AND {alias}.source_kind = 'workflow' AND {alias}.{column} = ?"
            params += (engaged.workflow,)
        if engaged.step:
            where += f" AND {alias}.stage = ?"
            params += (engaged.step,)
        if engaged.within is not None:
            where += f" AND {alias}.{at} >= ?"
            params += (self.instant(self.now - engaged.within, "datetime"),)
        if self.probes:
            probe = f"EXISTS (SELECT 1 FROM {table} {alias} WHERE {alias}.contact_id = c.id AND {where})"
            return Sql(probe, params, cost=1)
        return Sql(f"c.id IN (SELECT {alias}.contact_id FROM {table} {alias} WHERE {where})", params)


def subscribed_to(lists: Sequence[str], status: str = "subscribed", *, dialect: Dialect = SQLITE) -> Sql:
    """The contact's subscription to any of `lists` has `status` (one index range per list)."""
    return Sql(
        f"c.id IN (SELECT s.contact_id FROM subscriptions s WHERE {dialect.among('s.list', '?')} AND s.status = ?)",
        (json.dumps(sorted(lists)), status),
    )


def join_sql(glue: str, parts: list[Sql]) -> Sql:
    """AND / OR of parts, the cheap ones first: SQLite stops at the first part that decides."""
    if not parts:
        return TRUE if glue == " AND " else FALSE
    parts = sorted(parts, key=lambda part: part.cost)
    return Sql(
        _balanced(glue, [part.text for part in parts]),
        tuple(p for part in parts for p in part.params),
        max(part.cost for part in parts),
    )


def _balanced(glue: str, texts: list[str]) -> str:
    """`(a OR b OR ...)`, nested in halves past 32 parts: SQLite parses a chain as deep as it is long and refuses
    expressions deeper than 1,000, so thousands of alternatives would fail; halves keep it logarithmic."""
    if len(texts) <= 32:
        return "(" + glue.join(texts) + ")"
    middle = len(texts) // 2
    return "(" + _balanced(glue, texts[:middle]) + glue + _balanced(glue, texts[middle:]) + ")"


def _bound(expression: str, params: tuple[Any, ...], op: str, limit: float) -> Sql:
    sign = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
    return Sql(f"({expression} {sign} ?)", (*params, limit))


def workspace_compiler(desired: DesiredState, *, now: datetime, dialect: Dialect = SQLITE) -> Compiler:
    timezone = desired.timezone
    types = {name: field.type for name, field in desired.fields.items()}
    return Compiler(desired.segments, types, now=now, timezone=timezone, dialect=dialect)


def segment_closure(segments: Mapping[str, Segment], names: Sequence[str]) -> dict[str, Segment]:
    """The named segments and every segment they refer to through in_segment."""
    found: dict[str, Segment] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in found or name not in segments:
            continue
        found[name] = segments[name]
        if segments[name].where is not None:
            todo += [n.in_segment for _, n in walk(segments[name].where) if isinstance(n, InSegmentCondition)]
    return found


def segment_queries(desired: DesiredState, *, now: datetime, dialect: Dialect = SQLITE) -> dict[str, Sql]:
    """Every segment's members query, for the counts `plan` shows."""
    compiler = workspace_compiler(desired, now=now, dialect=dialect)
    return {name: compiler.members(name) for name in sorted(desired.segments)}
