"""Languages: which one a subscriber reads, its translations, and dates and numbers written the way it writes them.

The pages a subscriber sees and the double opt-in email speak the subscriber's language: their contact's
`locale` when we know it and have a catalog for it, else the list's `language`, else what their browser asks for
(pages only), else English. Catalogs are gettext catalogs (`locales/<language>/LC_MESSAGES/reconciler.po`, compiled
to `.mo` beside it; `make catalogs` extracts, merges and compiles them). A locale such as `de-AT` uses the German
catalog and Austrian formats.

This module is a leaf: it knows babel and nothing of ours, so the spec can validate a List's language with it.
"""

from __future__ import annotations

import gettext
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.localedata import locale_identifiers
from babel.numbers import format_decimal
from babel.support import Translations

DOMAIN = "reconciler"
LOCALES = Path(__file__).parent / "locales"
DEFAULT = "en"
"""The language of the page templates' source text, and the answer when nothing else is known."""
_WIDE = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\d*\.)?\d{5,}")
"""A width or precision of 10,000 or more in a format: a template could build a value of any size with it."""
_LANGUAGE_RANGE = re.compile(r"^[A-Za-z]{1,8}(?:[-_][A-Za-z0-9]{1,8})*$")


def N_(message: str) -> str:
    """Marks text in Python code for the catalogs; it is translated where it is shown."""
    return message


def catalog_languages() -> tuple[str, ...]:
    """The languages we have a catalog for (English is the source text: its catalog is complete by definition)."""
    return _catalog_languages()


@lru_cache(maxsize=1)
def _catalog_languages() -> tuple[str, ...]:
    found = {path.parent.parent.name for path in LOCALES.glob(f"*/LC_MESSAGES/{DOMAIN}.mo")}
    return tuple(sorted(found | {DEFAULT}))


def parse_locale(value: str) -> Locale | None:
    """`value` (de, de-AT, de_AT, pt-BR) as a locale babel knows, or None."""
    if not _LANGUAGE_RANGE.match(value):
        return None
    try:
        return Locale.parse(value.replace("-", "_"))
    except (UnknownLocaleError, ValueError):
        return None


def locale_suggestions(value: str) -> dict[str, str]:
    """What a mistyped language may have meant: every known locale as written in a spec (`de-AT`), and English
    language names ("german") -> their code, for "did you mean"."""
    names = {name.lower(): code for code, name in Locale("en").languages.items() if parse_locale(code) is not None}
    if value.lower() in names:
        return {value: names[value.lower()]}
    return {identifier.replace("_", "-"): identifier.replace("_", "-") for identifier in locale_identifiers()}


@dataclass(frozen=True)
class Language:
    """The language a page or a confirmation email is written in: its catalog, and the locale that formats dates and
    numbers. Templates call its methods as `_`, `gettext`, `ngettext`, `format_date`, `format_number`."""

    tag: str
    """For `<html lang>`: de, de-AT, pt-BR."""
    locale: Locale
    translations: gettext.NullTranslations

    @property
    def code(self) -> str:
        """The catalog's language: de for de-AT."""
        return str(self.locale.language)

    def gettext(self, message: str, /, **values: Any) -> str:
        """`message` translated, with `%(name)s` placeholders filled from `values` (after translation, so a
        translator can move them)."""
        text = self.translations.gettext(message)
        return _fill(text, values) if values else text

    def ngettext(self, singular: str, plural: str, count: int, /, **values: Any) -> str:
        """The singular or plural form for `count` (as the language counts), with `%(count)s` and `values`."""
        text = self.translations.ngettext(singular, plural, count)
        return _fill(text, {"count": self.format_number(count), **values})

    def format_date(self, value: date | datetime | str, format: str = "long") -> str:
        """A date as this language writes it (`long`: 3. März 2031); ISO text is accepted."""
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return str(format_date(value, format=format, locale=self.locale))

    def format_datetime(self, value: datetime | str, format: str = "medium", tzinfo: Any = None) -> str:
        """A moment as this language writes it, in `tzinfo` (a zone name or tzinfo; default UTC)."""
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return str(format_datetime(value, format=format, tzinfo=tzinfo, locale=self.locale))

    def format_number(self, value: float | int) -> str:
        """A number with this language's separators: 1.234,5 in German, 1 234,5 in Polish."""
        return str(format_decimal(value, locale=self.locale))

    def functions(self) -> dict[str, Any]:
        """What a template is given to speak this language."""
        return {
            "_": self.gettext,
            "gettext": self.gettext,
            "ngettext": self.ngettext,
            "format_date": self.format_date,
            "format_datetime": self.format_datetime,
            "format_number": self.format_number,
            "language": self.tag,
        }


def _fill(text: str, values: dict[str, Any]) -> str:
    if _WIDE.search(text):
        raise ValueError(f"a width of 10,000 or more in {text[:60]!r}: text is never padded that far")
    return text % values


@lru_cache(maxsize=32)
def _translations(code: str) -> gettext.NullTranslations:
    if code == DEFAULT:
        return gettext.NullTranslations()
    return Translations.load(str(LOCALES), [code], DOMAIN)


@lru_cache(maxsize=256)
def _language(value: str) -> Language | None:
    locale = parse_locale(value)
    if locale is None or locale.language not in catalog_languages():
        return None
    return Language(str(locale).replace("_", "-"), locale, _translations(str(locale.language)))


def choose_language(candidates: Iterable[str | None]) -> Language:
    """The first of `candidates` (most wanted first: the contact's locale, the list's language, the browser's)
    that we have a catalog for; English when none is."""
    for candidate in candidates:
        if candidate:
            found = _language(candidate.strip())
            if found is not None:
                return found
    english = _language(DEFAULT)
    assert english is not None
    return english


def accept_language(header: str | None) -> list[str]:
    """The languages of an Accept-Language header, most wanted first (`*` and q=0 left out)."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate((header or "")[:500].split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        if tag and tag != "*" and quality > 0:
            ranked.append((-quality, index, tag))
    return [tag for _, _, tag in sorted(ranked)]
