"""`reconciler render`: a message as a recipient gets it, without sending anything."""

from __future__ import annotations

from pathlib import Path

import click

from reconciler.cli.main import address, checked, database, main, state_file, workspace_root
from reconciler.errors import ReconcilerError, UsageError


@main.command()
@click.argument("target", metavar="CAMPAIGN|WORKFLOW:STEP")
@click.option(
    "--contact",
    "contact_email",
    metavar="EMAIL",
    help="Render for this contact of the state database (default: a sample contact with every field set).",
)
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
    from reconciler.state.contacts import find_contact
    from reconciler.state.ledger import DueRow
    from reconciler.templates import describe_error, sample_contact
    from reconciler.tokens import Signer

    root = workspace_root(ctx)
    desired = checked(root)
    assert desired.settings is not None
    db = database(ctx, root, read_only=True) if state_file(ctx, root).exists() else None
    if db is not None:
        signer, instance = keys.signer_for(db, desired.settings.signing_key_env), keys.instance_id(db)
    else:
        signer, instance = Signer(b"preview"), "preview"
    definition = workspace_definition(desired, target, signer=signer, instance=instance)
    contact = sample_contact(definition.field_types)
    if contact_email:
        found = find_contact(db, address(contact_email)) if db is not None else None
        if found is None:
            raise UsageError(
                f"--contact: {contact_email} is not a contact in the state database; import it first, "
                "or leave --contact out to render for a sample contact"
            )
        contact = found
    try:
        if output is not None and output.suffix.lower() == ".eml":
            message = Composer(definition).compose(DueRow(0, 0, None, None, contact), now=SystemClock().now())
            output.write_bytes(message.data)
            click.echo(f"Wrote {output} ({len(message.data) / 1024:.1f} KB message)", err=True)
            return
        page = preview(definition, contact).html
    except Exception as exc:  # what would make this contact's message fail at send time
        reason, hint = describe_error(exc)
        raise ReconcilerError(
            f"{target}: the message cannot be built for {contact.email}: {reason} ({hint}); at send time this "
            "contact's message would fail"
        ) from exc
    if output is None:
        click.echo(page)
        return
    output.write_text(page, encoding="utf-8")
    click.echo(f"Wrote {output} ({len(page.encode()) / 1024:.1f} KB of HTML)", err=True)
