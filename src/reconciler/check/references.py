"""Checks that documents fit together: references, duplicates, cycles and field types."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reconciler import geoip
from reconciler.check.checker import DATE_TYPES, ORDERED_TYPES, Checker
from reconciler.errors import Loc
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
    walk_steps,
)
from reconciler.words import a


def check_settings(c: Checker) -> None:
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
        c.report(
            "Settings",
            settings.name,
            ("public_url",),
            "links in mail should use https",
            "mailbox providers and subscribers distrust http links; serve the daemon behind TLS",
            severity="warning",
        )
    if url.query or url.fragment:
        c.report(
            "Settings",
            settings.name,
            ("public_url",),
            "public_url must not have a query or fragment",
            "give the base URL only, e.g. https://mail.acme.example",
        )
    if settings.tracking.geoip_database:
        _check_geoip(c, settings.tracking.geoip_database)
    check_placeholders(c)


PLACEHOLDER = "FILL-IN"
"""What `reconciler init` writes where only the user knows the value: validate fails until each is filled in."""
_TO_FILL = {
    "organization.name": "write the name your subscribers know you by",
    "organization.postal_address": "write your postal address: the footer of every marketing message shows it, "
    "as CAN-SPAM requires",
    "public_url": "write the https address where `reconciler run` can be reached from the internet: every "
    "unsubscribe, preference and tracking link starts with it; http://127.0.0.1:8780 to try it on this machine",
    "from": "write the From address of your mail, on a domain whose SPF and DKIM you control",
    "reply_to": "write where replies should go, or remove reply_to",
}


def check_placeholders(c: Checker) -> None:
    """Settings values still holding the FILL-IN placeholder: mail with a made-up postal address or links to a
    host that does not exist must never go out, so each is an error that says what to write there."""
    settings = c.desired.settings
    assert settings is not None
    for loc, value in _strings(settings.model_dump(by_alias=True, exclude_defaults=True), ()):
        if PLACEHOLDER not in value:
            continue
        path = ".".join(str(part) for part in loc)
        hint = _TO_FILL.get(path) or _TO_FILL.get(str(loc[-1]), "replace it with your own value")
        c.report("Settings", settings.name, loc, f"still the placeholder {value!r}", hint)


def _strings(value: Any, loc: Loc) -> list[tuple[Loc, str]]:
    """Every text value in a dumped document, with where it sits."""
    if isinstance(value, str):
        return [(loc, value)]
    if isinstance(value, Mapping):
        return [found for key, item in value.items() for found in _strings(item, (*loc, key))]
    if isinstance(value, list | tuple):
        return [found for index, item in enumerate(value) for found in _strings(item, (*loc, index))]
    return []


def _check_geoip(c: Checker, configured: str) -> None:
    root = Path(c.desired.root).resolve()
    path = (root / configured).resolve()
    if not path.is_relative_to(root):
        why = "it leads outside the workspace (through a symbolic link)"
    else:
        try:
            geoip.check(path)
            return
        except geoip.GeoIpError as exc:
            why = str(exc).replace(str(root) + os.sep, "")
    c.report(
        "Settings",
        c.desired.settings.name if c.desired.settings else "",
        ("tracking", "geoip_database"),
        f"cannot use {configured!r} as the GeoIP database: {why}",
        "download a country database (MaxMind GeoLite2-Country or DB-IP's IP-to-Country Lite, .mmdb) into the "
        f"workspace, or set {geoip.ENV} on the server instead",
    )


def check_fields(c: Checker) -> None:
    for name in c.desired.fields:
        if name in BUILTIN_FIELDS:
            c.report(
                "Field",
                name,
                ("name",),
                f"{name!r} is a built-in contact field",
                "choose another name; built-ins: " + ", ".join(BUILTIN_FIELDS),
            )


def field_types(desired: DesiredState) -> dict[str, str]:
    """Every field a condition or template may use, with its type."""
    return {**BUILTIN_FIELDS, **{name: f.type for name, f in desired.fields.items()}}


def check_condition(
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
        wrong = f"{op} compares numbers and dates, but {node.field} is {a(field_type)} field"
    elif op in ("before", "after", "within") and field_type not in DATE_TYPES:
        wrong = f"{op} works on date fields, but {node.field} is {a(field_type)} field"
    elif op == "starts_with" and field_type != "string":
        wrong = f"starts_with works on text, but {node.field} is {a(field_type)} field"
    elif op == "contains" and field_type not in ("string", "list"):
        wrong = f"contains works on text and lists, but {node.field} is {a(field_type)} field"
    elif op in ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in"):
        values = operand if isinstance(operand, list) else [operand]
        bad = next((v for v in values if not fits_type(v, field_type)), None)
        if bad is not None:
            wrong = f"{bad!r} is not {a(field_type)} value, and {node.field} is {a(field_type)} field"
    if wrong:
        c.report(kind, name, (*loc, op), wrong, "compare like with like; see the Field's type")


def fits_type(value: Any, field_type: str) -> bool:
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


def check_segment(c: Checker, segment: Segment) -> None:
    for index, list_name in enumerate(segment.lists):
        c.reference("Segment", segment.name, ("lists", index), "list", list_name, c.desired.lists)
    if segment.where is not None:
        check_condition(c, "Segment", segment.name, ("where",), segment.where)
    if segment.order_by is not None:
        types = field_types(c.desired)
        order = segment.order_by.field
        if c.reference("Segment", segment.name, ("order_by", "field"), "field", order, types) and types[order] in (
            "list",
            "boolean",
        ):
            c.report(
                "Segment",
                segment.name,
                ("order_by", "field"),
                f"cannot sort by the {types[order]} field {order}",
                "sort by a number, text or date field",
            )


def _segment_edges(segment: Segment) -> list[tuple[Loc, str]]:
    if segment.where is None:
        return []
    return [
        ((*loc, "in_segment"), n.in_segment)
        for loc, n in walk(segment.where, ("where",))
        if isinstance(n, InSegmentCondition)
    ]


MAX_SEGMENT_DEPTH = 64
"""Segments containing segments (`in_segment`) deeper than this are refused, as YAML nested that deep is."""
MAX_EXPANDED = 10_000
"""Conditions a segment may hold once every `in_segment` is replaced by the segment it names (the SQL it compiles
to): a lattice of references would otherwise double with each level."""


def check_segment_cycles(c: Checker) -> None:
    """Segments that contain themselves through `in_segment`, and chains deeper than MAX_SEGMENT_DEPTH. Each segment
    is explored once (a chain of thousands, or a wide lattice of references, costs its size, not its paths)."""
    segments = c.desired.segments
    reported: set[frozenset[str]] = set()
    finished: dict[str, int] = {}
    """Each explored segment's size with every in_segment expanded."""
    too_deep: list[str] = []

    def visit(name: str, path: list[str]) -> None:
        edges = _segment_edges(segments[name])
        for loc, target in edges:
            if target not in segments or target in finished:
                continue
            if target in path:
                cycle = [*path[path.index(target) :], target]
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    c.report(
                        "Segment",
                        name,
                        loc,
                        "segments refer to each other in a cycle: " + " -> ".join(cycle),
                        "break the cycle: a segment cannot contain itself",
                    )
            elif len(path) >= MAX_SEGMENT_DEPTH:
                if not too_deep:
                    too_deep[:] = path
                    c.report(
                        "Segment",
                        path[0],
                        _segment_edges(segments[path[0]])[0][0],
                        f"segments nest deeper than {MAX_SEGMENT_DEPTH} levels through in_segment: "
                        + " -> ".join([*path[:3], "...", target]),
                        "flatten the chain: give this segment the conditions it borrows",
                    )
            else:
                visit(target, [*path, target])
        where = segments[name].where
        own = sum(1 for _ in walk(where, ("where",))) if where is not None else 0
        size = own + sum(finished.get(target, 0) for _, target in edges)
        finished[name] = min(size, MAX_EXPANDED + 1)
        if size > MAX_EXPANDED and all(finished.get(target, 0) <= MAX_EXPANDED for _, target in edges):
            c.report(  # where the growth passes the bound, not at every segment above it
                "Segment",
                name,
                edges[0][0] if edges else ("where",),
                f"expands to more than {MAX_EXPANDED:,} conditions through in_segment (each segment it names is "
                "compiled into it)",
                "name fewer segments that each name others; combine their conditions instead",
            )

    for name in sorted(segments):
        if name not in finished:
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
            c.reference(
                "Campaign", name, ("audience", "exclude", "segments", index), "segment", segment, desired.segments
            )


def check_campaign(c: Checker, campaign: Campaign) -> None:
    settings, name = c.desired.settings, campaign.name
    assert settings is not None
    if campaign.sender:
        c.reference("Campaign", name, ("sender",), "sender", campaign.sender, settings.senders)
    if campaign.transport:
        c.reference("Campaign", name, ("transport",), "transport", campaign.transport, settings.transports)
    _check_audience_refs(c, campaign)
    c.reference("Campaign", name, ("template",), "template", campaign.template, message_templates(c.desired))
    seen: set[str] = set()
    for index, stage in enumerate(campaign.stages):
        if stage.name in seen:
            c.report(
                "Campaign",
                name,
                ("stages", index, "name"),
                f"duplicate stage name {stage.name!r}",
                "give each stage its own name",
            )
        seen.add(stage.name)
        c.reference(
            "Campaign", name, ("stages", index, "template"), "template", stage.template, message_templates(c.desired)
        )


def _step_ids(workflow: Workflow) -> dict[str, int]:
    return {step.id: i for i, (_, step) in enumerate(walk_steps(workflow.steps)) if step.id}


def message_templates(desired: DesiredState) -> list[str]:
    """Templates a campaign or step may name: not layouts or partials, which are only building blocks."""
    return [n for n in desired.templates if not n.startswith(("layouts/", "partials/"))]
