"""Checks across documents: references, cycles, field types, templates and compliance.

`check(desired)` is pure (templates compile in memory) and returns every problem it finds; `validate` is
`load` followed by `check`. Each problem points at the key that is wrong, so the fix is one click away in CI.
"""

from __future__ import annotations

import difflib
import html
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from reconciler.errors import Problem, field_path
from reconciler.spec import BUILTIN_FIELDS, Campaign, DesiredState, Segment, Workflow
from reconciler.spec.conditions import (
    EngagedCondition,
    FieldCondition,
    InSegmentCondition,
    ListCondition,
    StepClicked,
    StepOpened,
    walk,
)
from reconciler.spec.workflow import (
    AddToListStep,
    DateFieldTrigger,
    IfStep,
    MoveToListStep,
    RemoveFromListStep,
    SegmentEnteredTrigger,
    SendStep,
    SetFieldStep,
    SubscribedTrigger,
    WaitUntilStep,
    walk_steps,
)
from reconciler.templates import (
    StrictFields,
    TemplateFailure,
    TemplateSet,
    describe_error,
    render_text,
    sample_contact,
)

Loc = tuple[str | int, ...]
ORDERED_TYPES = {"number", "integer", "date", "datetime"}
DATE_TYPES = {"date", "datetime"}
SAMPLE_TOKEN = "SAMPLE-TOKEN"
_DOCUMENT_KINDS = {
    "list": "List",
    "segment": "Segment",
    "campaign": "Campaign",
    "workflow": "Workflow",
    "field": "Field",
}


@dataclass
class Checker:
    """Collects problems for one workspace."""

    desired: DesiredState
    problems: list[Problem] = field(default_factory=list)

    def report(self, kind: str, name: str, loc: Loc, message: str, hint: str = "", severity: str = "error") -> None:
        source = self.desired.source(kind, name)
        line, column = source.at(loc)
        self.problems.append(
            Problem(source.path, line, column, kind, name, field_path(loc), message, hint, severity)  # type: ignore[arg-type]
        )

    def reference(self, kind: str, name: str, loc: Loc, target_kind: str, target: str, known: Iterable[str]) -> bool:
        """Report `target` unless it is one of `known`; say the closest name and where to declare it."""
        known = list(known)
        if target in known:
            return True
        if {(_DOCUMENT_KINDS.get(target_kind, ""), target), ("*", target)} & self.desired.invalid:
            return False  # the target has its own errors; "unknown" would only add noise
        guess = difflib.get_close_matches(target, known, n=1)
        if guess:
            hint = f"did you mean {guess[0]!r}?"
        elif known:
            hint = f"known: {', '.join(sorted(known)[:12])}"
        else:
            hint = f"declare it first: no {target_kind} exists yet"
        self.report(kind, name, loc, f"unknown {target_kind} {target!r}", hint)
        return False


def check(desired: DesiredState) -> list[Problem]:
    """Every problem that spans documents; assumes each document on its own already parsed."""
    checker = Checker(desired)
    if desired.settings is None:
        if any(kind == "Settings" for kind, _ in desired.invalid):
            return checker.problems  # its errors are reported; the rest cannot be checked without it
        path = os.path.normpath(os.path.join(desired.root, "spec", "settings.yaml"))
        message = "the workspace has no Settings document"
        hint = "add spec/settings.yaml with kind: Settings (organization, public_url, senders, defaults)"
        checker.problems.append(Problem(path, 1, 1, "Settings", "", "", message, hint))
        return checker.problems
    _check_settings(checker)
    _check_fields(checker)
    for segment in desired.segments.values():
        _check_segment(checker, segment)
    _check_segment_cycles(checker)
    for campaign in desired.campaigns.values():
        _check_campaign(checker, campaign)
    for workflow in desired.workflows.values():
        _check_workflow(checker, workflow)
    _check_templates(checker)
    return checker.problems


def _check_settings(c: Checker) -> None:
    settings = c.desired.settings
    assert settings is not None
    c.reference(
        "Settings",
        settings.name,
        ("defaults", "sender"),
        "sender",
        settings.defaults.sender,
        settings.senders,
    )
    c.reference(
        "Settings",
        settings.name,
        ("defaults", "transport"),
        "transport",
        settings.defaults.transport,
        settings.transports,
    )
    url = urlsplit(settings.public_url)
    if url.scheme != "https" and url.hostname not in ("localhost", "127.0.0.1"):
        c.report("Settings", settings.name, ("public_url",), "links in mail should use https",
                 "mailbox providers and subscribers distrust http links; serve the daemon behind TLS",
                 severity="warning")  # fmt: skip
    if url.query or url.fragment:
        c.report("Settings", settings.name, ("public_url",), "public_url must not have a query or fragment",
                 "give the base URL only, e.g. https://mail.acme.example")  # fmt: skip


def _check_fields(c: Checker) -> None:
    for name in c.desired.fields:
        if name in BUILTIN_FIELDS:
            c.report("Field", name, ("name",), f"{name!r} is a built-in contact field",
                     "choose another name; built-ins: " + ", ".join(BUILTIN_FIELDS))  # fmt: skip


def field_types(desired: DesiredState) -> dict[str, str]:
    """Every field a condition or template may use, with its type."""
    return {**BUILTIN_FIELDS, **{name: f.type for name, f in desired.fields.items()}}


def _check_condition(
    c: Checker, kind: str, name: str, root: Loc, condition: Any, step_ids: Mapping[str, int] | None = None
) -> None:
    desired = c.desired
    types = field_types(desired)
    for loc, node in walk(condition, root):
        if isinstance(node, FieldCondition):
            if c.reference(kind, name, (*loc, "field"), "field", node.field, types):
                _check_operator(c, kind, name, loc, node, types[node.field])
        elif isinstance(node, ListCondition):
            c.reference(kind, name, (*loc, "list"), "list", node.list, desired.lists)
        elif isinstance(node, InSegmentCondition):
            c.reference(kind, name, (*loc, "in_segment"), "segment", node.in_segment, desired.segments)
        elif isinstance(node, EngagedCondition):
            engaged = node.engaged
            if engaged.campaign:
                c.reference(kind, name, (*loc, "engaged", "campaign"), "campaign", engaged.campaign, desired.campaigns)
            if (
                engaged.workflow
                and c.reference(
                    kind, name, (*loc, "engaged", "workflow"), "workflow", engaged.workflow, desired.workflows
                )
                and engaged.step
            ):
                ids = _step_ids(desired.workflows[engaged.workflow])
                c.reference(kind, name, (*loc, "engaged", "step"), "step id", engaged.step, ids)
        elif isinstance(node, StepOpened | StepClicked) and step_ids is not None:
            target = node.opened if isinstance(node, StepOpened) else node.clicked
            key = "opened" if isinstance(node, StepOpened) else "clicked"
            c.reference(kind, name, (*loc, key), "send step id", target, step_ids)


def _check_operator(c: Checker, kind: str, name: str, loc: Loc, node: FieldCondition, field_type: str) -> None:
    op, operand = node.operator, node.operand
    wrong = None
    if op in ("gt", "gte", "lt", "lte") and field_type not in ORDERED_TYPES:
        wrong = f"{op} compares numbers and dates, but {node.field} is a {field_type} field"
    elif op in ("before", "after", "within") and field_type not in DATE_TYPES:
        wrong = f"{op} works on date fields, but {node.field} is a {field_type} field"
    elif op == "starts_with" and field_type != "string":
        wrong = f"starts_with works on text, but {node.field} is a {field_type} field"
    elif op == "contains" and field_type not in ("string", "list"):
        wrong = f"contains works on text and lists, but {node.field} is a {field_type} field"
    elif op in ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in"):
        values = operand if isinstance(operand, list) else [operand]
        bad = next((v for v in values if not _fits(v, field_type)), None)
        if bad is not None:
            wrong = f"{bad!r} is not a {field_type} value, and {node.field} is a {field_type} field"
    if wrong:
        c.report(kind, name, (*loc, op), wrong, "compare like with like; see the Field's type")


def _fits(value: Any, field_type: str) -> bool:
    if field_type in ("number", "integer"):
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and (field_type == "number" or float(value).is_integer())
        )
    if field_type == "boolean":
        return isinstance(value, bool)
    if field_type in DATE_TYPES:
        return isinstance(value, str) and bool(re.match(r"^\d{4}-\d{2}-\d{2}", value))
    return isinstance(value, str) or field_type == "list"


def _check_segment(c: Checker, segment: Segment) -> None:
    for index, list_name in enumerate(segment.lists):
        c.reference("Segment", segment.name, ("lists", index), "list", list_name, c.desired.lists)
    if segment.where is not None:
        _check_condition(c, "Segment", segment.name, ("where",), segment.where)
    if segment.order_by is not None:
        types = field_types(c.desired)
        order = segment.order_by.field
        if c.reference("Segment", segment.name, ("order_by", "field"), "field", order, types) and types[order] in (
            "list", "boolean"
        ):  # fmt: skip
            c.report("Segment", segment.name, ("order_by", "field"), f"cannot sort by the {types[order]} field {order}",
                     "sort by a number, text or date field")  # fmt: skip


def _segment_edges(segment: Segment) -> list[tuple[Loc, str]]:
    if segment.where is None:
        return []
    return [((*loc, "in_segment"), n.in_segment) for loc, n in walk(segment.where, ("where",))
            if isinstance(n, InSegmentCondition)]  # fmt: skip


def _check_segment_cycles(c: Checker) -> None:
    segments = c.desired.segments
    reported: set[frozenset[str]] = set()

    def visit(name: str, path: list[str]) -> None:
        for loc, target in _segment_edges(segments[name]):
            if target not in segments:
                continue
            if target in path:
                cycle = [*path[path.index(target) :], target]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    c.report("Segment", name, loc, "segments refer to each other in a cycle: " + " -> ".join(cycle),
                             "break the cycle: a segment cannot contain itself")  # fmt: skip
                continue
            visit(target, [*path, target])

    for name in sorted(segments):
        visit(name, [name])


def _check_audience_refs(c: Checker, campaign: Campaign) -> None:
    desired, name = c.desired, campaign.name
    audience = campaign.audience
    for index, list_name in enumerate(audience.lists):
        c.reference("Campaign", name, ("audience", "lists", index), "list", list_name, desired.lists)
    for index, segment in enumerate(audience.segments):
        c.reference("Campaign", name, ("audience", "segments", index), "segment", segment, desired.segments)
    if audience.exclude is not None:
        for index, list_name in enumerate(audience.exclude.lists):
            c.reference("Campaign", name, ("audience", "exclude", "lists", index), "list", list_name, desired.lists)
        for index, segment in enumerate(audience.exclude.segments):
            c.reference("Campaign", name, ("audience", "exclude", "segments", index), "segment", segment,
                        desired.segments)  # fmt: skip


def _check_campaign(c: Checker, campaign: Campaign) -> None:
    settings, name = c.desired.settings, campaign.name
    assert settings is not None
    if campaign.sender:
        c.reference("Campaign", name, ("sender",), "sender", campaign.sender, settings.senders)
    if campaign.transport:
        c.reference("Campaign", name, ("transport",), "transport", campaign.transport, settings.transports)
    _check_audience_refs(c, campaign)
    c.reference("Campaign", name, ("template",), "template", campaign.template, _message_templates(c.desired))
    seen: set[str] = set()
    for index, stage in enumerate(campaign.stages):
        if stage.name in seen:
            c.report("Campaign", name, ("stages", index, "name"), f"duplicate stage name {stage.name!r}",
                     "give each stage its own name")  # fmt: skip
        seen.add(stage.name)
        c.reference("Campaign", name, ("stages", index, "template"), "template", stage.template,
                    _message_templates(c.desired))  # fmt: skip


def _step_ids(workflow: Workflow) -> dict[str, int]:
    return {step.id: i for i, (_, step) in enumerate(walk_steps(workflow.steps)) if step.id}


def _check_workflow(c: Checker, workflow: Workflow) -> None:
    desired, name, kind = c.desired, workflow.name, "Workflow"
    settings = desired.settings
    assert settings is not None
    trigger = workflow.trigger
    if isinstance(trigger, SubscribedTrigger):
        c.reference(kind, name, ("trigger", "subscribed"), "list", trigger.subscribed, desired.lists)
    elif isinstance(trigger, SegmentEnteredTrigger):
        c.reference(kind, name, ("trigger", "segment_entered"), "segment", trigger.segment_entered, desired.segments)
    elif isinstance(trigger, DateFieldTrigger):
        types = field_types(desired)
        if c.reference(kind, name, ("trigger", "date_field"), "field", trigger.date_field, types) and types[
            trigger.date_field
        ] not in DATE_TYPES:  # fmt: skip
            c.report(kind, name, ("trigger", "date_field"), f"{trigger.date_field} is not a date field",
                     "a date_field trigger needs a Field of type date or datetime")  # fmt: skip
    if workflow.sender:
        c.reference(kind, name, ("sender",), "sender", workflow.sender, settings.senders)
    if workflow.transport:
        c.reference(kind, name, ("transport",), "transport", workflow.transport, settings.transports)

    earlier_sends: dict[str, int] = {}
    seen_ids: set[str] = set()
    for loc, step in walk_steps(workflow.steps):
        if step.id is not None:
            if step.id in seen_ids:
                c.report(kind, name, (*loc, "id"), f"duplicate step id {step.id!r}", "give each step its own id")
            seen_ids.add(step.id)
        if isinstance(step, SendStep):
            c.reference(kind, name, (*loc, "send"), "template", step.send, _message_templates(desired))
            if step.sender:
                c.reference(kind, name, (*loc, "sender"), "sender", step.sender, settings.senders)
        elif isinstance(step, WaitUntilStep):
            _check_condition(c, kind, name, (*loc, "wait_until"), step.wait_until, earlier_sends)
        elif isinstance(step, IfStep):
            _check_condition(c, kind, name, (*loc, "if"), step.if_, earlier_sends)
        elif isinstance(step, AddToListStep | RemoveFromListStep):
            key = "add_to_list" if isinstance(step, AddToListStep) else "remove_from_list"
            c.reference(kind, name, (*loc, key), "list", getattr(step, key), desired.lists)
        elif isinstance(step, MoveToListStep):
            c.reference(kind, name, (*loc, "move_to_list", "from"), "list", step.move_to_list.from_, desired.lists)
            c.reference(kind, name, (*loc, "move_to_list", "to"), "list", step.move_to_list.to, desired.lists)
        elif isinstance(step, SetFieldStep):
            assignment = step.set_field
            if c.reference(kind, name, (*loc, "set_field", "field"), "field", assignment.field, desired.fields):
                field_type = desired.fields[assignment.field].type
                if assignment.value is not None and not _fits(assignment.value, field_type):
                    message = f"{assignment.value!r} is not a {field_type} value"
                    hint = f"{assignment.field} is a {field_type} field"
                    c.report(kind, name, (*loc, "set_field", "value"), message, hint)
        if isinstance(step, SendStep) and step.id:
            earlier_sends[step.id] = len(earlier_sends)


def _message_templates(desired: DesiredState) -> list[str]:
    """Templates a campaign or step may name: not layouts or partials, which are only building blocks."""
    return [n for n in desired.templates if not n.startswith(("layouts/", "partials/"))]


# --- Templates and compliance ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    """One use of a template: by which document, at which key, and whether it is marketing mail."""

    kind: str
    name: str
    loc: Loc
    template: str
    subject: str
    preheader: str
    marketing: bool
    list_name: str


def _uses(desired: DesiredState) -> list[Use]:
    uses: list[Use] = []
    lists = desired.lists
    for campaign in desired.campaigns.values():
        audience_lists = [lists[n] for n in campaign.audience.lists if n in lists]
        marketing = not audience_lists or any(lst.category == "marketing" for lst in audience_lists)
        first_list = campaign.audience.lists[0]
        uses.append(Use("Campaign", campaign.name, ("template",), campaign.template, campaign.subject,
                        campaign.preheader, marketing, first_list))  # fmt: skip
        for index, stage in enumerate(campaign.stages):
            uses.append(Use("Campaign", campaign.name, ("stages", index, "template"), stage.template, stage.subject,
                            stage.preheader, marketing, first_list))  # fmt: skip
    for workflow in desired.workflows.values():
        trigger_list = getattr(workflow.trigger, "subscribed", "") or ""
        for loc, step in walk_steps(workflow.steps):
            if isinstance(step, SendStep):
                uses.append(Use("Workflow", workflow.name, (*loc, "send"), step.send, step.subject, step.preheader,
                                workflow.category == "marketing", trigger_list))  # fmt: skip
    return uses


def sample_context(desired: DesiredState, use: Use) -> dict[str, Any]:
    """What a template sees when `validate` renders it: every variable of PRODUCT §2.7 with sample values."""
    settings = desired.settings
    assert settings is not None
    base = settings.public_url.rstrip("/")
    list_spec = desired.lists.get(use.list_name)
    return {
        "contact": sample_contact({n: f.type for n, f in desired.fields.items()}),
        "organization": StrictFields(settings.organization.model_dump()),
        "campaign": StrictFields({"name": use.name, "subject": use.subject}),
        "list": StrictFields({"name": use.list_name, "title": list_spec.title if list_spec else ""}),
        "unsubscribe_url": f"{base}/u/{SAMPLE_TOKEN}",
        "preferences_url": f"{base}/p/{SAMPLE_TOKEN}",
        "view_online_url": f"{base}/v/{SAMPLE_TOKEN}",
        "preheader": use.preheader,
    }


_HREF = re.compile(r"""<a\s[^>]*?href\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.I)
_INVISIBLE = re.compile(r"<(style|script|head)\b.*?</\1\s*>", re.I | re.S)
_TAG = re.compile(r"<[^>]*>")


def links_and_text(page: str) -> tuple[list[str], str]:
    """The link targets and the visible text (tags removed, entities decoded, spaces collapsed) of HTML."""
    links = [html.unescape(double or single) for double, single in _HREF.findall(page)]
    text = html.unescape(_TAG.sub(" ", _INVISIBLE.sub(" ", page)))
    return links, " ".join(text.split())


def _check_templates(c: Checker) -> None:
    """Render every used template with sample data once, and every subject per use; then check compliance."""
    desired = c.desired
    templates = TemplateSet(desired.templates)
    reported: set[tuple[str, int, str]] = set()
    rendered: dict[str, tuple[str, str | None] | None] = {}
    compliant: set[str] = set()
    messages = set(_message_templates(desired))

    def template_problem(use: Use, failure: TemplateFailure) -> None:
        key = (failure.template, failure.line, failure.message)
        if key in reported:
            return
        reported.add(key)
        name = failure.template.removesuffix(".mjml").removesuffix(".txt")
        path = desired.templates[name].path if name in desired.templates else f"templates/{failure.template}"
        if failure.template.endswith(".txt"):
            path = os.path.splitext(path)[0] + ".txt"
        hint = failure.hint or f"used by {use.kind} {use.name}"
        c.problems.append(Problem(path, failure.line, 1, "Template", name, "", failure.message, hint))

    for use in _uses(desired):
        if use.template not in messages:
            continue  # already reported as an unknown reference
        context = sample_context(desired, use)
        for key, text in (("subject", use.subject), ("preheader", use.preheader)):
            try:
                render_text(text, context)
            except Exception as exc:  # any Jinja failure is the author's to fix
                message, hint = describe_error(exc)
                c.report(use.kind, use.name, (*use.loc[:-1], key), f"the {key} does not render: {message}", hint)
        if use.template not in rendered:
            rendered[use.template] = _render_sample(templates, use, context, template_problem)
        parts = rendered[use.template]
        if parts is not None and use.marketing and use.template not in compliant:
            compliant.add(use.template)
            page, text_part = parts
            path = desired.templates[use.template].path
            links, visible = links_and_text(page)
            _check_compliance(c, use, path, links, visible, context)
            if text_part is not None:
                text_path = os.path.splitext(path)[0] + ".txt"
                _check_compliance(c, use, text_path, [text_part], " ".join(text_part.split()), context)


def _render_sample(
    templates: TemplateSet, use: Use, context: Mapping[str, Any], report: Any
) -> tuple[str, str | None] | None:
    """The template's HTML and hand-written text part for the sample contact, or None after saying why not.

    The compiled template is what recipients get, so it is rendered first; only when that fails is the source
    rendered directly, to name the file and line of the mistake (a layout, a partial, or the template itself).
    """
    try:
        page = templates.compile(use.template).render(context)
        text = templates.render_text_part(use.template, context)
        return page, text
    except TemplateFailure as failure:
        report(use, failure)
        return None
    except Exception as exc:  # a template can fail in ways Jinja does not classify
        failed: Exception = exc
    try:
        templates.render_source(use.template, context)
    except TemplateFailure as failure:
        report(use, failure)
        return None
    except Exception as exc:
        failed = exc
    report(use, TemplateFailure(templates.templates[use.template].jinja_name, 1, f"does not render: {failed}"))
    return None


def _check_compliance(c: Checker, use: Use, path: str, links: list[str], text: str, context: Mapping[str, Any]) -> None:
    """Marketing mail must let people leave and say who sent it (CAN-SPAM, Gmail and Yahoo bulk rules)."""
    settings = c.desired.settings
    assert settings is not None
    exits = (context["unsubscribe_url"], context["preferences_url"])
    if not any(url in link for link in links for url in exits):
        c.problems.append(Problem(path, 1, 1, "Template", use.template, "compliance",
            f"marketing mail ({use.kind} {use.name}) without an unsubscribe link",
            'add <a href="{{ unsubscribe_url }}">Unsubscribe</a>, best in the layout\'s footer'))  # fmt: skip
    address = " ".join(settings.organization.postal_address.split())
    if address not in text:
        c.problems.append(Problem(path, 1, 1, "Template", use.template, "compliance",
            f"marketing mail ({use.kind} {use.name}) without the organization's postal address",
            "add {{ organization.postal_address }} to the footer: anti-spam law requires it"))  # fmt: skip
