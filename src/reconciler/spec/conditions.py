"""The segment condition tree and the workflow conditions built on it.

A condition is a small mapping whose *subject key* says what it tests: ``field``, ``tag``, ``list``,
``in_segment``, ``event``, ``engaged``, or the combinators ``all`` / ``any`` / ``not``. The union is
discriminated by that key, so a mistake yields one precise error instead of one per possible branch.
Conditions compile to parameterised SQL (segments module); nothing here is ever pasted into SQL text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from datetime import date, datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Discriminator, Field, StrictBool, Tag, WithJsonSchema, field_validator, model_validator

from reconciler.spec.types import (
    DURATION_PATTERN,
    Duration,
    Model,
    PropertyName,
    Scalar,
    Slug,
    StepId,
    parse_duration,
)

OPERATORS = (
    "eq",
    "ne",
    "gt",
    "gte",
    "lt",
    "lte",
    "in",
    "not_in",
    "contains",
    "starts_with",
    "exists",
    "before",
    "after",
    "within",
)


def _check_date_bound(value: str) -> str:
    """``before``/``after`` take an ISO date or date-time, or a duration meaning "that long ago"."""
    if re.match(DURATION_PATTERN, value):
        parse_duration(value)
        return value
    try:
        if "T" in value or " " in value:
            datetime.fromisoformat(value)
        else:
            date.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a date (2026-01-31), a date-time (2026-01-31T09:00:00+01:00) "
            "nor a duration ago (30d)"
        ) from None
    return value


DateBound = Annotated[
    str,
    WithJsonSchema({"type": "string", "examples": ["2026-01-31", "30d"]}),
]


class Operators(Model):
    """Exactly one comparison, applied to a field or an event property."""

    eq: Scalar | None = None
    """Equal to this value."""
    ne: Scalar | None = None
    """Not equal to this value (a missing value counts as not equal)."""
    gt: int | float | str | None = None
    """Greater than (numbers, or dates written as text)."""
    gte: int | float | str | None = None
    """Greater than or equal to."""
    lt: int | float | str | None = None
    """Less than."""
    lte: int | float | str | None = None
    """Less than or equal to."""
    in_: list[Scalar] | None = Field(default=None, alias="in", min_length=1)
    """One of these values."""
    not_in: list[Scalar] | None = Field(default=None, min_length=1)
    """None of these values."""
    contains: Scalar | None = None
    """Text containing this text, or a list field containing this item."""
    starts_with: str | None = None
    """Text starting with this text."""
    exists: StrictBool | None = None
    """true: the value is set; false: it is missing."""
    before: DateBound | None = None
    """A date earlier than this date, or than this long ago (30d)."""
    after: DateBound | None = None
    """A date later than this date, or than this long ago (30d)."""
    within: Duration | None = None
    """A date within this long before now (30d)."""

    @field_validator("before", "after")
    @classmethod
    def _date_bound(cls, value: str | None) -> str | None:
        return None if value is None else _check_date_bound(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> Operators:
        chosen = self.operators()
        if len(chosen) != 1:
            found = ", ".join(chosen) if chosen else "none"
            raise ValueError(
                f"needs exactly one operator, found {found} (one of: {', '.join(OPERATORS)}; "
                "e.g. {field: country, in: [PL, DE]})"
            )
        return self

    def operators(self) -> list[str]:
        """The operators that are set, by their spec spelling."""
        return [op for op in OPERATORS if getattr(self, "in_" if op == "in" else op) is not None]

    @property
    def operator(self) -> str:
        return self.operators()[0]

    @property
    def operand(self) -> Any:
        return getattr(self, "in_" if self.operator == "in" else self.operator)


class FieldCondition(Operators):
    """Compare a built-in or custom field of the contact: ``{field: spend_2020, gt: 100}``."""

    field: str
    """A built-in field (email, first_name, last_name, timezone, locale, country, tags, created_at) or a Field."""


class TagCondition(Model):
    """The contact has this tag: ``{tag: vip}``."""

    tag: str = Field(min_length=1)
    """The tag to look for."""


class ListCondition(Model):
    """The contact is a subscribed member of this list: ``{list: offers}``."""

    list: Slug
    """The list's name."""


class InSegmentCondition(Model):
    """The contact is a member of another segment: ``{in_segment: top-spenders}``."""

    in_segment: Slug
    """The segment's name."""


class Comparison(Model):
    """Bounds for a number; several bounds all apply (``{gte: 2, lt: 5}``)."""

    eq: float | None = None
    """Equal to."""
    ne: float | None = None
    """Not equal to."""
    gt: float | None = None
    """Greater than."""
    gte: float | None = None
    """Greater than or equal to."""
    lt: float | None = None
    """Less than."""
    lte: float | None = None
    """Less than or equal to."""

    @model_validator(mode="after")
    def _at_least_one(self) -> Comparison:
        if not self.bounds():
            raise ValueError("needs at least one bound (eq, ne, gt, gte, lt or lte), e.g. {gte: 2}")
        return self

    def bounds(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None and k in type(self).model_fields}


class SumCondition(Comparison):
    """The sum of a numeric event property: ``{property: revenue, gt: 100}``."""

    property: PropertyName
    """The event property to add up, e.g. revenue."""

    def bounds(self) -> dict[str, float]:
        return {k: v for k, v in super().bounds().items() if k != "property"}


class PropertyCondition(Operators):
    """Filter events by one of their properties: ``{name: sku, eq: ESP-250}``."""

    name: PropertyName
    """The event property."""


def _one_or_many(value: Any) -> str:
    return "<many>" if isinstance(value, list | tuple) else "<one>"


PropertyConditions = Annotated[
    Union[  # noqa: UP007 - Tag annotations need the Union spelling
        Annotated[PropertyCondition, Tag("<one>")],
        Annotated[list[PropertyCondition], Tag("<many>")],
    ],
    Discriminator(_one_or_many),
]
"""One property condition, or a list of them: errors speak about the form written."""


class EventCondition(Model):
    """The contact did something: ``{event: purchase, within: 90d, count: {gte: 2}}``.

    Without ``count`` or ``sum`` it means "at least once".
    """

    event: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    """The event type, as sent to the events API (e.g. purchase, cart_abandoned)."""
    within: Duration | None = None
    """Only events in this period before now."""
    count: Comparison | None = None
    """How many matching events."""
    sum: SumCondition | None = None
    """The total of a numeric property over the matching events."""
    property: PropertyConditions | None = None
    """Only events whose properties match (all of them, when a list)."""

    def properties(self) -> list[PropertyCondition]:
        if self.property is None:
            return []
        return self.property if isinstance(self.property, list) else [self.property]


EngagementAction = Literal["sent", "opened", "clicked", "bounced", "unsubscribed"]


class Engagement(Model):
    """What a contact did with our messages; without campaign or workflow, any message counts."""

    action: EngagementAction
    """sent, opened, clicked, bounced or unsubscribed."""
    campaign: Slug | None = None
    """Only messages of this campaign."""
    workflow: Slug | None = None
    """Only messages of this workflow."""
    step: StepId | None = None
    """Only this send step of the workflow."""
    within: Duration | None = None
    """Only in this period before now."""
    include_machine: StrictBool = False
    """Count opens and clicks by privacy proxies and link scanners too (normally only human ones count)."""

    @model_validator(mode="after")
    def _one_source(self) -> Engagement:
        if self.campaign and self.workflow:
            raise ValueError("give campaign or workflow, not both")
        if self.step and not self.workflow:
            raise ValueError("step needs workflow")
        return self


class EngagedCondition(Model):
    """Engagement with a campaign, a workflow or any message.

    ``{engaged: {campaign: spring-sale, action: clicked}}``
    """

    engaged: Engagement
    """What was done, with which messages."""


class AllCondition(Model):
    """Every condition holds."""

    all: list[Condition] = Field(min_length=1)
    """The conditions."""


class AnyCondition(Model):
    """At least one condition holds."""

    any: list[Condition] = Field(min_length=1)
    """The conditions."""


class NotCondition(Model):
    """The condition does not hold."""

    not_: Condition = Field(alias="not")
    """The condition to negate."""


def key_discriminator(keys: tuple[str, ...]) -> Callable[[Any], str | None]:
    """Pick a union member by which subject key a mapping has: errors then speak about one member only."""

    def pick(value: Any) -> str | None:
        if isinstance(value, dict):
            present: Iterable[str] = value.keys()
        elif isinstance(value, BaseModel):  # a model being serialised: its own keys tell which member it is
            present = {info.alias or name for name, info in type(value).model_fields.items()}
        else:
            return None  # a list or a scalar where a mapping belongs: the union's own error explains it
        return next((f"<{key}>" for key in keys if key in present), None)

    return pick


CONDITION_KEYS = ("all", "any", "not", "field", "tag", "list", "in_segment", "event", "engaged")

Condition = Annotated[
    Union[  # noqa: UP007 - Tag annotations need the Union spelling
        Annotated[AllCondition, Tag("<all>")],
        Annotated[AnyCondition, Tag("<any>")],
        Annotated[NotCondition, Tag("<not>")],
        Annotated[FieldCondition, Tag("<field>")],
        Annotated[TagCondition, Tag("<tag>")],
        Annotated[ListCondition, Tag("<list>")],
        Annotated[InSegmentCondition, Tag("<in_segment>")],
        Annotated[EventCondition, Tag("<event>")],
        Annotated[EngagedCondition, Tag("<engaged>")],
    ],
    Discriminator(
        key_discriminator(CONDITION_KEYS),
        custom_error_type="condition",
        custom_error_message="a condition needs one of: " + ", ".join(CONDITION_KEYS),
    ),
]

for _model in (AllCondition, AnyCondition, NotCondition):
    _model.model_rebuild()


class StepOpened(Model):
    """The contact opened the message of an earlier send step: ``{opened: tips}``."""

    opened: StepId
    """The id of an earlier send step."""


class StepClicked(Model):
    """The contact clicked a link in the message of an earlier send step: ``{clicked: tips}``."""

    clicked: StepId
    """The id of an earlier send step."""


STEP_CONDITION_KEYS = ("opened", "clicked", *CONDITION_KEYS)


def _step_condition_kind(value: Any) -> str | None:
    chosen = key_discriminator(STEP_CONDITION_KEYS)(value)
    return chosen if chosen in (None, "<opened>", "<clicked>") else "<condition>"


StepCondition = Annotated[
    Union[  # noqa: UP007
        Annotated[StepOpened, Tag("<opened>")],
        Annotated[StepClicked, Tag("<clicked>")],
        Annotated[Condition, Tag("<condition>")],
    ],
    Discriminator(
        _step_condition_kind,
        custom_error_type="condition",
        custom_error_message="a workflow condition needs one of: " + ", ".join(STEP_CONDITION_KEYS),
    ),
]
"""A condition inside a workflow: a segment condition, or engagement with an earlier step."""


Loc = tuple[str | int, ...]


def walk(condition: Any, loc: Loc = ()) -> list[tuple[Loc, Any]]:
    """Every condition in a tree with its location under the tree's root, parents first."""
    found: list[tuple[Loc, Any]] = [(loc, condition)]
    if isinstance(condition, AllCondition):
        children: list[tuple[Loc, Any]] = [((*loc, "all", i), c) for i, c in enumerate(condition.all)]
    elif isinstance(condition, AnyCondition):
        children = [((*loc, "any", i), c) for i, c in enumerate(condition.any)]
    elif isinstance(condition, NotCondition):
        children = [((*loc, "not"), condition.not_)]
    else:
        children = []
    for child_loc, child in children:
        found.extend(walk(child, child_loc))
    return found
