"""Which contact fields a message reads without a fallback.

Templates are strict: a field the contact lacks is undefined, and using it (`{{ contact.city }}`,
`{% if contact.city == 'Łódź' %}`) fails that contact's message, so it is not sent. That is right for a typo and
wrong for data some contacts simply do not have, such as everyone who signed up through the form without a
`brew_method`. This module finds each read of an optional field that neither `| default(...)` nor an
`is defined` test guards, with its file and line, so `validate` can warn and `plan` can count who would be
affected. It reads the template files as written (layouts and partials included), not the compiled HTML.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache

from jinja2 import Environment, TemplateSyntaxError, meta, nodes

from reconciler.sandbox import parsed_text
from reconciler.spec.contact import TEXT_FIELDS
from reconciler.spec.workspace import DesiredState

ALWAYS_SET = frozenset({"email", "tags", "created_at"})
"""Built-in fields every contact has; every other field may be missing."""
_GUARD_FILTERS = frozenset({"default", "d"})
_GUARD_TESTS = frozenset({"defined", "undefined"})
_PARSER = Environment()


@dataclass(frozen=True, order=True)
class FieldRead:
    """An unguarded read of `contact.<field>` at `template` (its Jinja name, e.g. news/hello.mjml), `line`."""

    field: str
    template: str
    line: int


def optional_fields(custom: Collection[str]) -> frozenset[str]:
    """The fields a contact may lack: the optional built-ins and every custom field."""
    return frozenset(TEXT_FIELDS) | frozenset(custom)


def unguarded_reads(sources: Mapping[str, str], start: str, optional: Collection[str]) -> list[FieldRead]:
    """Unguarded reads of `optional` fields in the template `start` (a Jinja name in `sources`) and every layout and
    partial it uses, each (field, file) once, at its first line."""
    found: dict[tuple[str, str], FieldRead] = {}
    todo, seen = [start], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in sources:
            continue
        seen.add(name)
        references, reads = _scan(sources[name])
        todo += references
        for field, line in reads:
            if field in optional:
                found.setdefault((field, name), FieldRead(field, name, line))
    return sorted(found.values(), key=lambda r: (r.template, r.line, r.field))


def unguarded_in_text(text: str, optional: Collection[str]) -> list[str]:
    """The optional fields a subject or preheader reads without a guard."""
    return sorted({field for field, _ in _scan_text(text)[1] if field in optional})


def _scan_text_source(text: str) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    """As `_scan_source`, for a subject or preheader: through the parse its compile shares."""
    if "{" not in text:
        return (), ()
    try:
        tree = parsed_text(text)
    except TemplateSyntaxError:
        return (), ()  # reported by the render check
    return (), tuple(_reads(tree))


def _scan_source(text: str) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    """The templates `text` includes or extends, and its unguarded `contact.<field>` reads (field, line), whatever
    the field. Kept per text: a workspace's 1,000 campaigns share a few layouts and partials, and parsing each once
    per use made this check most of `validate`'s time."""
    if "{" not in text:  # no Jinja at all: a plain subject or preheader
        return (), ()
    try:
        tree = _PARSER.parse(text)
    except TemplateSyntaxError:
        return (), ()  # reported by the compile check
    references = tuple(ref for ref in meta.find_referenced_templates(tree) if ref)
    return references, tuple(_reads(tree))


_scan = lru_cache(maxsize=512)(_scan_source)
"""Template files: each is used by many campaigns."""
_scan_text = lru_cache(maxsize=4096)(_scan_text_source)
"""Subjects and preheaders, kept apart: most are used once, and would push the templates out."""


def _reads(tree: nodes.Template) -> Iterator[tuple[str, int]]:
    guarded_nodes, tested, reads = set(), set(), []
    for node in tree.find_all((nodes.Filter, nodes.Test, nodes.Getattr, nodes.Getitem)):  # one walk of the tree
        if isinstance(node, nodes.Filter):
            if node.name in _GUARD_FILTERS:
                guarded_nodes.add(id(node.node))
        elif isinstance(node, nodes.Test):
            if node.name in _GUARD_TESTS and (field := _field(node.node)):
                tested.add(field)
        elif field := _field(node):
            reads.append((field, node))
    for field, node in reads:
        if field not in tested and id(node) not in guarded_nodes:
            yield field, node.lineno


def _field(node: nodes.Node) -> str | None:
    """`contact.x` or `contact['x']` -> x."""
    if not (isinstance(node, nodes.Getattr | nodes.Getitem) and isinstance(node.node, nodes.Name)):
        return None
    if node.node.name != "contact":
        return None
    if isinstance(node, nodes.Getattr):
        return node.attr
    return node.arg.value if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) else None


def campaign_reads(desired: DesiredState) -> dict[str, list[str]]:
    """Per campaign, the optional fields its messages (template, stages, subjects, preheaders) read unguarded."""
    optional = optional_fields(desired.fields)
    sources = {t.jinja_name: t.text for t in desired.templates.values()}
    found: dict[str, list[str]] = {}
    for name, campaign in desired.campaigns.items():
        fields: set[str] = set()
        parts = [(campaign.template, campaign.subject, campaign.preheader)]
        parts += [(stage.template, stage.subject, stage.preheader) for stage in campaign.stages]
        for template, subject, preheader in parts:
            if template in desired.templates:
                fields |= {r.field for r in unguarded_reads(sources, desired.templates[template].jinja_name, optional)}
                text_part = desired.templates[template].text_part
                if text_part is not None:
                    fields |= {r.field for r in unguarded_reads({"part.txt": text_part}, "part.txt", optional)}
            fields |= set(unguarded_in_text(subject, optional)) | set(unguarded_in_text(preheader, optional))
        if fields:
            found[name] = sorted(fields)
    return found
