"""One contact as it comes in (a CSV row of text, a JSONL line or an API body of JSON values) -> a typed `ContactRow`.

Imports and the API share this parser, so a value is accepted or refused the same way wherever it comes from. A
value is refused, with a sentence naming the field, when it could be stored but never used: a list or an object where
text belongs (it would be stored as Python's repr), an integer SQLite cannot hold, a NUL or a line break in a name
(every message to that contact would fail), an address whose local part needs SMTPUTF8.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from email_validator import EmailNotValidError, validate_email

from reconciler.clock import iso
from reconciler.errors import did_you_mean
from reconciler.spec import DesiredState
from reconciler.spec.contact import BUILTIN_FIELDS
from reconciler.state.contacts import ContactRow
from reconciler.words import a

_COUNTRY = re.compile(r"^[A-Z]{2}$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}
INTEGER_RANGE = (-(2**63), 2**63 - 1)
"""What SQLite stores as an integer; a larger one would come back as an approximate real number."""


def normalise_email(raw: str, *, sendable: bool = True) -> str:
    """Trimmed, syntax-checked (no DNS) and lowercased: one address, one contact. An internationalised domain is
    kept in Unicode (`mime.ascii_address` gives the form that is sent); a local part beyond ASCII is refused, since
    it needs SMTPUTF8, which reconciler does not send (`sendable=False`: looking up what an older version stored)."""
    if not isinstance(raw, str):
        raise ValueError(f"expected an address as text, found {_kind_of(raw)}")
    text = raw.strip()
    if not text:
        raise ValueError("empty")
    quick = _plain_address(text)
    if quick is not None:
        return quick
    try:
        checked = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{text!r} is not a valid email address: {exc}") from None
    if sendable and not checked.local_part.isascii():
        raise ValueError(
            f"{text!r}: the part before @ is not ASCII, which needs SMTPUTF8, which reconciler does not send "
            "(the message could never be delivered)"
        )
    return checked.normalized.lower()


_DOT_ATOM = re.compile(r"[a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~]+(?:\.[a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~]+)*\Z")
"""An unquoted ASCII local part (RFC 5322's dot-atom), which email_validator keeps as it is."""
_PLAIN_DOMAIN = re.compile(r"[A-Za-z0-9.-]+\Z")
ADDRESS_BYTES = 254
"""The longest address email_validator accepts (as given, normalised and with the domain in IDNA ASCII)."""


def _plain_address(text: str) -> str | None:
    """`normalise_email` of the common address, an ASCII dot-atom before the @ and an ASCII domain name, without
    email_validator's whole walk per address (most of an event's cost in the API): the domain is checked by
    email_validator once per domain (`_domain`), and the local part and lengths as it checks them. None for any
    other address, which email_validator checks whole (and words the refusal of)."""
    local, at, domain = text.partition("@")
    if not at or not _DOT_ATOM.match(local) or not _PLAIN_DOMAIN.match(domain):
        return None
    forms = _domain(domain)
    if forms is None:
        return None
    normalised, ascii_domain = forms
    if max(len(domain), len(normalised.encode()), len(ascii_domain)) + len(local) + 1 > ADDRESS_BYTES:
        return None
    return f"{local}@{normalised}".lower()


@lru_cache(maxsize=1024)
def _domain(domain: str) -> tuple[str, str] | None:
    """A domain as email_validator normalises it (and its IDNA ASCII form), or None when it refuses it."""
    try:
        checked = validate_email(f"a@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None
    return checked.domain, checked.ascii_domain


def _kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return "text"


def _text(value: Any, what: str = "text") -> str:
    """A value that must be text: JSON text, or CSV's cell."""
    if not isinstance(value, str):
        raise ValueError(f"expected {what}, found {_kind_of(value)}")
    if "\x00" in value:
        raise ValueError("contains a NUL character: remove it")
    return value.strip()


def convert(value: Any, type_: str, *, timezone: str) -> Any:
    """One cell as the Field type says; raises ValueError with a sentence a marketer understands."""
    if isinstance(value, dict) or (isinstance(value, list) and type_ != "list"):
        raise ValueError(f"expected {a(type_)}, found {_kind_of(value)}")
    if type_ == "string":
        return _text(value)
    if type_ in ("number", "integer"):
        return _number(value, type_)
    if type_ == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            value = str(value)
        word = _text(value, "true or false").lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"{value!r} is not true or false")
    if type_ == "date":
        try:
            return date.fromisoformat(_text(value, "a date as text")).isoformat()
        except ValueError as exc:
            if str(exc).startswith("expected"):
                raise
            raise ValueError(f"{value!r} is not a date (write 2026-11-27)") from None
    if type_ == "datetime":
        return _datetime(value, timezone)
    if type_ == "list":
        items = value if isinstance(value, list) else _text(value, "a list or text").split(";")
        if any(isinstance(item, list | dict | bool) or item is None for item in items):
            raise ValueError("expected a list of text or numbers (nothing nested)")
        return [_text(str(item)) for item in items if _text(str(item))]
    raise ValueError(f"unknown field type {type_}")


def _number(value: Any, type_: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{value!r} is not {a(type_)}")
    text = value.strip() if isinstance(value, str) else value
    try:
        number = float(str(text).replace(",", "")) if type_ == "number" else _integer(text)
    except (ValueError, OverflowError):
        raise ValueError(f"{value!r} is not a{'n' if type_ == 'integer' else ''} {type_}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    if isinstance(number, int) and not INTEGER_RANGE[0] <= number <= INTEGER_RANGE[1]:
        raise ValueError(f"{value!r} is out of range for an integer (at most 19 digits)")
    return number


def _integer(text: Any) -> int:
    if isinstance(text, int):
        return text
    if isinstance(text, float) and text.is_integer():
        return int(text)
    return int(str(text).replace(",", ""))


def _datetime(value: Any, timezone: str) -> str:
    text = _text(value, "a date-time as text")
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{value!r} is not a date-time (write 2026-11-27T09:00:00+01:00)") from None
    if moment.tzinfo is None:  # a naive time means the workspace's time zone
        moment = moment.replace(tzinfo=ZoneInfo(timezone))
    return iso(moment.astimezone(UTC))


@lru_cache(maxsize=1024)
def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ValueError, KeyError):
        return False
    return True


def _builtin(name: str, value: Any) -> str:
    text = _text(value)
    if _CONTROL.search(text):
        raise ValueError("contains a line break or a control character: it would break every message's headers")
    if name == "timezone":
        if not _known_zone(text):
            raise ValueError(f"{text!r} is not a time zone (write e.g. Europe/Warsaw)")
    elif name == "country":
        text = text.upper()
        if not _COUNTRY.match(text):
            raise ValueError(f"{value!r} is not a two-letter country code (write e.g. PL)")
    elif name == "locale" and not _LOCALE.match(text):
        raise ValueError(f"{value!r} is not a locale (write e.g. en-GB)")
    return text


class RowParser:
    """Turns one raw row (a mapping of column to value) into a ContactRow, per the workspace's fields."""

    def __init__(self, fields: Mapping[str, str], *, timezone: str) -> None:
        """`fields`: the custom fields and their types (the API passes what was last applied)."""
        self.fields = {**BUILTIN_FIELDS, **fields}
        self.custom = set(fields)
        self.timezone = timezone

    @classmethod
    def for_workspace(cls, desired: DesiredState) -> RowParser:
        return cls(
            {name: f.type for name, f in desired.fields.items()},
            timezone=desired.timezone,
        )

    def parse(self, raw: Mapping[str, Any], *, status: str | None = None, evidence: str | None = None) -> ContactRow:
        """The row as typed values; raises RowProblems naming every bad value of the row, not only the first (a
        person fixing a file should not have to run it once per mistake). `status`: what an import's status column
        said (`import_columns.STATUS_WORDS`)."""
        problems: list[str] = []
        email = ""
        try:
            email = normalise_email(raw.get("email") or "")
        except ValueError as exc:
            problems.append(f"email: {exc}")
        builtins: dict[str, str] = {}
        fields: dict[str, Any] = {}
        tags: list[str] = []
        created_at = None
        for column, value in raw.items():
            if column not in self.fields:
                problems.append(
                    f"unknown field {column!r} ({did_you_mean(column, self.fields, otherwise='not a field')})"
                )
                continue
            if column == "email" or value is None or value == "" or value == []:
                continue
            try:
                if column == "tags":
                    tags = convert(value, "list", timezone=self.timezone)
                elif column == "created_at":
                    created_at = convert(value, "datetime", timezone=self.timezone)
                elif column in self.custom:
                    fields[column] = convert(value, self.fields[column], timezone=self.timezone)
                else:
                    builtins[column] = _builtin(column, value)
            except ValueError as exc:
                problems.append(f"{column}: {exc}")
        if problems:
            raise RowProblems(problems)
        return ContactRow.build(email, builtins, tags, fields, created_at, status=status, evidence=evidence)


class RowProblems(ValueError):
    """Every problem of one row, each a sentence `field: what is wrong`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)
