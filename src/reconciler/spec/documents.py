"""The document kinds of a workspace: Settings, List, Field, Segment and Campaign.

Workflows, with their step tree, live in `spec.workflow`. Every field carries a docstring: `reconciler schema`
publishes them, so editors show the same help a reader of this file gets.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AwareDatetime,
    Discriminator,
    Field,
    NonNegativeFloat,
    PositiveInt,
    StrictBool,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from reconciler.spec.conditions import Condition
from reconciler.spec.types import (
    ClockTime,
    Duration,
    EnvName,
    Identifier,
    Language,
    MailAddress,
    Model,
    Slug,
    TemplateRef,
    TimeZone,
    TokenMailbox,
    Url,
    WorkspaceFile,
)


class Document(Model):
    """What every document has: a kind and a name."""

    name: Slug
    """Unique among documents of this kind: lowercase letters, digits and dashes."""
    description: str = ""
    """What this is for, in a sentence, for the people reviewing changes."""


# --- Settings -------------------------------------------------------------------------------------------


class Organization(Model):
    """Who sends the mail; shown in every footer and on the subscriber pages."""

    name: str = Field(min_length=1)
    """The organization's name, as subscribers know it."""
    postal_address: str = Field(min_length=1)
    """The physical postal address every marketing message must show (CAN-SPAM)."""
    privacy_policy_url: Url | None = None
    """Linked from the preference center and subscribe forms."""
    website: Url | None = None
    """The organization's home page."""


class Sender(Model):
    """An identity mail is sent as."""

    from_: MailAddress = Field(alias="from")
    """The From header, e.g. "Acme News <news@acme.example>"."""
    reply_to: MailAddress | None = None
    """Where replies go, when not to the From address."""


class Rate(Model):
    """Limits that hold across every campaign and workflow using the transport."""

    per_second: PositiveInt | None = None
    """At most this many messages a second."""
    per_minute: PositiveInt | None = None
    """At most this many messages a minute."""
    per_hour: PositiveInt | None = None
    """At most this many messages an hour."""
    per_day: PositiveInt | None = None
    """At most this many messages a day."""

    def limits(self) -> list[tuple[int, float]]:
        """Each limit set, as (messages, seconds): what a token bucket, in memory or shared, is made of."""
        periods = {"per_second": 1.0, "per_minute": 60.0, "per_hour": 3600.0, "per_day": 86400.0}
        return [(limit, seconds) for key, seconds in periods.items() if (limit := getattr(self, key))]


class Dkim(Model):
    """DKIM signing; the signature covers the unsubscribe headers."""

    domain: str = Field(min_length=3)
    """The signing domain (d=), normally the From domain."""
    selector: str = Field(min_length=1)
    """The selector (s=): the key is published at <selector>._domainkey.<domain>."""
    private_key_env: EnvName
    """The environment variable holding the PEM private key."""


class SmtpTransport(Model):
    """Send through an SMTP server (a relay, an ESP, or your own MTA)."""

    type: Literal["smtp"]
    """smtp."""
    host: str = Field(min_length=1)
    """The SMTP server's host name."""
    port: int = Field(default=587, ge=1, le=65535)
    """The SMTP port: 587 for STARTTLS, 465 for TLS, 25 for none."""
    security: Literal["none", "starttls", "tls"] = "starttls"
    """none, starttls (upgrade after connecting) or tls (TLS from the start); certificates are checked."""
    username: str | None = None
    """The AUTH user name, when the server wants one."""
    password_env: EnvName | None = None
    """The environment variable holding the AUTH password."""
    max_connections: int = Field(default=4, ge=1, le=100)
    """Connections kept open in parallel."""
    rate: Rate = Rate()
    """Sending limits."""
    dkim: Dkim | None = None
    """Sign messages with DKIM."""
    retry_for: Duration = timedelta(days=3)
    """How long temporary failures (4xx, dropped connections) are retried before the message fails."""
    on_uncertain: Literal["skip", "resend"] = "skip"
    """A message cut off after its data was sent may have arrived: skip it (default) or resend it."""
    ca_file: str | None = None
    """A PEM file of CAs to trust for this server's certificate instead of the system's (a private CA)."""
    timeout: float = Field(default=60.0, gt=0, le=600)
    """Seconds to wait for each reply of the server."""

    @model_validator(mode="after")
    def _credentials_together(self) -> SmtpTransport:
        if bool(self.username) != bool(self.password_env):
            raise ValueError("username and password_env go together: give both or neither")
        return self


class OutboxTransport(Model):
    """Write each message as an .eml file instead of sending it (the default: nothing needs an SMTP server)."""

    type: Literal["outbox"]
    """outbox."""
    path: str = ".state/outbox"
    """The folder, relative to the workspace, that receives the .eml files."""


def _transport_type(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"<{kind}>" if kind in ("smtp", "outbox") else None


Transport = Annotated[
    Union[Annotated[SmtpTransport, Tag("<smtp>")], Annotated[OutboxTransport, Tag("<outbox>")]],  # noqa: UP007
    Discriminator(
        _transport_type,
        custom_error_type="transport_type",
        custom_error_message="a transport needs type: smtp or type: outbox",
    ),
]


class Defaults(Model):
    """What campaigns and workflows use when they do not say."""

    sender: Slug
    """A key of `senders`."""
    transport: Slug = "outbox"
    """A key of `transports`."""


class Tracking(Model):
    """Open and click tracking."""

    opens: StrictBool = True
    """Add a tracking pixel."""
    clicks: StrictBool = True
    """Rewrite links through the click redirect."""
    geoip_database: WorkspaceFile | None = None
    """A MaxMind GeoIP2/GeoLite2 or DB-IP country (or city) database (.mmdb) in the workspace: reports then show
    the country each open and click came from (only the country is kept, never the address). The daemon's
    environment variable RECONCILER_GEOIP_DATABASE overrides it with a path anywhere on the server."""


class QuietHours(Model):
    """Marketing mail waits while it is night for the contact."""

    start: ClockTime
    """When quiet hours begin, in the contact's time zone."""
    end: ClockTime
    """When they end; waiting messages go out then."""


class FrequencyCap(Model):
    """At most `max` marketing messages per contact in any `per` period; more are deferred."""

    max: PositiveInt
    """Messages allowed in the period."""
    per: Duration
    """The period."""


class Api(Model):
    """The HTTP API."""

    token_env: EnvName = "RECONCILER_API_TOKEN"
    """The environment variable holding the API bearer token."""


def _default_transports() -> dict[str, SmtpTransport | OutboxTransport]:
    return {"outbox": OutboxTransport(type="outbox")}


class Settings(Document):
    """The workspace's settings; exactly one per workspace."""

    kind: Literal["Settings"]
    """Settings."""
    organization: Organization
    """Who sends."""
    public_url: Url
    """Base URL of the daemon's web service: every unsubscribe, preference and tracking link starts with it."""
    timezone: TimeZone = "UTC"
    """Time zone for contacts without one."""
    signing_key_env: EnvName = "RECONCILER_SECRET"
    """The environment variable holding the key that signs every token in a link."""
    senders: dict[Slug, Sender] = Field(min_length=1)
    """Named From identities."""
    transports: dict[Slug, Transport] = Field(default_factory=_default_transports)
    """Named ways to deliver mail; without any, an `outbox` that writes .eml files."""
    defaults: Defaults
    """Defaults for campaigns and workflows."""
    tracking: Tracking = Tracking()
    """Default tracking; campaigns may override it."""
    schedule_grace: Duration = timedelta(hours=6)
    """A scheduled send found this late (the daemon was down, or send_at is in the past) waits for confirmation
    (`reconciler apply --confirm NAME`) instead of going out unexpectedly."""
    quiet_hours: QuietHours | None = None
    """Hours in which marketing mail is held back."""
    frequency_cap: FrequencyCap | None = None
    """A limit on marketing messages per contact."""
    api: Api = Api()
    """The HTTP API: where its bearer token comes from."""
    unsubscribe_address: TokenMailbox | None = None
    """A mailbox whose mail reaches reconciler (`reconciler inbound` from your MTA, or the Postmark or Amazon SES
    inbound webhook), e.g. unsubscribe@mail.acme.example: the mailto of List-Unsubscribe becomes
    unsubscribe+<token>@mail.acme.example, so a mail client's opt-out by email unsubscribes at once. Without it the
    mailto goes to the sender's reply_to with the token in the subject, where a person must act on it."""


# --- Lists and fields -------------------------------------------------------------------------------


class MailingList(Document):
    """A topic a contact can subscribe to, named from the subscriber's point of view."""

    kind: Literal["List"]
    """List."""
    title: str = Field(min_length=1)
    """Shown on the preference center, e.g. "Offers and discounts"."""
    visibility: Literal["public", "private"] = "public"
    """public lists appear on the preference center; private ones do not."""
    opt_in: Literal["single", "double"] = "single"
    """double sends a confirmation email before the first send."""
    category: Literal["marketing", "transactional"] = "marketing"
    """transactional mail (receipts) is not stopped by a marketing unsubscribe."""
    language: Language | None = None
    """The language its subscribers read (de, pl, pt-BR): the unsubscribe and preference pages and the double opt-in
    email speak it to contacts without a locale of their own. Unset: English."""


def marketing_lists(lists: Mapping[str, MailingList]) -> list[str]:
    """The names of the marketing lists among `lists`, in their order: those an unsubscribe from everything
    leaves (transactional lists, receipts, stay)."""
    return [name for name, found in lists.items() if found.category == "marketing"]


FieldType = Literal["string", "number", "integer", "boolean", "date", "datetime", "list"]


class CustomField(Model):
    """A typed piece of data held for each contact."""

    kind: Literal["Field"]
    """Field."""
    name: Identifier
    """Lowercase letters, digits and underscores; templates read it as contact.<name>."""
    type: FieldType
    """string, number, integer, boolean, date, datetime or list."""
    description: str = ""
    """What the data means and where it comes from."""


# --- Segments ---------------------------------------------------------------------------------------


class OrderBy(Model):
    """Sort order for a top-N segment."""

    field: str
    """The field to sort by."""
    direction: Literal["asc", "desc"] = "desc"
    """desc puts the largest first."""


class Segment(Document):
    """A filtered sub-audience, evaluated when a campaign starts sending."""

    kind: Literal["Segment"]
    """Segment."""
    lists: list[Slug] = []
    """Base audience: subscribed members of any of these lists (all contacts when empty)."""
    where: Condition | None = None
    """The condition members meet."""
    order_by: OrderBy | None = None
    """Sort order, for `limit`."""
    limit: PositiveInt | None = None
    """Keep only the first N members by `order_by` ("top 100 customers")."""

    @field_validator("limit")
    @classmethod
    def _limit_needs_order(cls, limit: int | None, info: ValidationInfo) -> int | None:
        """Reported at `limit` itself; an order_by with errors of its own is missing from `info.data` and says
        nothing more here."""
        if limit is not None and "order_by" in info.data and info.data["order_by"] is None:
            raise ValueError("needs order_by, or the top N would be arbitrary")
        return limit


# --- Campaigns --------------------------------------------------------------------------------------


class LocalSendTime(Model):
    """The same wall-clock time in each contact's own time zone."""

    local_time: ClockTime
    """The time of day, e.g. "09:00"."""
    date: date
    """The day, e.g. 2026-11-27."""


_DATETIME_SCHEMA = {
    "type": "string",
    "format": "date-time",
    "pattern": r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$",
    "description": "An ISO 8601 date-time with a UTC offset, e.g. 2026-11-27T09:00:00+01:00.",
}


def _send_at_kind(value: Any) -> str | None:
    if value == "now":
        return "<now>"
    if isinstance(value, dict | LocalSendTime):
        return "<local>"
    return "<at>"


SendAt = Annotated[
    Union[  # noqa: UP007
        Annotated[Literal["now"], Tag("<now>")],
        Annotated[AwareDatetime, Tag("<at>"), WithJsonSchema(_DATETIME_SCHEMA)],
        Annotated[LocalSendTime, Tag("<local>")],
    ],
    Discriminator(_send_at_kind),
]


class Audience(Model):
    """Who receives a campaign."""

    lists: list[Slug] = Field(min_length=1)
    """Subscribed members of any of these lists."""
    segments: list[Slug] = []
    """Members of any of these segments, intersected with the lists."""
    exclude: Exclusion | None = None
    """Contacts left out even when they match."""


class Exclusion(Model):
    """Contacts to leave out."""

    lists: list[Slug] = []
    """Members of these lists."""
    segments: list[Slug] = []
    """Members of these segments."""


class CampaignTracking(Model):
    """Tracking for one campaign; unset switches follow Settings."""

    opens: StrictBool | None = None
    """Add a tracking pixel."""
    clicks: StrictBool | None = None
    """Rewrite links through the click redirect."""


class Utm(Model):
    """UTM parameters added to every link to your own site."""

    source: str
    """utm_source."""
    medium: str = "email"
    """utm_medium."""
    campaign: str
    """utm_campaign."""
    term: str | None = None
    """utm_term."""
    content: str | None = None
    """utm_content."""


class Goal(Model):
    """The conversion a campaign is judged by."""

    event: str = Field(min_length=1)
    """The event that counts as a conversion, e.g. purchase."""
    within: Duration = timedelta(days=7)
    """How long after the message a conversion still counts."""
    value: str | None = None
    """The event property holding revenue, summed in reports."""


class Stage(Model):
    """A follow-up to the same audience, sent some time after the first message."""

    name: Slug
    """Unique within the campaign."""
    template: TemplateRef
    """The template of this stage."""
    subject: str = Field(min_length=1)
    """The subject line (Jinja)."""
    preheader: str = ""
    """The preview text."""
    after: Duration
    """How long after the previous stage started."""
    only: Literal["not_opened", "not_clicked", "opened", "clicked"] | None = None
    """Send only to those who did (not) open or click the earlier messages."""


class Campaign(Document):
    """A message to an audience at a time, possibly with follow-up stages."""

    kind: Literal["Campaign"]
    """Campaign."""
    subject: str = Field(min_length=1)
    """The subject line; Jinja, e.g. "{{ contact.first_name | default('Hi') }}, 30% off"."""
    preheader: str = ""
    """The preview text shown after the subject in the inbox."""
    template: TemplateRef
    """The template under templates/, without .mjml."""
    sender: Slug | None = None
    """A key of Settings `senders` (default: Settings defaults)."""
    transport: Slug | None = None
    """A key of Settings `transports` (default: Settings defaults)."""
    audience: Audience
    """Who receives it."""
    send_at: SendAt = "now"
    """now, an ISO 8601 date-time with offset, or {local_time, date} for each contact's own time zone."""
    status: Literal["draft", "scheduled", "paused", "cancelled"] = "draft"
    """Nothing is sent until scheduled; paused and cancelled take effect within one tick."""
    tracking: CampaignTracking = CampaignTracking()
    """Tracking switches for this campaign."""
    utm: Utm | None = None
    """UTM parameters for links."""
    goal: Goal | None = None
    """The conversion to measure."""
    cost: NonNegativeFloat | None = None
    """What the campaign cost, for ROI in reports."""
    stages: list[Stage] = []
    """Follow-ups to the same audience."""


Audience.model_rebuild()
