"""Every catalog is complete: each text of the subscriber pages and the confirmation email is translated into every
language we ship, with the same placeholders, and the compiled catalog the package loads is the one its .po says."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from reconciler.i18n import LOCALES, catalog_languages

pytestmark = pytest.mark.no_state  # the PostgreSQL pass of the suite leaves it out

PACKAGE = LOCALES.parent.parent
LANGUAGES = ("de", "pl", "it", "fr", "es")
PLACEHOLDER = re.compile(r"%\(\w+\)s")


def extracted() -> set[str]:
    """The texts `make catalogs` extracts, found as it finds them (the same mapping file)."""
    with (LOCALES.parent / "babel.cfg").open() as config:
        method_map, options_map = parse_mapping_cfg(config)  # type: ignore[no-untyped-call]
    found = {message for _, _, message, *_ in extract_from_dir(str(PACKAGE), method_map, options_map)}
    return {m if isinstance(m, str) else m[0] for m in found}


def catalog(language: str) -> Catalog:
    with (LOCALES / language / "LC_MESSAGES/reconciler.po").open("rb") as po:
        return read_po(po, locale=language)


def test_the_pages_have_text_to_translate() -> None:
    texts = extracted()
    assert "Your email preferences" in texts and "Please confirm your subscription to %(list)s" in texts
    assert "Every email on the topics I chose" in texts  # marked in Python code with N_()
    assert set(LANGUAGES) | {"en"} <= set(catalog_languages())


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_text_is_translated_with_its_placeholders(language: str) -> None:
    texts, found = extracted(), catalog(language)
    messages = {m.id: m for m in found if m.id}
    assert sorted(texts - set(messages)) == [], f"{language}: not in the catalog (run `make catalogs`)"
    assert sorted(set(messages) - texts) == [], f"{language}: no longer used (run `make catalogs`)"
    for text, message in messages.items():
        translated = message.string
        assert isinstance(text, str) and isinstance(translated, str), f"{language}: {text!r} has plural forms"
        assert translated.strip(), f"{language}: {text!r} is not translated"
        assert not message.fuzzy, f"{language}: {text!r} is marked fuzzy"
        assert sorted(PLACEHOLDER.findall(translated)) == sorted(PLACEHOLDER.findall(text)), (language, text)
        assert translated != text or text.startswith("%("), f"{language}: {text!r} is left in English"


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_compiled_catalog_is_the_po_file_compiled(language: str) -> None:
    compiled = io.BytesIO()
    write_mo(compiled, catalog(language))
    shipped = Path(LOCALES / language / "LC_MESSAGES/reconciler.mo").read_bytes()
    assert shipped == compiled.getvalue(), f"{language}: reconciler.mo is out of date (run `make catalogs`)"
