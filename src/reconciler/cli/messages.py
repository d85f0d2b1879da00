"""Messages at the edges: `reconciler render`, a message as a recipient gets it, without sending anything;
`reconciler send-test`, that message sent once to someone who checks it, with nothing written to the state; and
`reconciler inbound`, the message a recipient's mail client sends back to unsubscribe, piped in by an MTA."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click

from reconciler.cli.main import address, checked, database, existing_database, main, workspace_root
from reconciler.errors import ReconcilerError, UsageError

if TYPE_CHECKING:
    from reconciler.compose import Definition
    from reconciler.inbound import Outcome
    from reconciler.spec.contact import Contact
    from reconciler.spec.documents import OutboxTransport as OutboxConfig
    from reconciler.spec.documents import SmtpTransport as SmtpConfig
    from reconciler.state.postgres import StateDatabase

EX_NOUSER = 67
"""sysexits.h: the addressee is unknown. The MTA bounces the message, with our line saying why."""
EX_TEMPFAIL = 75
"""sysexits.h: a temporary failure. The MTA keeps the message and delivers it again later."""


TARGET = "CAMPAIGN|CAMPAIGN:STAGE|WORKFLOW:STEP"
CONTACT_HELP = "Render for this contact of the state database (default: a sample contact with every field set)."


@main.command()
@click.argument("target", metavar=TARGET)
@click.option("--contact", "contact_email", metavar="EMAIL", help=CONTACT_HELP)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here: the whole message when it ends in .eml, the HTML otherwise (default: HTML to stdout).",
)
@click.pass_context
def render(ctx: click.Context, target: str, contact_email: str | None, output: Path | None) -> None:
    """Preview a message as a recipient gets it: the HTML, or the whole .eml with every header."""
    from reconciler.clock import SystemClock
    from reconciler.compose import Composer, preview, workspace_definition
    from reconciler.state import keys
    from reconciler.state.ledger import DueRow
    from reconciler.tokens import Signer

    root = workspace_root(ctx)
    desired = checked(root)
    assert desired.settings is not None
    db = existing_database(ctx, root)
    if db is not None:
        signer, instance = keys.signer_for(db, desired.settings.signing_key_env), keys.instance_id(db)
    else:
        signer, instance = Signer(b"preview"), "preview"
    definition = workspace_definition(desired, target, signer=signer, instance=instance)
    contact = _contact(db, definition, contact_email)
    try:
        if output is not None and output.suffix.lower() == ".eml":
            message = Composer(definition).compose(DueRow(0, 0, None, None, contact), now=SystemClock().now())
            output.write_bytes(message.data)
            click.echo(f"Wrote {output} ({len(message.data) / 1024:.1f} KB message)", err=True)
            return
        page = preview(definition, contact).html
    except Exception as exc:
        raise _cannot_build(target, contact, exc) from exc
    if output is None:
        click.echo(page)
        return
    output.write_text(page, encoding="utf-8")
    click.echo(f"Wrote {output} ({len(page.encode()) / 1024:.1f} KB of HTML)", err=True)


def _contact(db: StateDatabase | None, definition: Definition, email: str | None) -> Contact:
    """The contact `--contact` names, from the state database; without it, the sample contact."""
    from reconciler.state.contacts import find_contact
    from reconciler.templates import sample_contact

    if not email:
        return sample_contact(definition.field_types)
    found = find_contact(db, address(email, option="--contact")) if db is not None else None
    if found is None:
        raise UsageError(
            f"--contact: {email} is not a contact in the state database; import it first, "
            "or leave --contact out to use a sample contact"
        )
    return found


def _cannot_build(target: str, contact: Contact, exc: Exception) -> ReconcilerError:
    """What would make this contact's message fail at send time, said as `render` and `send-test` say it."""
    from reconciler.templates import describe_error

    reason, hint = describe_error(exc)
    return ReconcilerError(
        f"{target}: the message cannot be built for {contact.email}: {reason} ({hint}); at send time this "
        "contact's message would fail"
    )


@main.command("send-test")
@click.argument("target", metavar=TARGET)
@click.option("--to", "to", required=True, metavar="ADDRESS", help="The address the test message goes to.")
@click.option("--contact", "contact_email", metavar="EMAIL", help=CONTACT_HELP)
@click.pass_context
def send_test(ctx: click.Context, target: str, to: str, contact_email: str | None) -> None:
    """Send one test message to ADDRESS through the campaign's (or workflow's) transport, as the workspace files
    say it: the subject starts with [TEST], opens and clicks are not tracked, its unsubscribe and preference links
    act on nobody, and nothing is written to the state database (no ledger row, no count)."""
    import asyncio

    from reconciler.clock import SystemClock
    from reconciler.compose import compose_test_send, workspace_definition
    from reconciler.mime import addr_spec
    from reconciler.send import send_once
    from reconciler.tokens import Signer
    from reconciler.transports import OutboxTransport, make_transport

    recipient = address(to, option="--to", sendable=True)
    root = workspace_root(ctx)
    desired = checked(root)
    assert desired.settings is not None
    db = existing_database(ctx, root) if contact_email else None
    # the links of a test are signed with a throwaway key (compose_test_send): no key or instance id is read
    definition = workspace_definition(desired, target, signer=Signer(b"unused"), instance="test")
    contact = _contact(db, definition, contact_email)
    if db is not None:
        db.conn.close()
    name = definition.content.transport
    config = desired.settings.transports[name]
    definition = _with_secrets(definition, target, name, config)
    try:
        message = compose_test_send(definition, contact, to=recipient, now=SystemClock().now())
    except Exception as exc:
        raise _cannot_build(target, contact, exc) from exc
    transport = make_transport(name, config, root=root)
    envelope_from = addr_spec(definition.content.sender.from_)
    delivery = asyncio.run(send_once(transport, envelope_from, message))
    who = "the sample contact" if contact_email is None else contact.email
    if delivery.status != "sent":
        hint = (
            "check the transport's host, port, security and password_env"
            if delivery.status == "unreachable"
            else "the server's reply says why"
        )
        raise ReconcilerError(
            f"{target}: the test message to {recipient} was not sent: transport {name} answered: {delivery.reply} "
            f"({hint})"
        )
    if isinstance(transport, OutboxTransport):
        where = os.path.relpath(transport.path_for(message.message_id))
        click.echo(f"Wrote {where}: a test of {target} as {who} gets it, for {recipient} (transport {name})")
    else:
        click.echo(f"Sent a test of {target} as {who} gets it to {recipient} through {name}: {delivery.reply}")


def _with_secrets(definition: Definition, target: str, name: str, config: SmtpConfig | OutboxConfig) -> Definition:
    """The definition with the transport's DKIM key, which the environment holds as the daemon's does; a secret the
    transport needs and the environment lacks is an error that names its variable."""
    from dataclasses import replace

    from reconciler.compose import CannotPrepare, dkim_key
    from reconciler.spec.documents import SmtpTransport

    if not isinstance(config, SmtpTransport):
        return definition
    if config.username and config.password_env and not os.environ.get(config.password_env):
        raise ReconcilerError(
            f"{target}: transport {name} logs in as {config.username} with the password in {config.password_env}, "
            "which is not set here: set it as for the daemon, and send again"
        )
    try:
        return replace(definition, dkim=dkim_key(config))
    except CannotPrepare:
        assert config.dkim is not None
        raise ReconcilerError(
            f"{target}: transport {name} signs with DKIM, but {config.dkim.private_key_env} is not set here: set it "
            "to the PEM private key, as for the daemon, and send again"
        ) from None


@main.command()
@click.option(
    "--recipient",
    "recipients",
    multiple=True,
    metavar="ADDRESS",
    help="The envelope recipient as the MTA gives it (Postfix pipe: ${original_recipient}); Delivered-To, "
    "X-Original-To, To and Cc are read too.",
)
@click.pass_context
def inbound(ctx: click.Context, recipients: tuple[str, ...]) -> None:
    """Process an opt-out by email piped in by your MTA (the message on standard input): the token in the address
    (Settings unsubscribe_address) or the subject unsubscribes its recipient, as the one-click link does.

    Exit codes an MTA understands: 0 unsubscribed, or nothing to change; 67 (EX_NOUSER) no valid unsubscribe token,
    so the MTA bounces it; 75 (EX_TEMPFAIL) it cannot be processed now, so the MTA keeps it and tries again."""
    from reconciler.inbound import HEADER_BYTES

    data = _read_all(sys.stdin.buffer, keep=HEADER_BYTES)
    try:
        outcome = _unsubscribe_by_email(ctx, data, recipients)
    except _NoToken as exc:
        click.echo(f"reconciler inbound: {exc}", err=True)
        ctx.exit(EX_NOUSER)
    except Exception as exc:  # whatever it is, the MTA must keep the message rather than bounce it
        click.echo(
            f"reconciler inbound: cannot process the message now: {exc}; the MTA keeps it and tries again", err=True
        )
        ctx.exit(EX_TEMPFAIL)
    if outcome.done == "unsubscribed":
        click.echo(f"{outcome.email}: unsubscribed from {', '.join(outcome.lists)} (by email)")
    elif outcome.email:
        click.echo(f"{outcome.email}: already unsubscribed from {', '.join(outcome.lists) or 'these emails'}")
    else:
        click.echo("nothing to change: the message this token was sent with is no longer in the state database")


class _NoToken(ReconcilerError):
    """No token in the message verifies: a forged or mangled address, or mail that was never an unsubscribe."""


def _read_all(stream: BinaryIO, *, keep: int) -> bytes:
    """The first `keep` bytes of `stream`, read to its end: an MTA may count a pipe closed early as a failure."""
    kept = stream.read(keep)
    while stream.read(1 << 16):
        pass
    return bytes(kept)


def _unsubscribe_by_email(ctx: click.Context, data: bytes, recipients: tuple[str, ...]) -> Outcome:
    from reconciler.clock import SystemClock, iso
    from reconciler.inbound import InboundMail, unsubscribe_row
    from reconciler.state import keys
    from reconciler.state import settings as runtime_settings

    db = database(ctx, workspace_root(ctx), create=False)
    variable = runtime_settings.load(db).settings.signing_key_env
    row_id = InboundMail.from_bytes(data, envelope=recipients).verified_row(keys.signer_for(db, variable))
    if row_id is None:
        if not os.environ.get(variable):
            raise ReconcilerError(
                f"no token verifies with the key kept in the state database, and {variable} is not set for this "
                f"command: if the daemon has it, give it to this command too (a wrapper that loads the daemon's "
                "environment)"
            )
        raise _NoToken(
            "this address holds no valid unsubscribe token; to unsubscribe, use the link in the email instead"
        )
    return unsubscribe_row(db, row_id, at=iso(SystemClock().now()), via="the local MTA")
