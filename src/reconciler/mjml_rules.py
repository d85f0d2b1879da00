"""MJML's own rules, read before mjml-python compiles a template: its elements, their attributes, and where a
document that does not compile goes wrong.

mjml-python (a port of MJML to Rust) renders a misspelt element as nothing and ignores a misspelt attribute
(`<mj-buton>` disappears, `hreff` makes a button without a link), and when it refuses a document it names no line.
So the flattened document is read here once more: with every element and attribute checked against MJML 4's lists
(the `allowedAttributes` of each component, plus `mj-class` and `css-class`, which every element takes), and with
its elements matched open to close, so a document mjml-python refuses is reported at the element at fault.

The flattened document comes from several files (the template, its layout, partials). `templates.protect` can
leave a marker (`marker`) after every extends, include and block, saying which file and line the text that
follows comes from; `scan` reads the markers to name the file and line the author wrote.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from reconciler.errors import did_you_mean

_PADDING = "padding padding-top padding-right padding-bottom padding-left"
_BORDERS = "border border-top border-right border-bottom border-left"
_ICONS = (
    "icon-align icon-width icon-height icon-wrapped-url icon-wrapped-alt icon-unwrapped-url icon-unwrapped-alt "
    "icon-position"
)
_SECTION = (
    f"background-color background-url background-repeat background-size background-position background-position-x "
    f"background-position-y {_BORDERS} border-radius direction full-width text-align text-padding {_PADDING}"
)
_ANY = "*"
"""An element that takes any attribute: mj-all and mj-class set defaults for the attributes of other elements."""

_ATTRIBUTES: dict[str, str] = {
    "mjml": "owa lang dir",
    "mj-head": "",
    "mj-attributes": "",
    "mj-all": _ANY,
    "mj-class": _ANY,
    "mj-breakpoint": "width",
    "mj-font": "name href",
    "mj-html-attributes": "",
    "mj-selector": "path",
    "mj-html-attribute": "name",
    "mj-preview": "",
    "mj-style": "inline",
    "mj-title": "",
    "mj-include": "path type css-inline",
    "mj-body": "background-color width id",
    "mj-accordion": f"container-background-color border font-family {_ICONS} {_PADDING}",
    "mj-accordion-element": f"background-color border font-family {_ICONS}",
    "mj-accordion-title": f"background-color color font-size font-family {_PADDING}",
    "mj-accordion-text": (
        f"background-color color font-size font-family font-weight letter-spacing line-height {_PADDING}"
    ),
    "mj-button": (
        f"align background-color {_BORDERS} border-radius color container-background-color font-family font-size "
        f"font-style font-weight height href name title inner-padding letter-spacing line-height rel target "
        f"text-decoration text-transform vertical-align text-align width {_PADDING}"
    ),
    "mj-carousel": (
        f"align border-radius container-background-color icon-width left-icon right-icon thumbnails tb-border "
        f"tb-border-radius tb-hover-border-color tb-selected-border-color tb-width {_PADDING}"
    ),
    "mj-carousel-image": "alt href rel target title src thumbnails-src border-radius tb-border tb-border-radius",
    "mj-column": (
        f"background-color {_BORDERS} border-radius direction inner-background-color inner-border "
        f"inner-border-top inner-border-right inner-border-bottom inner-border-left inner-border-radius "
        f"vertical-align width {_PADDING}"
    ),
    "mj-divider": f"border-color border-style border-width container-background-color width align {_PADDING}",
    "mj-group": "background-color direction vertical-align width",
    "mj-hero": (
        f"mode height background-url background-width background-height background-position border-radius "
        f"container-background-color inner-background-color inner-padding inner-padding-top inner-padding-right "
        f"inner-padding-bottom inner-padding-left background-color vertical-align {_PADDING}"
    ),
    "mj-image": (
        f"alt href name src srcset sizes title rel align {_BORDERS} border-radius container-background-color "
        f"fluid-on-mobile target width height max-height font-size usemap {_PADDING}"
    ),
    "mj-navbar": (
        f"align base-url hamburger ico-align ico-open ico-close ico-color ico-font-size ico-font-family "
        f"ico-text-transform ico-padding ico-padding-top ico-padding-right ico-padding-bottom ico-padding-left "
        f"ico-text-decoration ico-line-height {_PADDING}"
    ),
    "mj-navbar-link": (
        f"color font-family font-size font-style font-weight href name target rel letter-spacing line-height "
        f"text-decoration text-transform {_PADDING}"
    ),
    "mj-raw": "position",
    "mj-section": _SECTION,
    "mj-wrapper": _SECTION,
    "mj-social": (
        f"align border-radius container-background-color color font-family font-size font-style font-weight "
        f"icon-size icon-height icon-padding inner-padding line-height mode table-layout text-padding "
        f"text-decoration vertical-align {_PADDING}"
    ),
    "mj-social-element": (
        f"align background-color color border-radius font-family font-size font-style font-weight href icon-size "
        f"icon-height icon-padding line-height name rel src srcset sizes alt title target text-decoration "
        f"text-padding vertical-align {_PADDING}"
    ),
    "mj-spacer": f"{_BORDERS} container-background-color height {_PADDING}",
    "mj-table": (
        f"align border cellpadding cellspacing container-background-color color font-family font-size font-weight "
        f"line-height role table-layout vertical-align width {_PADDING}"
    ),
    "mj-text": (
        f"align color container-background-color font-family font-size font-style font-weight height "
        f"letter-spacing line-height text-decoration text-transform vertical-align {_PADDING}"
    ),
}
ELEMENTS: dict[str, frozenset[str]] = {name: frozenset(attrs.split()) for name, attrs in _ATTRIBUTES.items()}
"""Every MJML 4 element and the attributes it allows (MJML's `allowedAttributes`)."""
GLOBAL_ATTRIBUTES = frozenset({"mj-class", "css-class"})
"""Attributes every element takes."""
ENDING_TAGS = frozenset(
    [
        "mj-text",
        "mj-button",
        "mj-table",
        "mj-raw",
        "mj-navbar-link",
        "mj-accordion-title",
        "mj-accordion-text",
        "mj-social-element",
        "mj-style",
        "mj-title",
        "mj-preview",
        "mj-html-attribute",
    ]
)
"""Elements whose content is HTML (or CSS, or text) kept as it is, not MJML."""
UNSUPPORTED = frozenset(["mj-html-attributes", "mj-selector", "mj-html-attribute", "mj-include"])
"""MJML's elements that mjml-python refuses: it cannot read files, and has no mj-html-attributes."""
VOID_HTML = frozenset(
    ["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr"]
)
"""HTML elements that have no closing tag (mjml-python knows them in lower case only)."""

_MARK_OPEN, _MARK_SEP, _MARK_CLOSE = "\ue000", "\ue001", "\ue002"  # private-use characters: never in a template
_MARKER = re.compile(f"{_MARK_OPEN}([^{_MARK_SEP}]*){_MARK_SEP}(\\d+){_MARK_SEP}(\\d+){_MARK_CLOSE}")
_NAME = re.compile(r"[A-Za-z][\w:.-]*")
_ATTR = re.compile(r"""\s*([^\s"'<>/=]+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s"'<>=`]+))?""")
_TAG_END = re.compile(r"\s*(/?)>")
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.S)
_DOCS = "https://documentation.mjml.io/"


def marker(template: str, source: str, position: int) -> str:
    """A marker saying that the text after it comes from `template` at `position` of its `source`."""
    line = source.count("\n", 0, position) + 1
    column = position - (source.rfind("\n", 0, position) + 1) + 1
    return f"{_MARK_OPEN}{template}{_MARK_SEP}{line}{_MARK_SEP}{column}{_MARK_CLOSE}"


@dataclass(frozen=True)
class Finding:
    """One mistake in the MJML of a template, located in the file the author wrote."""

    template: str
    """The jinja name (path under templates/) of the file at fault."""
    line: int
    column: int
    message: str
    hint: str
    breaks_compile: bool
    """A mistake mjml-python refuses the document for; the others it compiles into something other than meant."""


@dataclass(frozen=True)
class _Open:
    name: str
    position: int
    content: bool
    """Inside an element whose content is HTML: its elements are not MJML's."""


class _Document:
    """A flattened document without its markers, and where each position of it came from."""

    def __init__(self, marked: str, fallback: str) -> None:
        pieces: list[str] = []
        self.anchors: list[tuple[int, str, int, int]] = []
        size = last = 0
        for match in _MARKER.finditer(marked):
            pieces.append(marked[last : match.start()])
            size += match.start() - last
            self.anchors.append((size, match.group(1), int(match.group(2)), int(match.group(3))))
            last = match.end()
        pieces.append(marked[last:])
        self.text = "".join(pieces)
        self.starts = [anchor[0] for anchor in self.anchors]
        self.fallback = fallback

    def locate(self, position: int) -> tuple[str, int, int]:
        index = bisect.bisect_right(self.starts, position) - 1
        start, template, line, column = self.anchors[index] if index >= 0 else (0, self.fallback, 1, 1)
        newlines = self.text.count("\n", start, position)
        if newlines == 0:
            return template, line, column + position - start
        return template, line + newlines, position - self.text.rfind("\n", start, position)


class _Scan:
    """One pass over a document's tags: elements and attributes checked, opening and closing tags matched."""

    def __init__(self, document: _Document, *, blank_jinja: bool) -> None:
        self.doc = document
        self.text = document.text
        self.jinja = [(m.start(), m.end()) for m in _JINJA.finditer(self.text)]
        if blank_jinja:  # per-recipient Jinja in a tag ({% if %} around an attribute) is not MJML's business
            chars = list(self.text)
            for start, end in self.jinja:
                chars[start:end] = [c if c == "\n" else " " for c in self.text[start:end]]
            self.text = "".join(chars)
        self.blank = blank_jinja
        self.stack: list[_Open] = []
        self.findings: list[Finding] = []

    def report(self, position: int, message: str, hint: str, *, breaks: bool) -> None:
        template, line, column = self.doc.locate(position)
        self.findings.append(Finding(template, line, column, message, hint, breaks))

    def run(self) -> list[Finding]:
        text, position = self.text, 0
        while (start := text.find("<", position)) != -1:
            for opener, closer in (("<!--", "-->"), ("<![CDATA[", "]]>"), ("<!", ">"), ("<?", ">")):
                if text.startswith(opener, start):
                    end = text.find(closer, start)
                    if end == -1:
                        self.report(start, f"{opener} is never closed with {closer}", f"add {closer}", breaks=True)
                        return self.findings
                    position = end + len(closer)
                    break
            else:
                position = self.tag(start)
        for left in reversed(self.stack):
            self.report(left.position, f"<{left.name}> is never closed", f"add </{left.name}>", breaks=True)
        return self.findings

    def tag(self, start: int) -> int:
        """Read the tag at `start` and return where reading goes on."""
        closing = self.text.startswith("</", start)
        name_match = _NAME.match(self.text, start + 1 + closing)
        if name_match is None:
            self.bare_less_than(start)
            return start + 1
        name = name_match.group()
        if closing:
            end = _TAG_END.match(self.text, name_match.end())
            if end is None or end.group(1):
                self.report(start, f"</{name} is not closed with >", f"write </{name}>", breaks=True)
                return name_match.end()
            self.close(name, start)
            return end.end()
        position, attributes = name_match.end(), []
        while (end := _TAG_END.match(self.text, position)) is None:
            attribute = _ATTR.match(self.text, position)
            if attribute is None:
                hint = "check the quotes of its attributes: every value needs both"
                self.report(start, f"<{name} is not closed with >", hint, breaks=True)
                return name_match.end()
            if not self.blank and "{" in attribute.group(1):
                hint = "put {% if %} around the whole element, or inside the quotes of an attribute's value"
                self.report(attribute.start(1), f"Jinja between the attributes of <{name}>", hint, breaks=True)
            value = attribute.group(2)
            if value is not None and value[0] not in "\"'":
                hint = f'write {attribute.group(1)}="{value}"'
                self.report(
                    attribute.start(1), f"the value of {attribute.group(1)} is not in quotes", hint, breaks=True
                )
            attributes.append((attribute.group(1), attribute.start(1)))
            position = attribute.end()
        self.open(name, start, attributes, self_closing=bool(end.group(1)))
        return end.end()

    def bare_less_than(self, start: int) -> None:
        in_jinja = any(a <= start < b for a, b in self.jinja)
        hint = (
            "MJML reads a < in Jinja as the start of an element: turn the comparison round (b > a)"
            if in_jinja
            else "write &lt; for a less-than sign in text"
        )
        self.report(start, "a < that starts no element", hint, breaks=True)

    def open(self, name: str, start: int, attributes: list[tuple[str, int]], *, self_closing: bool) -> None:
        content = bool(self.stack) and (self.stack[-1].content or self.stack[-1].name in ENDING_TAGS)
        if not content and (name == "mjml" or name.startswith("mj-")):
            self.check_element(name, start, attributes)
        if not self_closing and name not in VOID_HTML:
            self.stack.append(_Open(name, start, content))

    def check_element(self, name: str, start: int, attributes: list[tuple[str, int]]) -> None:
        """An MJML element (outside the HTML content of an ending tag): known, and with attributes it takes."""
        if name == "mj-include":
            hint = 'write {% include "partials/NAME.mjml" %}: a partial is a template file'
            self.report(start, "<mj-include> cannot reach files", hint, breaks=True)
            return
        if name in UNSUPPORTED:
            hint = "set HTML attributes in the HTML of an mj-text or mj-raw instead"
            self.report(
                start, f"<{name}> is MJML's, but the compiler reconciler uses does not know it", hint, breaks=True
            )
            return
        allowed = ELEMENTS.get(name)
        if allowed is None:
            hint = did_you_mean(name, ELEMENTS, otherwise=f"MJML's elements are listed at {_DOCS}")
            self.report(start, f"unknown MJML element <{name}>", hint, breaks=False)
            return
        if _ANY in allowed:
            return
        for attribute, position in attributes:
            if attribute not in allowed and attribute not in GLOBAL_ATTRIBUTES:
                known = sorted(allowed | GLOBAL_ATTRIBUTES)
                otherwise = f"<{name}> takes " + ", ".join(known) if len(known) <= 12 else f"see {_DOCS}#{name}"
                hint = did_you_mean(attribute, known, otherwise=otherwise)
                self.report(position, f"<{name}> has no attribute {attribute!r}", hint, breaks=False)

    def close(self, name: str, start: int) -> None:
        names = [opened.name.lower() for opened in self.stack]
        if name.lower() not in names:
            hint = f"remove it, or add the <{name}> it closes"
            self.report(start, f"</{name}> closes no open element", hint, breaks=True)
            return
        template, line, _ = self.doc.locate(start)
        while self.stack and self.stack[-1].name.lower() != name.lower():
            left = self.stack.pop()
            where = f"line {line}" if self.doc.locate(left.position)[0] == template else f"{template}:{line}"
            hint = f"add </{left.name}> where the element ends"
            self.report(left.position, f"<{left.name}> is not closed before </{name}> ({where})", hint, breaks=True)
        self.stack.pop()


_POSITION = re.compile(r"\s*in root template at position (\d+):\d+$")


def locate_error(marked: str, flat: str, message: str, *, template: str) -> tuple[str, int, int, str] | None:
    """Where in the files an error of mjml-python that names a position ("... at position 96:106", a byte offset
    of `flat`) is, and the error without its position; None when it names none."""
    found = _POSITION.search(message)
    if found is None:
        return None
    document = _Document(marked, template)
    if document.text != flat:  # whitespace control around a marker made the two differ: the offset would lie
        return None
    position = len(flat.encode()[: int(found.group(1))].decode(errors="ignore"))
    return (*document.locate(position), message[: found.start()])


def scan(marked: str, *, template: str, blank_jinja: bool = True) -> list[Finding]:
    """Every finding in a flattened, marked document (`template` names the file of text before any marker).

    With `blank_jinja`, per-recipient Jinja is read as blank space, as for checking elements and attributes;
    without it, the document is read as mjml-python reads it, Jinja and all, to find why it does not compile.
    """
    return _Scan(_Document(marked, template), blank_jinja=blank_jinja).run()
