"""Workflows: a trigger puts a contact on a run that walks a tree of steps.

Steps are mappings discriminated by their action key (``send``, ``wait``, ``wait_until``, ``if``, ``exit``, and
the list/tag/field actions). A step's optional ``id`` is what keeps running contacts in place when the workflow is
edited, and what ``{opened: <id>}`` conditions refer to.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, StrictBool, StrictFloat, StrictInt, StrictStr, Tag

from reconciler.spec.conditions import PropertyCondition, PropertyConditions, StepCondition, key_discriminator
from reconciler.spec.documents import CampaignTracking, Document
from reconciler.spec.types import ClockTime, Duration, Identifier, Model, Slug, StepId, TemplateRef


class SubscribedTrigger(Model):
    """Start when a contact's subscription to a list is confirmed."""

    subscribed: Slug
    """The list."""


class EventTrigger(Model):
    """Start when an event arrives through the API."""

    event: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    """The event type, e.g. cart_abandoned."""
    key: Identifier | None = None
    """A property of the event that keys the run (e.g. cart_id: one run per cart; re_entry counts per key)."""
    property: PropertyConditions | None = None
    """Only events whose properties match (all of them, when a list), as in a segment's event condition."""

    def properties(self) -> list[PropertyCondition]:
        if self.property is None:
            return []
        return self.property if isinstance(self.property, list) else [self.property]


class DateFieldTrigger(Model):
    """Start every year on the day in a date field (birthdays, anniversaries)."""

    date_field: Identifier
    """A Field of type date."""
    at: ClockTime = time(9, 0)
    """The time of day, in the contact's time zone (the workspace's when the contact has none)."""
    before: Duration | None = None
    """Start this long before the date (1w: a week before a birthday); whole days."""
    after: Duration | None = None
    """Start this long after the date (1d: the day after an anniversary); whole days."""


class SegmentEnteredTrigger(Model):
    """Start when a contact becomes a member of a segment."""

    segment_entered: Slug
    """The segment."""
    backfill: StrictBool = False
    """Start runs for everyone already in the segment when the workflow is first applied (normally only those who
    enter it later)."""


TRIGGER_KEYS = ("subscribed", "event", "date_field", "segment_entered")
Trigger = Annotated[
    Union[  # noqa: UP007
        Annotated[SubscribedTrigger, Tag("<subscribed>")],
        Annotated[EventTrigger, Tag("<event>")],
        Annotated[DateFieldTrigger, Tag("<date_field>")],
        Annotated[SegmentEnteredTrigger, Tag("<segment_entered>")],
    ],
    Discriminator(
        key_discriminator(TRIGGER_KEYS),
        custom_error_type="trigger",
        custom_error_message="a trigger needs one of: " + ", ".join(TRIGGER_KEYS),
    ),
]


class StepBase(Model):
    """What every step may have."""

    id: StepId | None = None
    """Stable id: running contacts stay on this step across edits; conditions refer to send steps by it."""


class SendStep(StepBase):
    """Send a message."""

    send: TemplateRef
    """The template."""
    subject: str = Field(min_length=1)
    """The subject line (Jinja)."""
    preheader: str = ""
    """The preview text."""
    sender: Slug | None = None
    """A key of Settings `senders`."""
    tracking: CampaignTracking = CampaignTracking()
    """Tracking switches for this message."""


class WaitStep(StepBase):
    """Pause the run."""

    wait: Duration
    """How long."""


class WaitUntilStep(StepBase):
    """Pause until a condition holds, or until the timeout."""

    wait_until: StepCondition
    """The condition, e.g. {opened: tips}."""
    timeout: Duration
    """Move on after this long even if the condition never held."""


class IfStep(StepBase):
    """Branch on a condition."""

    if_: StepCondition = Field(alias="if")
    """The condition."""
    then: list[Step] = Field(min_length=1)
    """Steps when it holds."""
    else_: list[Step] = Field(default=[], alias="else")
    """Steps when it does not."""


class AddToListStep(StepBase):
    """Subscribe the contact to a list (with the workflow as the consent source)."""

    add_to_list: Slug
    """The list."""


class RemoveFromListStep(StepBase):
    """Unsubscribe the contact from a list."""

    remove_from_list: Slug
    """The list."""


class MoveBetweenLists(Model):
    """From one list to another."""

    from_: Slug = Field(alias="from")
    """The list to leave."""
    to: Slug
    """The list to join."""


class MoveToListStep(StepBase):
    """Leave one list and join another."""

    move_to_list: MoveBetweenLists
    """The lists."""


class TagStep(StepBase):
    """Add a tag."""

    tag: str = Field(min_length=1)
    """The tag."""


class UntagStep(StepBase):
    """Remove a tag."""

    untag: str = Field(min_length=1)
    """The tag."""


class FieldAssignment(Model):
    """A value for a custom field."""

    field: Identifier
    """The Field."""
    value: StrictBool | StrictInt | StrictFloat | StrictStr | None
    """The value (null clears it)."""


class SetFieldStep(StepBase):
    """Set a custom field."""

    set_field: FieldAssignment
    """Which field, and its value."""


class ExitStep(StepBase):
    """End the run here (e.g. in a branch: `if: {tag: customer}` → `exit`)."""

    exit: Literal[True]
    """true: the run ends at this step, as exited."""
    reason: str | None = Field(default=None, min_length=1)
    """Why, as the run's history and `status` say it ("exited at stop: already a customer")."""


STEP_KEYS = (
    "send",
    "wait_until",
    "wait",
    "if",
    "exit",
    "add_to_list",
    "remove_from_list",
    "move_to_list",
    "tag",
    "untag",
    "set_field",
)

Step = Annotated[
    Union[  # noqa: UP007
        Annotated[SendStep, Tag("<send>")],
        Annotated[WaitStep, Tag("<wait>")],
        Annotated[WaitUntilStep, Tag("<wait_until>")],
        Annotated[IfStep, Tag("<if>")],
        Annotated[ExitStep, Tag("<exit>")],
        Annotated[AddToListStep, Tag("<add_to_list>")],
        Annotated[RemoveFromListStep, Tag("<remove_from_list>")],
        Annotated[MoveToListStep, Tag("<move_to_list>")],
        Annotated[TagStep, Tag("<tag>")],
        Annotated[UntagStep, Tag("<untag>")],
        Annotated[SetFieldStep, Tag("<set_field>")],
    ],
    Discriminator(
        key_discriminator(STEP_KEYS),
        custom_error_type="step",
        custom_error_message="a step needs one of: " + ", ".join(STEP_KEYS),
    ),
]

IfStep.model_rebuild()


class ExitWhen(Model):
    """End a contact's run early when this happens."""

    event: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    """An event that ends the run, e.g. purchase."""


class ReEntryAfter(Model):
    """A contact may start again once this long has passed since their last run began."""

    after: Duration
    """How long."""


class Workflow(Document):
    """Automation: a trigger, then a tree of steps each running contact walks."""

    kind: Literal["Workflow"]
    """Workflow."""
    trigger: Trigger
    """What starts a run: {subscribed: LIST}, {event: TYPE}, {date_field: FIELD, at: "09:00"} or {segment_entered: SEGMENT}."""  # noqa: E501
    status: Literal["active", "paused"] = "active"
    """paused stops new runs and holds running ones where they are."""
    category: Literal["marketing", "transactional"] = "marketing"
    """transactional workflows ignore marketing unsubscribes, quiet hours and frequency caps."""
    re_entry: Literal["never", "always"] | ReEntryAfter = "never"
    """Whether a contact can run the workflow again: never, always, or {after: 30d}."""
    exit_when: ExitWhen | None = None
    """End runs early when this event arrives."""
    list_: Slug | None = Field(default=None, alias="list")
    """The list a run's messages are sent for (its unsubscribe link, List-Id, and the subscription a marketing
    message needs): the trigger's list for `subscribed`, required here for other triggers of marketing workflows."""
    sender: Slug | None = None
    """A key of Settings `senders` (default: Settings defaults)."""
    transport: Slug | None = None
    """A key of Settings `transports` (default: Settings defaults)."""
    steps: list[Step] = Field(min_length=1)
    """The steps, in order."""


StepLoc = tuple[str | int, ...]


def step_key(step: Any, loc: StepLoc) -> str:
    """How a run remembers where it is: the step's id, or its position (`#3`, `#4.then.0`) for a step without one
    (such a run loses its place when steps before it are added or removed)."""
    return step.id if step.id else "#" + ".".join(str(part) for part in loc[1:])


@dataclass(frozen=True)
class StepNode:
    """A step with the keys of the steps that follow it ('' after the last one: the run is complete)."""

    step: Any
    next: str
    then: str = ""
    """For an `if`: the first step of `then` (or `next` when the branch is empty)."""
    else_: str = ""


def step_graph(steps: list[Any], loc: StepLoc = ("steps",), after: str = "") -> dict[str, StepNode]:
    """Every step by its key, with where a run goes from it: the map a run walks."""
    keys = [step_key(step, (*loc, index)) for index, step in enumerate(steps)]
    graph: dict[str, StepNode] = {}
    for index, step in enumerate(steps):
        follow = keys[index + 1] if index + 1 < len(keys) else after
        if isinstance(step, IfStep):
            here = (*loc, index)
            then = step_graph(step.then, (*here, "then"), follow)
            other = step_graph(step.else_, (*here, "else"), follow)
            graph[keys[index]] = StepNode(
                step, follow, _first(step.then, (*here, "then"), follow), _first(step.else_, (*here, "else"), follow)
            )
            graph.update(then)
            graph.update(other)
        else:
            graph[keys[index]] = StepNode(step, follow)
    return graph


def _first(steps: list[Any], loc: StepLoc, otherwise: str) -> str:
    return step_key(steps[0], (*loc, 0)) if steps else otherwise


def first_step(workflow: Workflow) -> str:
    return step_key(workflow.steps[0], ("steps", 0))


def walk_steps(steps: list[Any], loc: StepLoc = ("steps",)) -> list[tuple[StepLoc, Any]]:
    """Every step of a tree with its location, in the order a run meets them (then before else)."""
    found: list[tuple[StepLoc, Any]] = []
    for index, step in enumerate(steps):
        here = (*loc, index)
        found.append((here, step))
        if isinstance(step, IfStep):
            found.extend(walk_steps(step.then, (*here, "then")))
            found.extend(walk_steps(step.else_, (*here, "else")))
    return found
