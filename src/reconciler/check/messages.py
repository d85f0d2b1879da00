"""Checks that every template a message uses compiles, renders with sample data, and is compliant."""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.audience import is_marketing
from reconciler.check.checker import Checker
from reconciler.check.references import message_templates
from reconciler.errors import Loc, Problem
from reconciler.field_reads import FieldRead, optional_fields, unguarded_in_text, unguarded_reads
from reconciler.spec import DesiredState
from reconciler.spec.workflow import SendStep, walk_steps
from reconciler.templates import (
    StrictFields,
    TemplateFailure,
    TemplateSet,
    describe_error,
    render_text,
    sample_contact,
    template_contact,
)

SAMPLE_TOKEN = "SAMPLE-TOKEN"


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


def uses(desired: DesiredState) -> list[Use]:
    uses: list[Use] = []
    lists = desired.lists
    for campaign in desired.campaigns.values():
        marketing = is_marketing(lists, campaign.audience.lists)
        first_list = campaign.audience.lists[0]
        uses.append(
            Use(
                "Campaign",
                campaign.name,
                ("template",),
                campaign.template,
                campaign.subject,
                campaign.preheader,
                marketing,
                first_list,
            )
        )
        for index, stage in enumerate(campaign.stages):
            uses.append(
                Use(
                    "Campaign",
                    campaign.name,
                    ("stages", index, "template"),
                    stage.template,
                    stage.subject,
                    stage.preheader,
                    marketing,
                    first_list,
                )
            )
    for workflow in desired.workflows.values():
        trigger_list = getattr(workflow.trigger, "subscribed", "") or ""
        for loc, step in walk_steps(workflow.steps):
            if isinstance(step, SendStep):
                uses.append(
                    Use(
                        "Workflow",
                        workflow.name,
                        (*loc, "send"),
                        step.send,
                        step.subject,
                        step.preheader,
                        workflow.category == "marketing",
                        trigger_list,
                    )
                )
    return uses


def sample_context(desired: DesiredState, use: Use) -> dict[str, Any]:
    """What a template sees when `validate` renders it: every variable a template may use, with sample values."""
    settings = desired.settings
    assert settings is not None
    base = settings.public_url.rstrip("/")
    field_types = {n: f.type for n, f in desired.fields.items()}
    list_spec = desired.lists.get(use.list_name)
    return {
        "contact": template_contact(sample_contact(field_types), field_types),
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


def check_templates(c: Checker) -> None:
    """Render every used template with sample data once, check its MJML elements and attributes, and render every
    subject per use; then check compliance."""
    desired = c.desired
    templates = TemplateSet(desired.templates)
    reported: set[tuple[str, int, str]] = set()
    rendered: dict[str, tuple[str, str | None] | None] = {}
    compliant: set[str] = set()
    messages = set(message_templates(desired))

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
        c.problems.append(Problem(path, failure.line, failure.column, "Template", name, "", failure.message, hint))

    for use in uses(desired):
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
            for failure in templates.markup_problems(use.template):  # what MJML would compile into something else
                template_problem(use, failure)
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

    def missing(what: str, hint: str) -> None:
        message = f"marketing mail ({use.kind} {use.name}) without {what}"
        c.problems.append(Problem(path, 1, 1, "Template", use.template, "compliance", message, hint))

    exits = (context["unsubscribe_url"], context["preferences_url"])
    if not any(url in link for link in links for url in exits):
        missing(
            "an unsubscribe link", 'add <a href="{{ unsubscribe_url }}">Unsubscribe</a>, best in the layout\'s footer'
        )
    if " ".join(settings.organization.postal_address.split()) not in text:
        missing(
            "the organization's postal address",
            "add {{ organization.postal_address }} to the footer: anti-spam law requires it",
        )


def check_field_reads(c: Checker) -> None:
    """Warn where a message reads a field some contacts may lack, without a fallback: those contacts get no message
    (templates are strict, so a typo cannot pass silently)."""
    desired = c.desired
    optional = optional_fields(desired.fields)
    sources = {t.jinja_name: t.text for t in desired.templates.values()}
    warned: set[tuple[str, str]] = set()
    for use in uses(desired):
        template = desired.templates.get(use.template)
        if template is None:
            continue
        reads = unguarded_reads(sources, template.jinja_name, optional)
        if template.text_part is not None:
            text_name = template.jinja_name.removesuffix(".mjml") + ".txt"
            reads += unguarded_reads({text_name: template.text_part}, text_name, optional)
        for read in reads:
            if (read.template, read.field) not in warned:
                warned.add((read.template, read.field))
                _warn_read(c, read)
        for key, text in (("subject", use.subject), ("preheader", use.preheader)):
            for field in unguarded_in_text(text, optional):
                message, hint = _unguarded(field)
                c.report(use.kind, use.name, (*use.loc[:-1], key), message, hint, severity="warning")


def _warn_read(c: Checker, read: FieldRead) -> None:
    name = read.template.removesuffix(".mjml").removesuffix(".txt")
    known = c.desired.templates.get(name)
    path = known.path if known is not None else f"templates/{read.template}"
    if read.template.endswith(".txt"):
        path = os.path.splitext(path)[0] + ".txt"
    message, hint = _unguarded(read.field)
    c.problems.append(Problem(path, read.line, 1, "Template", name, "", message, hint, "warning"))


def _unguarded(field: str) -> tuple[str, str]:
    return (
        f"contact.{field} is read without a default: contacts without {field} get no message",
        f"write contact.{field} | default('...'), or test `contact.{field} is defined` first; "
        "`reconciler plan` counts who lacks it",
    )
