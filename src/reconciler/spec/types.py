"""Value types shared by every kind: names, durations, times, addresses.

Each type validates strictly and explains itself in its error, because a marketer reading
``send_at: not a date-time`` needs to know what to write instead. Every type also carries its JSON Schema so
`reconciler schema` gives editors the same rules as `validate`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time, timedelta
from email.utils import parseaddr
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Annotated, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    StrictBool,
    WithJsonSchema,
)
from pydantic_core import core_schema

from reconciler.errors import did_you_mean
from reconciler.i18n import locale_suggestions, parse_locale


class Model(BaseModel):
    """Base of every spec model: immutable, and a typo in a key is an error rather than silently ignored."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        populate_by_name=True,
        # the docstring under each field describes it in the editor schema; spec/schema.py reads them when it is
        # asked for (pydantic's use_attribute_docstrings parses every module's source at import: 0.3 s per command)
        str_strip_whitespace=False,
        allow_inf_nan=False,  # YAML's .nan and .inf: no comparison means anything with them, and JSON cannot hold them
    )


@dataclass(frozen=True)
class Matching:
    """``Annotated[str, Matching(...)]``: text that must match a pattern, with what to write when it does not."""

    pattern: str
    expected: str
    """Completes the sentence "'X' is not ...", with an example."""
    max_length: int = 64

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> Any:
        return {"type": "string", "pattern": self.pattern, "maxLength": self.max_length}

    def _check(self, value: str) -> str:
        if len(value) > self.max_length or not re.match(self.pattern, value):
            raise ValueError(f"{value!r} is not {self.expected}")
        return value


SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
Slug = Annotated[
    str,
    Matching(
        SLUG_PATTERN,
        "a valid name (use lowercase letters, digits and single dashes, e.g. black-friday-2030; at most 64 characters)",
    ),
]
"""A name: lowercase letters, digits and dashes, unique per kind."""

Identifier = Annotated[
    str,
    Matching(
        r"^[a-z][a-z0-9_]*$",
        "a valid field name (use lowercase letters, digits and underscores, starting with a letter, "
        "e.g. spend_2020: templates read it as contact.spend_2020)",
    ),
]
"""A custom field name, usable in templates as ``contact.<name>``."""

StepId = Annotated[
    str, Matching(r"^[a-z0-9][a-z0-9_-]*$", "a valid step id (use lowercase letters, digits, '-' and '_')")
]
"""A workflow step's id."""

TEMPLATE_PATTERN = r"^[a-z0-9][a-z0-9_-]*(?:/[a-z0-9][a-z0-9_-]*)*$"
_TEMPLATE = re.compile(TEMPLATE_PATTERN)


def _template_ref(value: str) -> str:
    if value.endswith(".mjml"):
        raise ValueError(f"{value!r}: leave out the .mjml extension (write {value[:-5]!r})")
    if not _TEMPLATE.match(value):
        raise ValueError(
            f"{value!r} is not a template name (a path under templates/ without extension, "
            "e.g. offers/black-friday for templates/offers/black-friday.mjml)"
        )
    return value


TemplateRef = Annotated[
    str, AfterValidator(_template_ref), WithJsonSchema({"type": "string", "pattern": TEMPLATE_PATTERN})
]
"""A template under templates/, without the .mjml extension."""


def _workspace_file(value: str) -> str:
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or "\\" in value:
        raise ValueError(
            f"{value!r} is not a path inside the workspace (write it relative to the workspace, "
            "e.g. geo/country.mmdb, without .. or a leading /)"
        )
    return value


WorkspaceFile = Annotated[str, AfterValidator(_workspace_file), WithJsonSchema({"type": "string"})]
"""A file inside the workspace, relative to its root: nothing named in the YAML is read from elsewhere."""

DURATION_PATTERN = r"^(?=[0-9])(?:[0-9]+w)?(?:[0-9]+d)?(?:[0-9]+h)?(?:[0-9]+m)?$"
_DURATION = re.compile(DURATION_PATTERN)
_PART = re.compile(r"([0-9]+)([mhdw])")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
LONGEST = timedelta(days=3660)
"""No wait, window or offset is longer than ten years: a longer one is a typo, and would not fit a calendar."""


def parse_duration(value: Any) -> timedelta:
    """Turn ``30m``/``12h``/``2d``/``1w`` (or ``1d12h``) into a timedelta; anything else is a mistake worth
    explaining."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str) or not _DURATION.match(value):
        raise ValueError(f"{value!r} is not a duration (write a number and a unit: 30m, 12h, 2d or 1w, or 1d12h)")
    parts = _PART.findall(value)
    if sum(int(number) for number, _ in parts) > LONGEST.days * 24 * 60:
        raise ValueError(f"{value} is longer than 10 years (write at most 3660d)")
    total = sum((int(number) * _UNITS[unit] for number, unit in parts), timedelta())
    if total > LONGEST:
        raise ValueError(f"{value} is longer than 10 years (write at most 3660d)")
    if not total:
        raise ValueError(f"{value} is zero (a duration is at least 1m)")
    return total


def format_duration(value: timedelta) -> str:
    """The shortest spelling of a duration in the spec's own units."""
    minutes = int(value.total_seconds() // 60)
    for unit, size in (("w", 7 * 24 * 60), ("d", 24 * 60), ("h", 60)):
        if minutes % size == 0:
            return f"{minutes // size}{unit}"
    return f"{minutes}m"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "examples": ["30m", "12h", "2d", "1w"]}),
]
"""A length of time: a number and a unit, m (minutes), h (hours), d (days) or w (weeks)."""

CLOCK_PATTERN = r"^(?:[01][0-9]|2[0-3]):[0-5][0-9]$"
_CLOCK = re.compile(CLOCK_PATTERN)


def _parse_clock(value: Any) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, str) and _CLOCK.match(value):
        hours, minutes = value.split(":")
        return time(int(hours), int(minutes))
    raise ValueError(f'{value!r} is not a time of day (write 24-hour HH:MM in quotes, e.g. "09:00")')


ClockTime = Annotated[
    time,
    BeforeValidator(_parse_clock),
    PlainSerializer(lambda t: t.strftime("%H:%M"), return_type=str),
    WithJsonSchema({"type": "string", "pattern": CLOCK_PATTERN, "examples": ["09:00"]}),
]
"""A time of day, 24-hour ``HH:MM``."""


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        hint = did_you_mean(value, _zone_names(), otherwise="use an IANA name such as Europe/Warsaw or UTC")
        raise ValueError(f"{value!r} is not a known time zone ({hint})") from None
    return value


TimeZone = Annotated[str, AfterValidator(_timezone), WithJsonSchema({"type": "string", "examples": ["UTC"]})]
"""An IANA time zone name such as Europe/Warsaw."""

ENV_PATTERN = r"^[A-Z_][A-Z0-9_]*$"
_ENV = re.compile(ENV_PATTERN)


def _env_name(value: str) -> str:
    if not _ENV.match(value):
        # Never echo the value: someone may have pasted the secret itself here.
        raise ValueError(
            "must name an environment variable (uppercase letters, digits and _, e.g. SMTP_PASSWORD), "
            "never hold the secret itself"
        )
    return value


EnvName = Annotated[str, AfterValidator(_env_name), WithJsonSchema({"type": "string", "pattern": ENV_PATTERN})]
"""The name of an environment variable that holds a secret on the server."""


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL (e.g. https://mail.example.com)")
    return value


Url = Annotated[str, AfterValidator(_url), WithJsonSchema({"type": "string", "format": "uri"})]
"""An absolute http or https URL."""

_ADDR_SPEC = re.compile(r"^[^@\s<>\"]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$")


def _address(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError("an address must be on one line")
    _, addr = parseaddr(value)
    if not _ADDR_SPEC.match(addr):
        raise ValueError(f'{value!r} is not an email address (e.g. "Acme News <news@acme.example>")')
    return value


MailAddress = Annotated[str, AfterValidator(_address), WithJsonSchema({"type": "string"})]
"""An email address, optionally with a display name: ``"Acme News <news@acme.example>"``."""

MAILBOX_PATTERN = (
    r"^[A-Za-z0-9!#$%&'*=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)+$"
)
_MAILBOX = re.compile(MAILBOX_PATTERN)
MAILBOX_LOCAL_MAX = 28
"""The part before @ of a mailbox a token is added to: 64 characters at most (RFC 5321) less `+` and the token's
35 (a 13-digit id, a dot, 20 characters of signature)."""


def _token_mailbox(value: str) -> str:
    if not _MAILBOX.match(value):
        raise ValueError(
            f"{value!r} is not a bare address a token can be added to (write it without a display name, "
            "without '+' and in ASCII, e.g. unsubscribe@mail.acme.example)"
        )
    local = value.rpartition("@")[0]
    if len(local) > MAILBOX_LOCAL_MAX:
        raise ValueError(
            f"{value!r}: the part before @ has {len(local)} characters; at most {MAILBOX_LOCAL_MAX} leave room for "
            "the token (an address may have 64 before @)"
        )
    return value


TokenMailbox = Annotated[
    str, AfterValidator(_token_mailbox), WithJsonSchema({"type": "string", "pattern": MAILBOX_PATTERN})
]
"""A bare address (``unsubscribe@mail.acme.example``) to which a signed token is added as ``+<token>``."""


def _property_name(value: str) -> str:
    if '"' in value:
        raise ValueError(
            f"{value!r}: an event property name with a double quote can never match (SQLite's JSON paths cannot "
            "name it)"
        )
    return value


PropertyName = Annotated[str, Field(min_length=1), AfterValidator(_property_name)]
"""The name of an event property, as the API and imports store it (any text without a double quote)."""

Scalar = StrictBool | int | float | str
"""A literal value in a condition: text, a number, true/false, or an ISO date written as text."""


def _language(value: str) -> str:
    if parse_locale(value) is None:
        known = locale_suggestions(value)
        guess = f"did you mean {known[value]!r}?" if value in known else did_you_mean(value, known)
        raise ValueError(
            f"{value!r} is not a language babel knows ({guess + ' ' if guess else ''}write a code such as en, de, "
            "pl or pt-BR)"
        )
    return value


Language = Annotated[
    str, AfterValidator(_language), WithJsonSchema({"type": "string", "examples": ["en", "de", "pl", "pt-BR"]})
]
"""A language, as a BCP 47 code babel knows: de, pl, pt-BR."""
