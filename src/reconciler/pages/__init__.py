"""The pages a subscriber sees and the double opt-in email: built in, or the workspace's own, in the subscriber's
language.

A workspace may replace any page with `templates/pages/<page>.html` (and the layout every page extends with
`templates/pages/base.html`), and the confirmation email with `templates/pages/confirmation.mjml` (its
`<mj-title>` is the subject). Its pages run in the same bounded sandbox as message templates, with `StrictUndefined`,
and `validate` renders each with sample values, so a mistake is reported with its file and line before it is
applied. `apply` keeps them in the state (`state.pages`): the web service and the send loop never read the files.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

from jinja2 import BaseLoader, ChoiceLoader, FileSystemLoader, StrictUndefined, TemplateNotFound, TemplateSyntaxError
from jinja2.environment import Environment

from reconciler.i18n import N_, Language, choose_language
from reconciler.sandbox import BoundedEnvironment
from reconciler.sandbox import render as bounded_render
from reconciler.spec import DesiredState
from reconciler.spec.contact import FREQUENCIES
from reconciler.state.content import MessagePart
from reconciler.state.pages import StoredPages
from reconciler.templates import describe_error, template_set

log = logging.getLogger(__name__)
BUILTIN = Path(__file__).parent / "templates"
LAYOUT = "base.html"
PAGES = ("unsubscribe.html", "preferences.html", "confirm.html", "subscribed.html", "invalid.html")
"""The pages a workspace may replace, besides the layout."""
CONFIRMATION = "pages/confirmation"
"""The workspace template that replaces the double opt-in email."""
FREQUENCY_LABELS = {
    "": N_("Every email on the topics I chose"),
    "weekly": N_("At most one email a week"),
    "monthly": N_("At most one email a month"),
}
"""The preference page's words for "no limit" and for each of `spec.contact.FREQUENCIES` (a choice without words
there fails at import)."""
FREQUENCY_CHOICES = [(value, FREQUENCY_LABELS[value]) for value in ("", *FREQUENCIES)]
_TITLE = re.compile(r"<mj-title\b[^>]*>(.*?)</mj-title\s*>", re.S | re.I)


class _Overrides(BaseLoader):
    """The workspace's pages by name; `pages/<name>` in tracebacks, so an error names the file."""

    def __init__(self, sources: Mapping[str, str]) -> None:
        self.sources = sources

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        if template not in self.sources:
            raise TemplateNotFound(template)
        return self.sources[template], f"pages/{template}", lambda: True


class PageSet:
    """The page templates of one revision: the workspace's over the built-in ones, in the bounded sandbox."""

    def __init__(self, overrides: Mapping[str, str]) -> None:
        self.overrides = dict(overrides)
        loader = ChoiceLoader([_Overrides(self.overrides), FileSystemLoader(BUILTIN)])
        self.env = BoundedEnvironment(
            loader=loader, autoescape=True, undefined=StrictUndefined, auto_reload=False, cache_size=-1
        )

    def render(self, name: str, language: Language, *, organization: Mapping[str, Any], **values: Any) -> str:
        """Page `name` in `language`; `values` are the page's variables (docs/web.md lists them)."""
        context = {
            **language.functions(),
            "organization": organization,
            "frequencies": [(value, language.gettext(label)) for value, label in FREQUENCY_CHOICES],
            **values,
        }
        return bounded_render(self.env.get_template(name), context)

    def render_or_builtin(self, name: str, language: Language, **values: Any) -> str:
        """As `render`; a workspace page that fails (one contact's data, a bound) gives way to the built-in one,
        so a subscriber can always unsubscribe."""
        try:
            return self.render(name, language, **values)
        except Exception:
            if not self.overrides:
                raise
            log.exception("page %s: the workspace's template failed; the built-in page is shown", name)
            return page_set(()).render(name, language, **values)


@lru_cache(maxsize=4)
def page_set(overrides: tuple[tuple[str, str], ...]) -> PageSet:
    """The PageSet of these overrides, built once while they stay the same."""
    return PageSet(dict(overrides))


def split_title(mjml: str) -> tuple[str, str]:
    """The `<mj-title>` of a confirmation email (its subject, '' without one) and the MJML without it (MJML would
    copy the title into an attribute, where quotes in its Jinja are escaped out of shape)."""
    match = _TITLE.search(mjml)
    if match is None:
        return "", mjml
    return " ".join(match.group(1).split()), mjml[: match.start()] + mjml[match.end() :]


@lru_cache(maxsize=1)
def builtin_confirmation() -> MessagePart:
    """The built-in double opt-in email: no advertising (mailbox providers and the law both ask that a confirmation
    request sells nothing), one button, in the recipient's language."""
    subject, mjml = split_title((BUILTIN / "confirmation.mjml").read_text(encoding="utf-8"))
    return MessagePart(subject=subject, mjml=mjml)


def confirmation_part(stored: StoredPages) -> MessagePart:
    """The confirmation email to send: the workspace's (with the built-in subject when it has no title) or ours."""
    own = stored.confirmation
    if own is None:
        return builtin_confirmation()
    return own if own.subject else own.model_copy(update={"subject": builtin_confirmation().subject})


def stored_pages(desired: DesiredState) -> StoredPages:
    """What `apply` keeps of a checked workspace's pages and confirmation email."""
    confirmation = None
    template = desired.templates.get(CONFIRMATION)
    if template is not None:
        subject, mjml = split_title(template_set(desired.templates).flatten(CONFIRMATION))
        confirmation = MessagePart(subject=subject, template=CONFIRMATION, mjml=mjml, text_part=template.text_part)
    pages = {name: page.text for name, page in desired.pages.items() if name in (*PAGES, LAYOUT)}
    return StoredPages(pages=pages, confirmation=confirmation)


# --- validate: every page rendered with sample values -------------------------------------------------------------


@dataclass(frozen=True)
class PageFailure:
    """A page of the workspace that does not render, located in its file."""

    page: str
    """The page's name (preferences.html) whose file holds the mistake."""
    line: int
    message: str
    hint: str


def _samples(public_url: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every page with each set of values it is rendered with."""
    email, token = "sample.subscriber@example.com", f"{public_url.rstrip('/')}/p/SAMPLE-TOKEN"
    for done in (False, True):
        yield "unsubscribe.html", {"email": email, "titles": "Sample list", "preferences_url": token, "done": done}
        yield "confirm.html", {"email": email, "title": "Sample list", "done": done}
    lists = [
        {"name": "sample", "title": "Sample list", "description": "", "subscribed": True, "since": "2030-11-26"},
        {"name": "other", "title": "Other", "description": "Sample", "subscribed": False, "since": None},
    ]
    for saved in (None, "1", "all"):
        page = {"email": email, "lists": lists, "frequency": "", "csrf": "SAMPLE", "saved": saved}
        yield "preferences.html", page
    yield "subscribed.html", {"email": email}
    yield "invalid.html", {}


def sample_failures(
    overrides: Mapping[str, str], *, organization: Mapping[str, Any], public_url: str
) -> list[PageFailure]:
    """Render every page with sample values in every language we have; each mistake of the workspace's pages once."""
    if not overrides:
        return []
    pages = PageSet(overrides)
    found: dict[tuple[str, int, str], PageFailure] = {}
    languages = [choose_language([code]) for code in ("en", "de")]  # two suffice: the templates do not branch on it
    for name, values in _samples(public_url):
        for language in languages:
            try:
                html = pages.render(name, language, organization=organization, **values)
            except Exception as exc:  # any failure is the author's to fix; say where
                failure = _locate(exc, name if name in overrides else LAYOUT)
                found.setdefault((failure.page, failure.line, failure.message), failure)
                continue
            if name in overrides or LAYOUT in overrides:
                for missing in _missing_controls(name, values, html):
                    failure = PageFailure(name if name in overrides else LAYOUT, 1, missing, CONTROLS_HINT)
                    found.setdefault((failure.page, failure.line, failure.message), failure)
    return list(found.values())


_CONTROLS = {
    "unsubscribe.html": [
        (r"<form\b[^>]*method=[\"']?post", 'a form that posts (method="post")'),
        (r"name=[\"']?List-Unsubscribe[\"']?\s+value=[\"']?One-Click", 'the field List-Unsubscribe="One-Click"'),
    ],
    "preferences.html": [
        (r"name=[\"']?csrf[\"']?\s+value=[\"']?\{?", "the csrf field"),
        (r"name=[\"']?list\b", 'a checkbox per list (name="list")'),
        (r"name=[\"']?action[\"']?\s+value=[\"']?unsubscribe_all", 'the "unsubscribe from all" button'),
    ],
}
CONTROLS_HINT = (
    "a page of your own must keep the form the built-in one has, so that a subscriber can always unsubscribe "
    "(docs/web.md lists each page's fields; the built-in pages are in the package's pages/templates/)"
)


def _missing_controls(name: str, values: Mapping[str, Any], html: str) -> list[str]:
    """What a page with a form lacks of it, in the state that shows the form (not its "done" answer)."""
    if values.get("done") or values.get("saved") == "all":
        return []
    return [
        f"{name} lacks {what}: a subscriber could not unsubscribe with it"
        for pattern, what in _CONTROLS.get(name, [])
        if not re.search(pattern, html, re.IGNORECASE)
    ]


def _locate(exc: Exception, fallback: str) -> PageFailure:
    message, hint = describe_error(exc)
    if isinstance(exc, TemplateSyntaxError):
        name = (exc.filename or exc.name or fallback).removeprefix("pages/")
        return PageFailure(name, exc.lineno or 1, message, hint)
    name, line = _innermost_page(exc.__traceback__, fallback)
    return PageFailure(name, line, message, hint)


def _innermost_page(tb: TracebackType | None, fallback: str) -> tuple[str, int]:
    """Jinja rewrites tracebacks so template frames carry the template's file name and line: the last of ours."""
    found = (fallback, 1)
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith("pages/"):
            found = (filename.removeprefix("pages/"), tb.tb_lineno)
        tb = tb.tb_next
    return found
