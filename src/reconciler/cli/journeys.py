"""`reconciler test` and `reconciler simulate`: workflows on simulated time, nothing sent, nothing written."""

from __future__ import annotations

import difflib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from reconciler.cli.main import address, checked, existing_database, main, workspace_root
from reconciler.errors import UsageError
from reconciler.words import count


@main.command("test")
@click.argument("names", nargs=-1, metavar="[TEST]...")
@click.pass_context
def test_command(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Run the workspace's WorkflowTest documents (or the named ones) on simulated time; a test whose timeline
    differs prints a diff, and the command exits 1."""
    from reconciler.simulate import run_test

    root = workspace_root(ctx)
    desired = checked(root)
    tests = desired.workflow_tests
    unknown = [name for name in names if name not in tests]
    if unknown:
        known = ", ".join(sorted(tests)) or "none"
        raise UsageError(f"no WorkflowTest named {', '.join(unknown)} (tests: {known})")
    chosen = [tests[name] for name in (names or sorted(tests))]
    if not chosen:
        click.echo("No WorkflowTest documents in the workspace.")
        return
    failed = 0
    for test in chosen:
        outcome = run_test(desired, test)
        if outcome.passed:
            click.echo(f"PASS {test.name} ({test.workflow}, {count(len(outcome.timeline), 'line')})")
            continue
        failed += 1
        where = desired.source("WorkflowTest", test.name)
        click.echo(f"FAIL {test.name} ({test.workflow}) at {where.path}:{where.line}: the timeline differs")
        diff = difflib.unified_diff(outcome.expected, outcome.timeline, "expected", "simulated", lineterm="")
        click.echo("\n".join(f"  {line}" for line in diff))
    click.echo(f"{len(chosen) - failed} passed, {failed} failed")
    ctx.exit(1 if failed else 0)


@main.command()
@click.argument("workflow")
@click.option("--contact", "contact_email", metavar="EMAIL", help="A contact of the state database (read only).")
@click.option("--fields", metavar="JSON", help='A made-up contact: {"first_name": "Ada", "birthday": "1990-05-01"}.')
@click.option(
    "--events",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A YAML or JSON list of what the contact does: [{at: 1d, opened: tips}, {at: 2d, event: purchase}].",
)
@click.option("--days", type=click.IntRange(1, 3660), default=90, show_default=True, help="How far to simulate.")
@click.option("--start", metavar="WHEN", help="When the run starts (ISO 8601 with an offset; default: now).")
@click.pass_context
def simulate(
    ctx: click.Context,
    workflow: str,
    contact_email: str | None,
    fields: str | None,
    events: Path | None,
    days: int,
    start: str | None,
) -> None:
    """Print the timeline a run of WORKFLOW would follow for one contact: what is sent when, which branch it takes,
    how it ends. Nothing is sent or written."""
    from reconciler.clock import parse_instant
    from reconciler.simulate import simulate as timeline
    from reconciler.spec.journey import Happening, in_calendar
    from reconciler.yamlnodes import parse_documents

    root = workspace_root(ctx)
    desired = checked(root)
    if workflow not in desired.workflows:
        known = ", ".join(sorted(desired.workflows)) or "none"
        raise UsageError(f"no workflow named {workflow!r} (workflows: {known})")
    contact = _contact(ctx, root, contact_email, fields)
    happens: list[Happening] = []
    if events is not None:
        documents, errors = parse_documents(events.read_text(encoding="utf-8"))
        if errors or len(documents) != 1 or not isinstance(documents[0].value, list):
            raise UsageError(f"--events {events}: write one YAML or JSON list of {{at: ..., opened: STEP}} items")
        try:
            happens = [Happening.model_validate(item) for item in documents[0].value]
        except ValueError as exc:
            raise UsageError(f"--events {events}: {exc}") from None
    try:
        moment = in_calendar(parse_instant(start)) if start else datetime.now(UTC).replace(second=0, microsecond=0)
    except ValueError as exc:
        raise UsageError(
            f"--start {start}: {exc}; write an ISO 8601 time with an offset, e.g. 2030-01-07T10:00:00Z"
        ) from None
    lines = timeline(desired, workflow, contact, happens, start=moment, days=days)
    click.echo(f"Workflow {workflow} for {contact.email}, from {moment.isoformat()}:")
    click.echo("\n".join(f"  {line}" for line in lines) or "  (nothing happens)")


def _contact(ctx: click.Context, root: Path, email: str | None, fields: str | None) -> Any:
    from reconciler.spec.contact import TEXT_FIELDS
    from reconciler.spec.journey import TestContact
    from reconciler.state.contacts import find_contact
    from reconciler.state.subscribers import preferences

    if email and fields:
        raise UsageError("--contact and --fields: give one of them")
    if email:
        found, lists = None, []
        db = existing_database(ctx, root)
        if db is not None:
            found = find_contact(db, address(email))
            choices = preferences(db, found.id) if found is not None else None
            lists = [
                name for name, status in (choices.subscriptions if choices else {}).items() if status == "subscribed"
            ]
        if found is None:
            raise UsageError(f"--contact: {email} is not a contact in the state database (or use --fields)")
        return TestContact(
            email=found.email,
            **{name: getattr(found, name) for name in TEXT_FIELDS},
            fields=dict(found.fields),
            tags=list(found.tags),
            lists=lists,  # as they are: a marketing workflow sends them nothing unless they are on its list
        )
    try:
        given = json.loads(fields) if fields else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f"--fields: not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(given, dict):
        raise UsageError("--fields: write a JSON object of fields")
    builtin = {k: given.pop(k) for k in TestContact.model_fields if k != "fields" and k in given}
    try:
        return TestContact(**builtin, fields=given)
    except ValidationError as exc:
        wrong = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise UsageError(f"--fields: {wrong}") from None
