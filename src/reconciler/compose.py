"""Composing messages: one message definition compiled once, then per recipient the context, the signed links, the
bytes and (last) the DKIM signature.

A `Definition` holds plain values only, so a render process builds the same `Composer` from it as the sending
process would; `RenderPool` is that process, which renders while the daemon talks SMTP on a server's second core.
`preview` is what `reconciler render` and the "view online" page show; `compose_test_send` is what `reconciler
send-test` sends: the same composition, with no ledger row behind it.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import secrets
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal
from urllib.parse import quote, urlsplit

from reconciler.errors import ReconcilerError, UsageError, did_you_mean
from reconciler.i18n import choose_language
from reconciler.mime import (
    DkimKey,
    HeaderValueError,
    QpEncoder,
    Skeleton,
    addr_spec,
    address_domain,
    ascii_address,
    mailbox,
    qp,
    unsubscribe_mailto,
)
from reconciler.pages import confirmation_part
from reconciler.plan.content import campaign_content, step_content
from reconciler.spec import DesiredState
from reconciler.spec.contact import Contact
from reconciler.spec.documents import MailingList, OutboxTransport, SmtpTransport, Tracking
from reconciler.spec.workflow import SendStep, walk_steps
from reconciler.state import keys, ledger, records
from reconciler.state import settings as runtime_settings
from reconciler.state.content import MessageContent
from reconciler.state.ledger import CONFIRMATION_SOURCE, DueRow, Source
from reconciler.state.pages import StoredPages
from reconciler.state.postgres import StateDatabase
from reconciler.state.settings import RuntimeSettings
from reconciler.templates import (
    MessageTemplate,
    RenderedMessage,
    StrictFields,
    TemplateSet,
    prepare_message,
    template_contact,
)
from reconciler.tokens import Signer, base36

UTM_ORDER = ("source", "medium", "campaign", "term", "content")
RENDER_BATCH = 50
RENDER_POOL_MIN = 1000
"""Due messages from which a render process pays for its start (~0.5 s)."""


class CannotPrepare(ReconcilerError):
    """A message definition cannot be prepared (a DKIM key missing from the environment, a template that no longer
    compiles): its messages wait, untouched, and the reason is logged."""


def confirmation_content(runtime: RuntimeSettings, stored: StoredPages) -> MessageContent:
    """The double opt-in confirmation as a message definition, sent through the ledger like everything else: the
    workspace's own (templates/pages/confirmation.mjml, as last applied) or the built-in one, which speaks each
    recipient's language."""
    settings = runtime.settings
    part = confirmation_part(stored)
    return MessageContent(
        subject=part.subject,
        mjml=part.mjml,
        text_part=part.text_part,
        template=part.template,
        sender=runtime.default_sender,
        transport=settings.defaults.transport,
        tracking=Tracking(opens=False, clicks=False),
        organization=settings.organization,
    )


@dataclass(frozen=True)
class Message:
    """One recipient's finished message."""

    row_id: int
    recipient: str
    data: bytes
    message_id: str
    attempts: int
    first_attempt_at: str | None


@dataclass(frozen=True)
class Definition:
    """What a Composer is built from: plain values, so a render process can build the same one."""

    content: MessageContent
    source: str
    stage: str
    list_name: str
    """The first list the message is sent for ('' for none): its List-Id, and `list` in templates."""
    list_title: str
    public_url: str
    signer: Signer
    instance: str
    field_types: Mapping[str, str] = field(default_factory=dict)
    dkim: DkimKey | None = None
    kind: Literal["campaign", "workflow"] = "campaign"
    bulk: bool = True
    """Precedence: bulk (campaigns and marketing workflows)."""
    list_language: str | None = None
    """The first list's language: a confirmation speaks it to a contact without a locale we have a catalog for."""
    unsubscribe_address: str | None = None
    """Settings `unsubscribe_address`: List-Unsubscribe's mailto carries the token in that address."""
    subject_prefix: str = ""
    """Put before every rendered subject: TEST_PREFIX for a test send, so nobody takes it for the real one."""


def dkim_key(config: SmtpTransport | OutboxTransport | None) -> DkimKey | None:
    """The transport's DKIM key from the environment, or None when it does not sign."""
    dkim = config.dkim if isinstance(config, SmtpTransport) else None
    if dkim is None:
        return None
    pem = os.environ.get(dkim.private_key_env, "")
    if not pem:
        raise CannotPrepare(
            f"DKIM signing is on but {dkim.private_key_env} is not set (it holds the PEM private key); "
            "messages wait until it is"
        )
    return DkimKey(dkim.domain, dkim.selector, pem.encode())


def definition_for(db: StateDatabase, source: Source, *, runtime: RuntimeSettings, dkim: bool = True) -> Definition:
    """A source's definition from the state: its lists, the custom fields, the keys and the Settings applied."""
    lists: Mapping[str, MailingList] = records.lists(db)
    first = source.lists[0] if source.lists else ""
    return Definition(
        content=source.content,
        source=source.name,
        stage=source.stage,
        list_name=first,
        list_title=lists[first].title if first in lists else "",
        public_url=runtime.public_url,
        signer=keys.signer_for(db, runtime.settings.signing_key_env),
        instance=keys.instance_id(db),
        field_types=records.field_types(db),
        dkim=dkim_key(runtime.transport(source.content.transport)) if dkim else None,
        kind=source.kind,
        bulk=source.kind == "campaign" or not (source.transactional or source.name == CONFIRMATION_SOURCE),
        list_language=lists[first].language if first in lists else None,
        unsubscribe_address=runtime.settings.unsubscribe_address,
    )


class Composer:
    """Builds one message definition's messages."""

    def __init__(self, definition: Definition) -> None:
        self.definition = definition
        content = definition.content
        part = content.part(definition.stage) if definition.kind == "campaign" else content
        utm = content.utm.model_dump() if content.utm else {}
        website = content.organization.website
        self.template: MessageTemplate = prepare_message(
            part.mjml,
            subject=part.subject,
            preheader=part.preheader,
            text_part=part.text_part,
            opens=content.tracking.opens,
            clicks=content.tracking.clicks,
            utm=tuple((f"utm_{k}", str(utm[k])) for k in UTM_ORDER if utm.get(k)),
            utm_hosts=(urlsplit(website).hostname or "",) if website else (),
        )
        sender = content.sender
        self.reply_address = addr_spec(sender.reply_to or sender.from_)
        self.domain = address_domain(sender.from_)
        self.list = StrictFields({"name": definition.list_name, "title": definition.list_title})
        host = urlsplit(definition.public_url).hostname or "localhost"
        self.skeleton = Skeleton(
            from_=sender.from_,
            reply_to=sender.reply_to,
            list_id=(definition.list_title, f"{definition.list_name}.{host}") if definition.list_name else None,
            feedback_id=f"{definition.source}:{definition.stage or 'main'}:{definition.kind}:{host}",
            bulk=definition.bulk,
        )
        self.organization = StrictFields(content.organization.model_dump())
        self.public_url = definition.public_url.rstrip("/")
        self.encoder = QpEncoder()
        self.confirms = "confirm_url" in part.mjml
        """Only a double opt-in confirmation has a confirm link: other messages skip signing one."""

    def mailto(self, token: str) -> str:
        """List-Unsubscribe's mailto: the token in the address of Settings `unsubscribe_address`, where reconciler
        reads the mail (`inbound`); without one, in the subject of a mail to the sender's reply-to."""
        if self.definition.unsubscribe_address:
            return unsubscribe_mailto(self.definition.unsubscribe_address, token)
        return f"mailto:{self.reply_address}?subject=unsubscribe%20{token}"

    def message_id(self, row_id: int) -> str:
        return f"<{base36(row_id)}.{self.definition.instance}.r@{self.domain}>"

    def render(self, row_id: int, contact: Contact, *, unsubscribe_token: str | None = None) -> RenderedMessage:
        """One recipient's subject, HTML and text, with every link signed for their ledger row."""
        base, sign = self.public_url, self.definition.signer.sign
        context = {
            "contact": template_contact(contact, self.definition.field_types),
            "organization": self.organization,
            "campaign": {"name": self.definition.source},
            "list": self.list,
            "unsubscribe_url": f"{base}/u/{unsubscribe_token or sign('unsubscribe', row_id)}",
            "preferences_url": f"{base}/p/{sign('preferences', contact.id)}",
            "view_online_url": f"{base}/v/{sign('view', row_id)}",
        }
        if self.confirms:
            context["confirm_url"] = f"{base}/confirm/{sign('confirm', row_id)}"
            context |= choose_language([contact.locale, self.definition.list_language]).functions()
        click = None
        if self.template.tracks_clicks:

            def click(url: str) -> str:
                if not url.lower().startswith(("http://", "https://")):
                    return url
                return f"{base}/c/{sign('click', row_id, url)}?u={quote(url, safe='')}"

        pixel = f"{base}/o/{sign('open', row_id)}.gif" if self.template.tracks_opens else ""
        return self.template.render(context, click_url=click, pixel_url=pixel)

    def compose(self, row: DueRow, *, now: datetime, to: str | None = None) -> Message:
        """One recipient's message; raises HeaderValueError or a Jinja error for data that cannot be sent. `to`
        sends the contact's message to another address (a test send: rendered for the contact, addressed to
        whoever tests it)."""
        token = self.definition.signer.sign("unsubscribe", row.id)
        rendered = self.render(row.id, row.contact, unsubscribe_token=token)
        message_id = row.message_id or self.message_id(row.id)
        unsubscribe = (f"{self.public_url}/u/{token}", self.mailto(token))
        recipient = to or row.contact.email
        data = self.skeleton.build(
            to=mailbox(None, to) if to else mailbox(row.contact.display_name, row.contact.email),
            subject=self.definition.subject_prefix + rendered.subject,
            message_id=message_id,
            date=now,
            html=self.encoder.encode(rendered.html_chunks),
            text=qp(rendered.text),
            unsubscribe=unsubscribe,
        )
        if self.definition.dkim is not None:
            data = self.definition.dkim.sign(data)
        return Message(row.id, ascii_address(recipient), data, message_id, row.attempts, row.first_attempt_at)


TEST_PREFIX = "[TEST] "


def compose_test_send(definition: Definition, contact: Contact, *, to: str, now: datetime) -> Message:
    """The message `contact` would get, sent to `to` as a test (`reconciler send-test`).

    What differs from the real one, and why: the subject starts with TEST_PREFIX; opens and clicks are not tracked
    (no pixel, links go straight to their destination, with the campaign's UTM parameters as after the redirect),
    so the campaign's figures stay true; every link token (unsubscribe, preferences, view online, List-Unsubscribe)
    is signed with a throwaway key nobody holds, so the real pages answer them as an invalid link and a click, a
    mail client's one-click unsubscribe or a reply to the mailto can never act on the real contact; and the
    Message-ID is new each time, so a mailbox never folds two test sends into one."""
    content = definition.content
    untracked = content.tracking.model_copy(update={"opens": False, "clicks": False})
    test = replace(
        definition,
        content=content.model_copy(update={"tracking": untracked}),
        signer=Signer(secrets.token_bytes(32)),
        subject_prefix=TEST_PREFIX,
    )
    message_id = f"<{secrets.token_hex(6)}.test@{address_domain(content.sender.from_)}>"
    row = DueRow(0, 0, message_id, None, contact)
    return Composer(test).compose(row, now=now, to=to)


def workspace_definition(desired: DesiredState, target: str, *, signer: Signer, instance: str) -> Definition:
    """The definition of CAMPAIGN, CAMPAIGN:STAGE or WORKFLOW:STEP as the workspace files say (for `reconciler
    render` and `send-test`). NAME:PART is a campaign's stage when NAME is a campaign and no workflow has that name
    (or the campaign has a stage PART): campaigns and workflows have names of their own."""
    settings = desired.settings
    assert settings is not None, "only checked workspaces are rendered"
    templates = TemplateSet(desired.templates)
    name, _, step_id = target.partition(":")
    campaign = desired.campaigns.get(name)
    stage = ""
    if step_id and campaign is not None:
        stages = [s.name for s in campaign.stages]
        if step_id in stages or name not in desired.workflows:
            if step_id not in stages:
                known = ", ".join(stages) or "none"
                raise UsageError(f"campaign {name} has no stage named {step_id!r}; its stages: {known}")
            stage, step_id = step_id, ""
    if not step_id:
        if campaign is None and name in desired.workflows:
            ids = [step.id for _, step in walk_steps(desired.workflows[name].steps) if isinstance(step, SendStep)]
            known = ", ".join(f"{name}:{ident}" for ident in ids if ident) or "none has an id"
            raise UsageError(f"{name} is a workflow: name one of its send steps ({known})")
        if campaign is None:
            hint = did_you_mean(name, desired.campaigns, otherwise="campaigns: " + ", ".join(sorted(desired.campaigns)))
            raise UsageError(f"no campaign named {name!r}; {hint}")
        content = campaign_content(desired, campaign, templates)
        lists, bulk = list(campaign.audience.lists), True
        kind: Literal["campaign", "workflow"] = "campaign"
    else:
        workflow = desired.workflows.get(name)
        if workflow is None:
            hint = did_you_mean(name, desired.workflows, otherwise="workflows: " + ", ".join(sorted(desired.workflows)))
            raise UsageError(f"no workflow named {name!r}; {hint}")
        steps = {step.id: step for _, step in walk_steps(workflow.steps) if isinstance(step, SendStep) and step.id}
        if step_id not in steps:
            known = ", ".join(sorted(steps)) or "none"
            raise UsageError(f"workflow {name} has no send step with id {step_id!r}; send steps with an id: {known}")
        content = step_content(desired, workflow, steps[step_id], templates)
        trigger_list = getattr(workflow.trigger, "subscribed", None)
        lists, kind, bulk = [trigger_list] if trigger_list else [], "workflow", workflow.category == "marketing"
    first = next((n for n in lists if n in desired.lists), "")
    return Definition(
        content=content,
        source=name,
        stage=stage,
        list_name=first,
        list_title=desired.lists[first].title if first else "",
        public_url=settings.public_url,
        signer=signer,
        instance=instance,
        field_types={field_name: f.type for field_name, f in desired.fields.items()},
        kind=kind,
        bulk=bulk,
        unsubscribe_address=settings.unsubscribe_address,
    )


def preview(definition: Definition, contact: Contact, *, row_id: int = 0) -> RenderedMessage:
    """A message as its recipient sees it, for `reconciler render` and the "view online" page."""
    return Composer(definition).render(row_id, contact)


def view_online(db: StateDatabase, row_id: int) -> str | None:
    """A sent campaign message's HTML as its recipient got it, or None when there is no such message."""
    found = ledger.sent_message(db, row_id)
    if found is None:
        return None
    definition = definition_for(db, found.source, runtime=runtime_settings.load(db), dkim=False)
    return preview(definition, found.row.contact, row_id=row_id).html


_COMPOSERS: dict[str, Composer] = {}


def compose_batch(
    key: str, definition: Definition, rows: Sequence[DueRow], now: datetime
) -> list[Message | tuple[int, str]]:
    """Messages for `rows`, or (row id, why not) for a contact whose data cannot be sent. Runs in this process or in
    a render process, which keeps one Composer per source (`key`)."""
    composer = _COMPOSERS.get(key)
    if composer is None:
        if len(_COMPOSERS) > 16:
            _COMPOSERS.clear()
        composer = _COMPOSERS[key] = Composer(definition)
    out: list[Message | tuple[int, str]] = []
    for row in rows:
        try:
            out.append(composer.compose(row, now=now))
        except HeaderValueError as exc:
            out.append((row.id, f"could not build the message: {exc}"))
        except Exception as exc:  # a template can fail on one contact's data in ways Jinja does not classify
            out.append((row.id, f"could not render the template for this contact: {exc}"))
    return out


class RenderPool:
    """A process that renders while the sending process talks SMTP, for sends large enough to pay for its start;
    RECONCILER_RENDER_PROCESSES=0 keeps rendering in the sending process."""

    def __init__(self) -> None:
        self.executor: concurrent.futures.ProcessPoolExecutor | None = None

    def for_send(self, due: int) -> concurrent.futures.ProcessPoolExecutor | None:
        wanted = int(os.environ.get("RECONCILER_RENDER_PROCESSES", "1" if (os.cpu_count() or 1) > 1 else "0"))
        if wanted <= 0 or due < RENDER_POOL_MIN:
            return None
        if self.executor is None:
            self.executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=wanted, mp_context=multiprocessing.get_context("spawn"), initializer=_render_process
            )
        return self.executor

    def broken(self) -> None:
        """The process died: the next large send starts a new one."""
        self.executor = None

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)
            self.executor = None


def _render_process() -> None:
    """In the render process: the daemon decides when it stops (SIGTERM and Ctrl-C go to the daemon), and when the
    daemon dies (kill -9) this process follows it instead of waiting forever on its task queue."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()

    def follow_parent() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=follow_parent, daemon=True, name="follow-parent").start()
