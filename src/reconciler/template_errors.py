"""Why a template failed, as a sentence its author can act on, in the file and at the line that holds the mistake.

Jinja reports a mistake in the template it was compiling or rendering; with layouts and partials resolved first
(`templates`), that is often another file than the one at fault, so every failure is traced back to the file the
author wrote: a syntax error names its template, a render error the innermost template frame of its traceback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

from jinja2 import TemplateNotFound, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS
from jinja2.tests import TESTS

from reconciler.errors import did_you_mean
from reconciler.sandbox import RenderLimit

_UNKNOWN_NAME = re.compile(r"No (filter|test) named '([^']+)'")


@dataclass(frozen=True)
class TemplateFailure(Exception):
    """A template that does not compile or render, located in the file where the mistake is."""

    template: str
    """The jinja name (path under templates/) of the file at fault."""
    line: int
    message: str
    hint: str = ""
    column: int = 1

    def __str__(self) -> str:
        return f"{self.template}:{self.line}: {self.message}"


class UnknownName(Exception):  # not a LookupError: Jinja would turn that into a silent "undefined"
    """A template asked a mapping such as `contact` for a name it can never have."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = sorted(known)


def describe_error(exc: Exception) -> tuple[str, str]:
    """A Jinja error as a sentence a template author can act on, and a hint."""
    if isinstance(exc, UnknownName):
        hint = did_you_mean(exc.name, exc.known, otherwise="known: " + ", ".join(exc.known))
        return f"unknown variable or field {exc.name!r}", hint
    if isinstance(exc, TemplateSyntaxError):
        named = _UNKNOWN_NAME.match(exc.message or "")
        if named:  # "No filter named 'defaultt'.": the filter or test meant
            kind, name = named.groups()
            known = FILTERS if kind == "filter" else TESTS
            hint = did_you_mean(name, known, otherwise=f"Jinja's {kind}s: {', '.join(sorted(known))}")
            return f"Jinja syntax: {exc.message}", hint
        return f"Jinja syntax: {exc.message}", "check that every {{ }} and {% %} is closed"
    if isinstance(exc, TemplateNotFound):
        return f"template {exc.name!r} not found", "the path is relative to templates/, with .mjml"
    message = str(getattr(exc, "message", None) or exc)
    if isinstance(exc, UndefinedError):
        names = re.findall(r"'([^']+)'", message)
        unknown = names[-1] if names else message
        return f"unknown variable or field {unknown!r}", (
            "check the spelling; contact fields are contact.<name> for built-in and declared Fields; "
            "use | default('...') for data a contact may lack"
        )
    if isinstance(exc, RenderLimit):
        return message, "templates render within bounds of size and time: docs/spec-language.md lists them"
    if isinstance(exc, SecurityError):
        return f"not allowed in a template: {message}", "templates run in a sandbox"
    return message, ""


def failure_of(exc: Exception, jinja_name: str, *, structure: bool = False) -> TemplateFailure:
    """`exc` as a TemplateFailure in the file at fault (`jinja_name` when no frame names another)."""
    if isinstance(exc, TemplateSyntaxError):
        template, line = exc.name or jinja_name, exc.lineno or 1
    else:
        template, line = innermost_template_frame(exc.__traceback__, jinja_name)
    if structure and isinstance(exc, UndefinedError):
        # In the structure pass only extends/include/block run: a variable there is a computed template name.
        return TemplateFailure(
            template,
            line,
            "extends and include need a literal template name",
            'write {% include "partials/footer.mjml" %}',
        )
    message, hint = describe_error(exc)
    return TemplateFailure(template, line, message, hint)


def innermost_template_frame(tb: TracebackType | None, fallback: str) -> tuple[str, int]:
    """Jinja rewrites tracebacks so template frames carry the template's name and line: take the last one."""
    found = (fallback, 1)
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith((".mjml", ".txt")):
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return found
