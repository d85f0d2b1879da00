"""Checks of what subscribers see outside a campaign: the workspace's own pages (templates/pages/*.html), its own
confirmation email (templates/pages/confirmation.mjml), and the languages lists ask for."""

from __future__ import annotations

from reconciler.check.checker import Checker
from reconciler.check.messages import SAMPLE_TOKEN, Use, sample_context
from reconciler.errors import Problem, did_you_mean
from reconciler.i18n import catalog_languages, choose_language, parse_locale
from reconciler.pages import CONFIRMATION, LAYOUT, PAGES, builtin_confirmation, sample_failures, split_title
from reconciler.templates import TemplateFailure, describe_error, prepare_message, template_set

PAGE_HINT = "pages are Jinja HTML in a sandbox; docs/web.md lists each page's variables"


def check_pages(c: Checker) -> None:
    """Every page of the workspace is one we show, and renders with sample values in the sandbox."""
    desired = c.desired
    settings = desired.settings
    assert settings is not None
    known = (*PAGES, LAYOUT)
    for name, page in sorted(desired.pages.items()):
        if name not in known:
            hint = did_you_mean(name, known, otherwise="the pages are " + ", ".join(known))
            message = f"{name!r} is not a page reconciler shows: it would never be used"
            c.problems.append(Problem(page.path, 1, 1, "Template", f"pages/{name}", "", message, hint))
    overrides = {name: page.text for name, page in desired.pages.items() if name in known}
    organization = settings.organization.model_dump()
    for failure in sample_failures(overrides, organization=organization, public_url=settings.public_url):
        found = desired.pages.get(failure.page)
        path = found.path if found is not None else f"templates/pages/{failure.page}"
        hint = failure.hint or PAGE_HINT
        c.problems.append(
            Problem(path, failure.line, 1, "Template", f"pages/{failure.page}", "", failure.message, hint)
        )


def check_confirmation(c: Checker) -> None:
    """The workspace's confirmation email compiles, renders with sample values, and has the link that confirms."""
    desired = c.desired
    template = desired.templates.get(CONFIRMATION)
    settings = desired.settings
    if template is None or settings is None:
        return
    templates = template_set(desired.templates)
    double = next((name for name, spec in desired.lists.items() if spec.opt_in == "double"), "")
    context = sample_context(desired, Use("Template", CONFIRMATION, (), CONFIRMATION, "", "", False, double))
    context["confirm_url"] = f"{settings.public_url.rstrip('/')}/confirm/{SAMPLE_TOKEN}"
    context |= choose_language(["en"]).functions()

    def report(line: int, message: str, hint: str) -> None:
        c.problems.append(Problem(template.path, max(line, 1), 1, "Template", CONFIRMATION, "", message, hint))

    try:
        subject, mjml = split_title(templates.flatten(CONFIRMATION))
        prepare_message(mjml, subject=subject or builtin_confirmation().subject, text_part=template.text_part).render(
            context
        )
    except TemplateFailure as failure:
        report(failure.line, failure.message, failure.hint)
        return
    except Exception as exc:  # found again below in the source, with its line
        failed: Exception = exc
        try:
            templates.render_source(CONFIRMATION, context)
        except TemplateFailure as failure:
            report(failure.line, failure.message, failure.hint)
        else:
            message, hint = describe_error(failed)
            report(1, f"does not render: {message}", hint)
        return
    if "confirm_url" not in mjml:
        report(
            1,
            "the confirmation email has no link to confirm with",
            'add <mj-button href="{{ confirm_url }}">...</mj-button>: without it nobody on a double opt-in list '
            "can confirm",
        )


def check_languages(c: Checker) -> None:
    """Warn about a list whose language we have no catalog for: its pages would be in English."""
    for name, spec in c.desired.lists.items():
        locale = parse_locale(spec.language) if spec.language else None
        if locale is not None and locale.language not in catalog_languages():
            c.report(
                "List",
                name,
                ("language",),
                f"the subscriber pages and the confirmation email have no translation into {spec.language!r}: "
                "they are shown in English to its subscribers",
                "replace them with templates/pages/*.html and templates/pages/confirmation.mjml in that language; "
                "translations exist for " + ", ".join(catalog_languages()),
                severity="warning",
            )
