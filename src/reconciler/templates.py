"""Templates: MJML with Jinja, compiled once per message definition and rendered once per recipient.

The obvious pipeline (Jinja per recipient, then MJML per recipient) pays the MJML compiler for every message.
We split Jinja in two instead:

1. *Structure*: ``{% extends %}``, ``{% include %}`` and ``{% block %}`` are resolved once, while every other
   piece of Jinja (``{{ contact.first_name }}``, ``{% if %}``, ``{% for %}``) is protected as raw text.
   The result is one flat MJML document that still holds the per-recipient Jinja.
2. *Compile*: mjml-python turns it into HTML (the Jinja passes through as text), cached by content hash.
3. *Render*: the compiled HTML is one sandboxed Jinja template; each recipient costs one render.

Everything runs in a sandbox with `StrictUndefined` (`sandbox.BoundedEnvironment`): a misspelt variable is an error
in `validate`, a template can never reach Python internals, and no render takes more than bounded memory and time.
"""

from __future__ import annotations

import hashlib
import html as html_module
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cached_property, lru_cache
from typing import Any

from jinja2 import (
    BaseLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    meta,
)
from jinja2.environment import Environment

from reconciler.mjml_rules import locate_error, marker, scan
from reconciler.sandbox import BoundedEnvironment, bounded, parsed_text
from reconciler.sandbox import render as bounded_render
from reconciler.spec import TemplateFile
from reconciler.spec.contact import BUILTIN_FIELDS, Contact
from reconciler.template_errors import TemplateFailure as TemplateFailure  # re-exported: callers know it from here
from reconciler.template_errors import UnknownName, failure_of
from reconciler.template_errors import describe_error as describe_error

STRUCTURAL_TAGS = frozenset({"extends", "include", "block", "endblock"})
_JINJA_SYNTAX = re.compile(r"\{%-?\s*(\w+).*?-?%\}|\{\{.*?\}\}", re.S)
_ENDRAW = re.compile(r"\{%-?\s*endraw\s*-?%\}")
_COMMENT = re.compile(r"\{#.*?#\}", re.S)


class _Loader(BaseLoader):
    """Serves workspace templates by their path under templates/, optionally transformed (phase 1): the transform
    gets each file's text and name."""

    def __init__(self, sources: Mapping[str, str], transform: Callable[[str, str], str] | None = None) -> None:
        self.sources = sources
        self.transform = transform

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        if template not in self.sources:
            raise TemplateNotFound(template)
        text = self.sources[template]
        return (self.transform(text, template) if self.transform else text), template, lambda: True


def protect(source: str, *, mark: str | None = None) -> str:
    """Wrap every non-structural piece of Jinja in ``{% raw %}`` so phase 1 leaves it for phase 2.

    With `mark` (the file's name), a marker after every structural tag and comment (phase 1 removes a comment, and
    with it its lines) says where the text that follows comes from, so the flattened document can be read against
    the files the author wrote (`mjml_rules.scan`)."""
    out: list[str] = [] if mark is None else [marker(mark, source, 0)]
    position = 0
    while (match := _JINJA_SYNTAX.search(source, position)) is not None:
        out.append(_text(source, position, match.start(), mark))
        tag = match.group(1)
        end = match.end()
        if tag == "raw":  # a raw block of the author's own stays a raw block after phase 1
            closing = _ENDRAW.search(source, end)
            end = closing.end() if closing else len(source)
        piece = source[match.start() : end]
        out.append(piece if tag in STRUCTURAL_TAGS else "{% raw %}" + piece + "{% endraw %}")
        if mark is not None and tag in STRUCTURAL_TAGS:
            out.append(marker(mark, source, end))
        position = end
    out.append(_text(source, position, len(source), mark))
    return "".join(out)


def _text(source: str, start: int, stop: int, mark: str | None) -> str:
    """Text between pieces of Jinja, with a marker after each comment when marking."""
    if mark is None:
        return source[start:stop]
    pieces, at = [], start
    for comment in _COMMENT.finditer(source, start, stop):
        pieces += [source[at : comment.end()], marker(mark, source, comment.end())]
        at = comment.end()
    pieces.append(source[at:stop])
    return "".join(pieces)


_TEXT_ENV = BoundedEnvironment(undefined=StrictUndefined, autoescape=False, cache_size=-1)
_HTML_ENV = BoundedEnvironment(undefined=StrictUndefined, autoescape=True, cache_size=-1)


@lru_cache(maxsize=4096)
def _text_template(source: str) -> Template:
    return _TEXT_ENV.from_string(parsed_text(source))


def render_text(source: str, context: Mapping[str, Any]) -> str:
    """Render a subject or preheader: no HTML escaping, and never a line break (header injection)."""
    if "{" not in source:  # no Jinja in it: nothing to compile (most preheaders)
        return " ".join(source.split())
    rendered = bounded_render(_text_template(source), context)
    return " ".join(rendered.split())


@lru_cache(maxsize=1024)
def _compile_mjml(flat: str) -> tuple[str, Template]:
    """Phase 2, cached by content: MJML -> HTML, and that HTML as the per-recipient Jinja template."""
    from mjml import mjml2html  # the compiler is loaded by the commands that compile, not by every command

    html = str(mjml2html(flat, disable_comments=True, fonts={}))  # a web font only where a layout has mj-font
    return html, _HTML_ENV.from_string(html)


@dataclass(frozen=True)
class CompiledTemplate:
    """A message definition's HTML, ready for one Jinja render per recipient."""

    name: str
    html: str
    content_hash: str
    template: Template

    def render(self, context: Mapping[str, Any]) -> str:
        return bounded_render(self.template, context)


_LAST_SET: list[tuple[tuple[tuple[str, str, str | None], ...], TemplateSet]] = []
_SET_LOCK = threading.Lock()


def template_set(templates: Mapping[str, TemplateFile]) -> TemplateSet:
    """The TemplateSet of these templates, the same object while their text is the same: the daemon plans on every
    pass, and building the environments and flattening every template again each time (30 s apart, for months)
    is work and allocator churn for nothing. One set is kept, the last one asked for."""
    key = tuple((name, t.text, t.text_part) for name, t in sorted(templates.items()))
    with _SET_LOCK:
        if _LAST_SET and _LAST_SET[0][0] == key:
            return _LAST_SET[0][1]
        made = TemplateSet(templates)
        _LAST_SET[:] = [(key, made)]
        return made


class TemplateSet:
    """A workspace's templates with their two Jinja environments, built once and reused for every template."""

    def __init__(self, templates: Mapping[str, TemplateFile]) -> None:
        self.templates = templates
        sources = self._sources = {t.jinja_name: t.text for t in templates.values()}
        options: dict[str, Any] = {"undefined": StrictUndefined, "auto_reload": False, "cache_size": -1}
        self._direct = BoundedEnvironment(
            loader=_Loader(sources), autoescape=True, keep_trailing_newline=True, **options
        )
        self._structure = BoundedEnvironment(loader=_Loader(sources, lambda text, _: protect(text)), **options)
        self._located = BoundedEnvironment(
            loader=_Loader(sources, lambda text, name: protect(text, mark=name)), **options
        )
        texts = {f"{t.name}.txt": t.text_part for t in templates.values() if t.text_part is not None}
        self._text = BoundedEnvironment(loader=_Loader(texts), autoescape=False, keep_trailing_newline=True, **options)
        self._flat: dict[str, str] = {}

    def flatten(self, name: str) -> str:
        """Phase 1: resolve layouts and partials into one MJML document that still holds per-recipient Jinja."""
        if name not in self._flat:
            jinja_name = self.templates[name].jinja_name
            try:
                self._flat[name] = bounded_render(self._structure.get_template(jinja_name), {})
            except TemplateError as exc:
                raise failure_of(exc, jinja_name, structure=True) from None
        return self._flat[name]

    def compile(self, name: str) -> CompiledTemplate:
        """Flatten, compile and prepare a template; the same flat MJML is compiled only once per process."""
        flat = self.flatten(name)
        jinja_name = self.templates[name].jinja_name
        try:
            html, template = _compile_mjml(flat)
        except TemplateSyntaxError as exc:  # its line is one of the compiled HTML: find the file the author wrote
            raise self._jinja_failure(jinja_name, exc) from None
        except (ValueError, RuntimeError) as exc:
            raise self._mjml_failure(jinja_name, flat, exc) from None
        return CompiledTemplate(name, html, hashlib.sha256(flat.encode()).hexdigest(), template)

    def markup_problems(self, name: str) -> list[TemplateFailure]:
        """Elements and attributes MJML does not know, each in the file and at the line that has it (mjml-python
        compiles them into something other than meant, without a word)."""
        jinja_name = self.templates[name].jinja_name
        try:  # most templates have no such problem: the plain flattened document says so without markers
            if not any(not f.breaks_compile for f in scan(self.flatten(name), template=jinja_name)):
                return []
        except TemplateFailure:
            return []  # the structure is broken: flatten() reports that
        marked = self._marked(jinja_name)
        found = scan(marked, template=jinja_name) if marked is not None else []
        return [TemplateFailure(f.template, f.line, f.message, f.hint, f.column) for f in found if not f.breaks_compile]

    def _mjml_failure(self, jinja_name: str, flat: str, exc: Exception) -> TemplateFailure:
        """mjml-python names no line: the first element at fault, else the position it names, in its own file."""
        hint = "check that every mj- tag is closed and nested as MJML allows"
        marked = self._marked(jinja_name)
        if marked is not None:
            found = [f for f in scan(marked, template=jinja_name, blank_jinja=False) if f.breaks_compile]
            if found:
                f = found[0]
                return TemplateFailure(f.template, f.line, f"MJML does not compile: {f.message}", f.hint, f.column)
            if at := locate_error(marked, flat, str(exc), template=jinja_name):
                return TemplateFailure(at[0], at[1], f"MJML does not compile: {at[3]}", hint, at[2])
        return TemplateFailure(jinja_name, 1, f"MJML does not compile: {exc}", hint)

    def _marked(self, jinja_name: str) -> str | None:
        """The flattened document with markers of where each piece comes from (`mjml_rules.marker`)."""
        try:
            return bounded_render(self._located.get_template(jinja_name), {})
        except Exception:  # the structure itself is broken: flatten() reports that, with its own line
            return None

    def _jinja_failure(self, jinja_name: str, compiled: TemplateSyntaxError) -> TemplateFailure:
        """The Jinja mistake the compiled HTML showed, in the template, layout or partial that holds it: each file
        the template reaches through extends and include is compiled on its own, so its error has its own line."""
        seen: set[str] = set()
        queue = [jinja_name]
        while queue:
            name = queue.pop(0)
            if name in seen or name not in self._sources:
                continue
            seen.add(name)
            try:
                self._direct.get_template(name)
            except TemplateSyntaxError as exc:
                return failure_of(exc, name)
            queue += [n for n in meta.find_referenced_templates(self._direct.parse(self._sources[name])) if n]
        message, hint = describe_error(compiled)
        return TemplateFailure(jinja_name, 1, f"{message} (in the HTML MJML made of it)", hint)

    def render_text_part(self, name: str, context: Mapping[str, Any]) -> str | None:
        """The hand-written text/plain part (templates/<name>.txt), if the template has one."""
        if self.templates[name].text_part is None:
            return None
        try:
            return bounded_render(self._text.get_template(f"{name}.txt"), context)
        except (TemplateError, UnknownName) as exc:
            raise failure_of(exc, f"{name}.txt") from None

    def render_source(self, name: str, context: Mapping[str, Any]) -> str:
        """Render the template's MJML source directly, so a mistake is reported with its own file and line."""
        jinja_name = self.templates[name].jinja_name
        try:
            return bounded_render(self._direct.get_template(jinja_name), context)
        except (TemplateError, UnknownName) as exc:
            raise failure_of(exc, jinja_name) from None


class StrictFields(dict[str, Any]):
    """A mapping whose missing *declared* keys are undefined, but whose unknown keys are errors.

    Jinja treats a missing key as undefined, and ``| default(...)`` turns undefined into a fallback. That is right
    for a contact who lacks a declared field, and wrong for a misspelt one (``contact.frist_name | default('Hi')``
    would greet everyone with "Hi" forever), so a name that is not declared raises instead.
    """

    def __init__(self, values: Mapping[str, Any], *, known: Iterable[str] = ()) -> None:
        super().__init__(values)
        self.allowed = frozenset(known) | frozenset(values)

    def __getitem__(self, key: str) -> Any:
        if key not in self.allowed:
            raise UnknownName(key, self.allowed)
        return super().__getitem__(key)


SAMPLE_VALUES: dict[str, Any] = {
    "string": "Sample",
    "number": 123.45,
    "integer": 3,
    "boolean": True,
    "date": date(1990, 5, 17),
    "datetime": datetime(2026, 1, 15, 9, 30, tzinfo=UTC),
    "list": ["sample"],
}


def sample_contact(field_types: Mapping[str, str]) -> Contact:
    """A contact with every built-in and declared field set (`field_types`: custom field -> type), as `validate`
    renders templates with and `render` previews without a state database."""
    custom = {name: SAMPLE_VALUES[kind] for name, kind in field_types.items()}
    return Contact(
        id=0,
        email="sample.subscriber@example.com",
        first_name="Alex",
        last_name="Sample",
        timezone="UTC",
        locale="en",
        country="PL",
        tags=("sample",),
        created_at=datetime(2025, 3, 1, 12, 0, tzinfo=UTC),
        fields={name: value.isoformat() if isinstance(value, date) else value for name, value in custom.items()},
    )


def template_contact(contact: Contact, field_types: Mapping[str, str]) -> StrictFields:
    """What a template reads as `contact`: every built-in and declared field may be asked for (a missing one is
    undefined, so `| default(...)` works); any other name is a mistake."""
    return StrictFields(contact.values(field_types), known=(*BUILTIN_FIELDS, *field_types))


# --- Messages: one definition compiled once, rendered per recipient ------------------------------------------------

_ANCHOR_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*")([^"]*)(")""", re.I)
_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.I)
_BODY_CLOSE = re.compile(r"</body\s*>", re.I)
_MD_LINK = re.compile(r"\[\s*([^\]]*?)\s*\]\(((?:\{\{.*?\}\}|[^)\s])*)\)", re.S)
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+\n")
PIXEL = '<img src="{{ rc_pixel }}" width="1" height="1" alt="" style="display:block;height:1px;width:1px;border:0">'
PREHEADER = (
    '<div style="display:none;font-size:1px;line-height:1px;max-height:0;max-width:0;opacity:0;'
    'overflow:hidden;mso-hide:all">{{ preheader }}</div>'
)


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    html_chunks: list[str]
    """The HTML as Jinja yields it: constant template text and personal values (see `mime.QpEncoder`)."""
    text: str

    @property
    def html(self) -> str:
        return "".join(self.html_chunks)


def rewrite_links(html: str) -> str:
    """Route every http(s) link of compiled HTML through `rc_link`, which adds UTM parameters and click tracking.

    The link as written may hold Jinja (``https://shop.example/?ref={{ contact.id }}``), so it is captured with a
    ``{% set %}`` block and passed, rendered, to `rc_link` for each recipient.
    """

    def replace(match: re.Match[str]) -> str:
        target = match.group(2)
        if not target.lower().startswith(("http://", "https://")):
            return match.group(0)  # mailto:, #anchors and our own {{ unsubscribe_url }} stay as they are
        captured = f"{{% set rc_target %}}{target}{{% endset %}}{{{{ rc_link(rc_target) }}}}"
        return match.group(1) + captured + match.group(3)

    return _ANCHOR_HREF.sub(replace, html)


def text_from_html(html: str) -> str:
    """A readable text/plain version of (compiled) HTML: links as "text (url)", no layout padding."""
    from inscriptis import get_text
    from inscriptis.model.config import ParserConfig

    text = get_text(html, ParserConfig(display_links=True, display_anchors=False))
    text = _MD_LINK.sub(
        lambda m: f"{' '.join(m.group(1).split())} ({m.group(2)})" if m.group(1).strip() else m.group(2), text
    )
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return tidy_text("\n".join(lines))


def tidy_text(text: str) -> str:
    return _BLANK_LINES.sub("\n\n", text).strip() + "\n"


def add_query(url: str, params: Mapping[str, str]) -> str:
    """`url` with `params` added to its query string, unless the link already sets them."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    present = {key for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    extra = {k: v for k, v in params.items() if k not in present}
    if not extra:
        return url
    query = parts.query + ("&" if parts.query else "") + urlencode(extra)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class MessageTemplate:
    """A message definition (subject, preheader, flattened MJML, text part, tracking, UTM) ready to render."""

    subject: Template
    preheader: Template
    html: Template
    text: Template | None
    """From the hand-written part, or derived from the HTML once; None: derive per recipient (a rare fallback)."""
    utm: tuple[tuple[str, str], ...]
    utm_hosts: tuple[str, ...]
    """Hosts whose links get UTM parameters (empty: every link)."""
    tracks_clicks: bool
    tracks_opens: bool

    @cached_property
    def utm_query(self) -> str:
        from urllib.parse import urlencode

        return urlencode(self.utm)

    def render(
        self,
        context: Mapping[str, Any],
        *,
        click_url: Callable[[str], str] | None = None,
        pixel_url: str = "",
    ) -> RenderedMessage:
        """One recipient's subject, HTML and text. `context` holds the variables of docs/spec-language.md."""
        from urllib.parse import urlsplit

        from markupsafe import Markup, escape

        utm, utm_query = dict(self.utm), self.utm_query

        def link(target: Any) -> Markup:
            url = html_module.unescape(str(target)).strip()
            if utm and (not self.utm_hosts or (urlsplit(url).hostname or "") in self.utm_hosts):
                if "utm_" in url or "#" in url:
                    url = add_query(url, utm)
                else:  # the common case, without parsing the query string
                    url += ("&" if "?" in url else "?") + utm_query
            if click_url is not None:
                url = click_url(url)
            return escape(url)

        variables = dict(context)
        subject = " ".join(bounded_render(self.subject, variables).split())  # never a line break in a header
        variables["preheader"] = " ".join(bounded_render(self.preheader, variables).split())
        variables["campaign"] = StrictFields({**dict(context.get("campaign", {})), "subject": subject})
        variables["rc_link"] = link
        variables["rc_pixel"] = pixel_url
        chunks = list(bounded(self.html.generate(variables)))
        if self.text is not None:
            text = tidy_text(bounded_render(self.text, variables))
        else:
            text = text_from_html("".join(chunks))
        return RenderedMessage(subject, chunks, text)


@lru_cache(maxsize=256)
def prepare_message(
    mjml: str,
    *,
    subject: str,
    preheader: str = "",
    text_part: str | None = None,
    opens: bool = False,
    clicks: bool = False,
    utm: tuple[tuple[str, str], ...] = (),
    utm_hosts: tuple[str, ...] = (),
) -> MessageTemplate:
    """Compile a message definition once (cached by its content): MJML → HTML with links routed through `rc_link`,
    a pixel when opens are tracked, the preheader when the layout does not place it, and the text part."""
    html, _ = _compile_mjml(mjml)
    text: Template | None = None
    try:
        text = _TEXT_ENV.from_string(text_part if text_part is not None else text_from_html(html))
    except Exception:  # Jinja the converter could not carry over intact: derive it per recipient instead
        if text_part is not None:
            raise
    if "preheader" not in mjml and (match := _BODY_OPEN.search(html)):
        html = html[: match.end()] + PREHEADER + html[match.end() :]
    if clicks or utm:
        html = rewrite_links(html)
    if opens and (closing := list(_BODY_CLOSE.finditer(html))):
        at = closing[-1].start()
        html = html[:at] + PIXEL + html[at:]
    return MessageTemplate(
        subject=_TEXT_ENV.from_string(subject),
        preheader=_TEXT_ENV.from_string(preheader),
        html=_HTML_ENV.from_string(html),
        text=text,
        utm=utm,
        utm_hosts=utm_hosts,
        tracks_clicks=clicks,
        tracks_opens=opens,
    )
