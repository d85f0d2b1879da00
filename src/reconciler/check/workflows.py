"""The checks of a workflow: its references, its steps, and loops between workflows."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from reconciler.check.checker import DATE_TYPES, Checker
from reconciler.check.references import check_condition, field_types, fits_type, message_templates
from reconciler.spec import DesiredState, Workflow
from reconciler.spec.journey import WorkflowTest
from reconciler.spec.types import format_duration
from reconciler.spec.workflow import (
    AddToListStep,
    DateFieldTrigger,
    ExitStep,
    IfStep,
    MoveToListStep,
    RemoveFromListStep,
    SegmentEnteredTrigger,
    SendStep,
    SetFieldStep,
    StepLoc,
    SubscribedTrigger,
    WaitUntilStep,
    step_key,
    walk_steps,
)
from reconciler.words import a, count


def check_workflow(c: Checker, workflow: Workflow) -> None:
    desired, name, kind = c.desired, workflow.name, "Workflow"
    settings = desired.settings
    assert settings is not None
    trigger = workflow.trigger
    if isinstance(trigger, SubscribedTrigger):
        if c.reference(kind, name, ("trigger", "subscribed"), "list", trigger.subscribed, desired.lists):
            _check_transactional_list(c, workflow, ("trigger", "subscribed"), trigger.subscribed)
    elif isinstance(trigger, SegmentEnteredTrigger):
        c.reference(kind, name, ("trigger", "segment_entered"), "segment", trigger.segment_entered, desired.segments)
    elif isinstance(trigger, DateFieldTrigger):
        types = field_types(desired)
        if (
            c.reference(kind, name, ("trigger", "date_field"), "field", trigger.date_field, types)
            and types[trigger.date_field] not in DATE_TYPES
        ):
            c.report(
                kind,
                name,
                ("trigger", "date_field"),
                f"{trigger.date_field} is not a date field",
                "a date_field trigger needs a Field of type date or datetime",
            )
        _check_date_shift(c, name, trigger)
    if workflow.list_:
        if c.reference(kind, name, ("list",), "list", workflow.list_, desired.lists):
            _check_transactional_list(c, workflow, ("list",), workflow.list_)
    elif workflow.category == "marketing" and not isinstance(trigger, SubscribedTrigger):
        key = next(iter(trigger.model_dump(exclude_none=True)))
        c.report(
            kind,
            name,
            ("trigger",),
            f"a marketing workflow triggered by {key} needs `list:`, the list its messages are sent for",
            "add `list: LIST` (its unsubscribe link and List-Id; a contact who left it gets nothing more), or "
            "`category: transactional` for messages a person needs whatever they chose",
        )
    if workflow.sender:
        c.reference(kind, name, ("sender",), "sender", workflow.sender, settings.senders)
    if workflow.transport:
        c.reference(kind, name, ("transport",), "transport", workflow.transport, settings.transports)
    _check_steps(c, workflow)
    _check_unreachable(c, name, workflow.steps, ("steps",))


def _check_steps(c: Checker, workflow: Workflow) -> None:
    """Each step's references and values, in the order runs meet them (a condition may name earlier sends)."""
    desired, name, kind = c.desired, workflow.name, "Workflow"
    settings = desired.settings
    assert settings is not None
    earlier_sends: dict[str, int] = {}
    seen_ids: set[str] = set()
    for loc, step in walk_steps(workflow.steps):
        if step.id is None and len(workflow.steps) > 1:
            c.report(
                kind,
                name,
                loc,
                "a step without an id",
                "give every step an `id:`: runs remember their step by it, and a step known only by its place "
                "is another step once one is inserted before it (its mail would go again)",
                severity="warning",
            )
        if step.id is not None:
            if step.id in seen_ids:
                c.report(kind, name, (*loc, "id"), f"duplicate step id {step.id!r}", "give each step its own id")
            seen_ids.add(step.id)
        if isinstance(step, SendStep):
            c.reference(kind, name, (*loc, "send"), "template", step.send, message_templates(desired))
            if step.sender:
                c.reference(kind, name, (*loc, "sender"), "sender", step.sender, settings.senders)
        elif isinstance(step, WaitUntilStep):
            check_condition(c, kind, name, (*loc, "wait_until"), step.wait_until, earlier_sends)
        elif isinstance(step, IfStep):
            check_condition(c, kind, name, (*loc, "if"), step.if_, earlier_sends)
        elif isinstance(step, AddToListStep | RemoveFromListStep):
            key = "add_to_list" if isinstance(step, AddToListStep) else "remove_from_list"
            if c.reference(kind, name, (*loc, key), "list", getattr(step, key), desired.lists) and key == "add_to_list":
                _check_joinable(c, name, (*loc, key), getattr(step, key))
        elif isinstance(step, MoveToListStep):
            c.reference(kind, name, (*loc, "move_to_list", "from"), "list", step.move_to_list.from_, desired.lists)
            if c.reference(kind, name, (*loc, "move_to_list", "to"), "list", step.move_to_list.to, desired.lists):
                _check_joinable(c, name, (*loc, "move_to_list", "to"), step.move_to_list.to)
        elif isinstance(step, SetFieldStep):
            assignment = step.set_field
            if c.reference(kind, name, (*loc, "set_field", "field"), "field", assignment.field, desired.fields):
                field_type = desired.fields[assignment.field].type
                if assignment.value is not None and not fits_type(assignment.value, field_type):
                    message = f"{assignment.value!r} is not {a(field_type)} value"
                    hint = f"{assignment.field} is {a(field_type)} field"
                    c.report(kind, name, (*loc, "set_field", "value"), message, hint)
        if isinstance(step, SendStep) and step.id:
            earlier_sends[step.id] = len(earlier_sends)


def _check_unreachable(c: Checker, name: str, steps: list[Any], loc: StepLoc) -> None:
    """Steps after an unconditional exit in the same list (an `exit`, or an `if` whose branches both exit) are never
    reached: an error at the first of them."""
    for index, step in enumerate(steps):
        if isinstance(step, IfStep):
            _check_unreachable(c, name, step.then, (*loc, index, "then"))
            _check_unreachable(c, name, step.else_, (*loc, index, "else"))
        exit_key = _exits(step, (*loc, index))
        if exit_key is None:
            continue
        if index + 1 < len(steps):
            after = (*loc, index + 1)
            others = len(steps) - index - 2
            more = f" (and the {count(others, 'step')} after it)" if others else ""
            branches = ", in both branches" if isinstance(step, IfStep) else ""
            c.report(
                "Workflow",
                name,
                after,
                f"step {step_key(steps[index + 1], after)}{more} is never reached: every run that gets here exits "
                f"at step {exit_key} before it{branches}",
                "remove it, or put the exit in a branch of an `if`",
            )
        return


def _exits(step: Any, loc: StepLoc) -> str | None:
    """The key of `step` when every run that reaches it ends there or in it: an `exit`, or an `if` whose `then` and
    `else` both end in an exit."""
    if isinstance(step, ExitStep):
        return step_key(step, loc)
    if isinstance(step, IfStep):
        then, other = _branch_exits(step.then, (*loc, "then")), _branch_exits(step.else_, (*loc, "else"))
        return step_key(step, loc) if then and other else None
    return None


def _branch_exits(steps: list[Any], loc: StepLoc) -> bool:
    return any(_exits(step, (*loc, index)) is not None for index, step in enumerate(steps))


def _check_joinable(c: Checker, name: str, loc: tuple[str | int, ...], list_name: str) -> None:
    """An automation may not put anyone on a double opt-in list: only the person's own confirmation does."""
    if c.desired.lists[list_name].opt_in == "double":
        c.report(
            "Workflow",
            name,
            loc,
            f"{list_name} is a double opt-in list: a workflow cannot subscribe anyone to it",
            "people join it by confirming (a form or the API sends the confirmation); add them to a single opt-in "
            "list, or send a message that invites them to subscribe",
        )


def _check_transactional_list(c: Checker, workflow: Workflow, loc: tuple[str, ...], list_name: str) -> None:
    """A transactional workflow sends whatever a person chose: its trigger must not be a marketing list, whose
    messages carry an unsubscribe link that such a workflow would not honour."""
    if workflow.category == "transactional" and c.desired.lists[list_name].category == "marketing":
        c.report(
            "Workflow",
            workflow.name,
            loc,
            f"{list_name} is a marketing list, and this workflow is transactional",
            "remove `category: transactional` (its mail then stops when they unsubscribe), or trigger it from a "
            "transactional list",
        )


def _check_date_shift(c: Checker, name: str, trigger: DateFieldTrigger) -> None:
    """`before` or `after`, not both, in whole days (the trigger fires on a day, at `at`)."""
    if trigger.before is not None and trigger.after is not None:
        c.report("Workflow", name, ("trigger", "after"), "before and after both given", "keep one of them")
    for key in ("before", "after"):
        shift = getattr(trigger, key)
        if shift is not None and shift % timedelta(days=1):
            c.report(
                "Workflow",
                name,
                ("trigger", key),
                f"{key}: {format_duration(shift)} is not a whole number of days",
                f"write days or weeks (1d, 1w); the time of day is `at` ({trigger.at:%H:%M})",
            )


def _joins(workflow: Workflow) -> dict[str, tuple[str | int, ...]]:
    """The lists a workflow's steps subscribe contacts to, with where."""
    found: dict[str, tuple[str | int, ...]] = {}
    for loc, step in walk_steps(workflow.steps):
        if isinstance(step, AddToListStep):
            found.setdefault(step.add_to_list, (*loc, "add_to_list"))
        elif isinstance(step, MoveToListStep):
            found.setdefault(step.move_to_list.to, (*loc, "move_to_list", "to"))
    return found


def check_workflow_loops(c: Checker) -> None:
    """A workflow that subscribes contacts to the list that triggers another (or itself), which in turn brings them
    back, would run them round for ever when every workflow on the way lets them in again: an error naming the
    path. A workflow with `re_entry: never` breaks the loop."""
    desired: DesiredState = c.desired
    starts: dict[str, list[str]] = {}
    for name, workflow in desired.workflows.items():
        if isinstance(workflow.trigger, SubscribedTrigger) and workflow.re_entry != "never":
            starts.setdefault(workflow.trigger.subscribed, []).append(name)
    edges = {
        name: [(target, lst) for lst in _joins(workflow) for target in starts.get(lst, [])]
        for name, workflow in desired.workflows.items()
        if workflow.re_entry != "never"
    }
    reported: set[frozenset[str]] = set()
    for origin in sorted(edges):
        _follow(c, origin, [origin], [], edges, reported)


def _follow(
    c: Checker,
    origin: str,
    path: list[str],
    via: list[str],
    edges: dict[str, list[tuple[str, str]]],
    reported: set[frozenset[str]],
) -> None:
    for target, lst in edges.get(path[-1], []):
        if target == origin:
            members = frozenset(path)
            if members in reported:
                continue
            reported.add(members)
            lists = [*via, lst]
            hops = zip(path, lists, [*path[1:], origin], strict=True)
            route = "; ".join(f"{a} adds contacts to {joined}, which starts {b}" for a, joined, b in hops)
            workflow = c.desired.workflows[origin]
            if len(path) == 1:
                message = f"the workflow loops into itself: {route}, and it lets a contact in again"
                hint = "set `re_entry: never`, or stop adding contacts to the list that starts it"
            else:
                message = f"workflows loop: {route}; and each lets a contact in again"
                hint = "set `re_entry: never` on one of them, or stop adding contacts to a list that starts another"
            c.report("Workflow", origin, _joins(workflow)[lists[0]], message, hint)
        elif target not in path and len(path) < 32:
            _follow(c, origin, [*path, target], [*via, lst], edges, reported)


def check_workflow_test(c: Checker, test: WorkflowTest) -> None:
    """A test names a workflow, send steps of it, lists and fields that exist."""
    desired, kind, name = c.desired, "WorkflowTest", test.name
    if not c.reference(kind, name, ("workflow",), "workflow", test.workflow, desired.workflows):
        return
    workflow = desired.workflows[test.workflow]
    sends = [step.id for _, step in walk_steps(workflow.steps) if isinstance(step, SendStep) and step.id]
    for index, happening in enumerate(test.happens):
        for key in ("opened", "clicked"):
            step = getattr(happening, key)
            if step:
                c.reference(kind, name, ("happens", index, key), "send step id", step, sends)
        if happening.unsubscribed:
            c.reference(kind, name, ("happens", index, "unsubscribed"), "list", happening.unsubscribed, desired.lists)
        given = [k for k in ("opened", "clicked", "event", "unsubscribed") if getattr(happening, k)]
        if len(given) != 1:
            c.report(
                kind,
                name,
                ("happens", index),
                f"a happening needs exactly one of opened, clicked, event, unsubscribed (found {len(given)})",
                "write one thing per line, e.g. {at: 1d, opened: tips}",
            )
    for index, list_name in enumerate(test.contact.lists or []):
        c.reference(kind, name, ("contact", "lists", index), "list", list_name, desired.lists)
    for field in test.contact.fields:
        c.reference(kind, name, ("contact", "fields", field), "field", field, desired.fields)
