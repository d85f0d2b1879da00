"""`reconciler contacts`: import, export, show, erase and made-up samples (runtime data, never in git)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from reconciler.cli.main import address, database, main, print_problems, workspace_root
from reconciler.errors import ReconcilerError, SpecErrors, UsageError, did_you_mean

if TYPE_CHECKING:
    from reconciler.imports import ImportReport
    from reconciler.spec import DesiredState
    from reconciler.state.suppressions import SuppressionReason

log = logging.getLogger(__name__)
SHOW_PROGRESS_FROM = 1_000_000
"""Bytes of a file from which an import shows its progress."""
INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it."""


@main.group()
def contacts() -> None:
    """Import, export and erase contacts (runtime data, never in git)."""


@contacts.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--list", "lists", multiple=True, metavar="LIST", help="Subscribe every good row to LIST (repeatable).")
@click.option(
    "--consent",
    metavar="TEXT",
    default=None,
    help="How these people consented (the wording or its version), for the consent record.",
)
@click.option(
    "--preconfirmed",
    is_flag=True,
    help="The people confirmed their subscription elsewhere: needed to import into a double opt-in list (recorded "
    "in each consent record; no confirmation email is sent).",
)
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="COLUMN=FIELD",
    help="Read COLUMN as FIELD (or as status), e.g. --map 'Email Address=email'; COLUMN= skips it (repeatable).",
)
@click.pass_context
def contacts_import(
    ctx: click.Context,
    file: Path,
    lists: tuple[str, ...],
    consent: str | None,
    preconfirmed: bool,
    maps: tuple[str, ...],
) -> None:
    """Import a CSV (comma, semicolon or tab separated) or JSONL file (UTF-8, or UTF-16/32 with a byte order mark):
    columns are field names, or mapped with --map; exports of Mailchimp, listmonk and Brevo are recognised. A
    status column (unsubscribed, cleaned, bounced, complained ...) brings over who must not be mailed. Bad rows are
    reported with their line and every problem they have."""
    from reconciler.clock import SystemClock
    from reconciler.imports import BATCH_ROWS, ImportInterrupted, import_file

    root = workspace_root(ctx)
    desired = _workspace(root)
    db = database(ctx, root, bulk=True)
    size = file.stat().st_size if file.is_file() else 0
    now = SystemClock().now()

    def run(progress: Callable[[int], None] | None) -> ImportReport:
        try:
            return import_file(
                db,
                desired,
                file,
                lists=list(lists),
                consent_text=consent,
                now=now,
                preconfirmed=preconfirmed,
                maps=maps,
                progress=progress,
            )
        except ImportInterrupted as exc:
            click.echo(f"\n{exc}", err=True)
            ctx.exit(INTERRUPTED)

    if sys.stderr.isatty() and size > SHOW_PROGRESS_FROM:
        with click.progressbar(length=size, label=f"Importing {file.name}", file=sys.stderr) as bar:
            position = {"bytes": 0}
            estimate = _estimate_rows(file, size)

            def show(rows: int) -> None:
                done = min(size, int(size * rows / estimate))
                bar.update(max(0, done - position["bytes"]))
                position["bytes"] = done

            report = run(show)
    else:

        def note(rows: int) -> None:
            if rows % 100_000 < BATCH_ROWS:
                log.info("%s: %d rows read", file.name, rows)

        report = run(note if size > SHOW_PROGRESS_FROM else None)
    for line in report.notes:
        click.echo(line)
    for bad in report.bad:
        for problem in bad.problems:
            click.echo(f"{file}:{bad.line}: {problem}", err=True)
    click.echo(report.summary())
    if report.subscribed and not consent:
        click.echo(
            f"warning: subscribed to {', '.join(lists)} without --consent: the consent records do not say what these "
            "people agreed to, which you may have to prove (GDPR); add --consent 'the wording or its version'",
            err=True,
        )
    ctx.exit(1 if report.bad else 0)


def _workspace(root: Path) -> DesiredState:
    """The workspace's lists and fields (what imports and unsubscribes check names against), or its errors."""
    from reconciler.load import load_workspace

    desired, problems = load_workspace(root)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        print_problems(errors, "text")
        raise SpecErrors(errors)
    return desired


def _estimate_rows(file: Path, size: int) -> int:
    with file.open("rb") as handle:
        sample = handle.read(65536)
    return max(1, int(size / max(1, len(sample)) * max(1, sample.count(b"\n"))))


@contacts.command("export")
@click.argument("email")
@click.pass_context
def contacts_export(ctx: click.Context, email: str) -> None:
    """Print, as JSON, everything held about one person (GDPR access request)."""
    from reconciler.state.contacts import export_contact

    db = database(ctx, workspace_root(ctx), create=False, read_only=True)
    found = export_contact(db, address(email))
    if found is None:
        raise ReconcilerError(f"no contact {email} in the state database")
    click.echo(json.dumps(found, indent=2, ensure_ascii=False))


@contacts.command("show")
@click.argument("email")
@click.pass_context
def contacts_show(ctx: click.Context, email: str) -> None:
    """One person's timeline: subscriptions and consent, every message with its outcome, opens, clicks and
    events, oldest first (`contacts export` gives the same as JSON)."""
    from reconciler.state.contacts import export_contact

    db = database(ctx, workspace_root(ctx), create=False, read_only=True)
    found = export_contact(db, address(email))
    if found is None:
        raise ReconcilerError(f"no contact {email} in the state database")
    click.echo("\n".join(timeline(found)))


def timeline(found: dict[str, Any]) -> list[str]:
    """The export as lines `WHEN  WHAT`, in time order, under a header of who it is and where they stand."""
    if "contact" not in found:
        return [f"{found['email']}: {found['held']} ({found['suppression']['reason']} {found['suppression']['at']})"]
    person = found["contact"]
    lists = ", ".join(f"{s['list']} {s['status']}" for s in found["subscriptions"]) or "no lists"
    header = [f"{person['email']} ({person.get('first_name') or '-'}): {lists}"]
    if found["suppression"]:
        header.append(f"suppressed: {found['suppression']['reason']} since {found['suppression']['at']}")
    lines: list[tuple[str, str]] = []
    for c in found["consent"]:
        lines.append((c["at"], f"{c['action']} {c['list'] or 'every list'} ({c['source']})"))
    for m in found["messages"]:
        where = f"{m['source_kind']} {m['source']}" + (
            f"/{m.get('step') or m.get('stage')}" if m.get("step") or m.get("stage") else ""
        )
        lines.append((m["updated_at"], f"message {where}: {m['state']}"))
    for e in found["engagement"]:
        where = (e["source"] or "(no message)") + (
            f"/{e.get('step') or e.get('stage')}" if e.get("step") or e.get("stage") else ""
        )
        link = f" {e['url']}" if e.get("url") else ""
        lines.append((e["at"], f"{e['action']} {where}{link}" + (" (a machine)" if e["machine"] else "")))
    for e in found["events"]:
        lines.append((e["occurred_at"], f"event {e['type']} {json.dumps(e['properties'], ensure_ascii=False)}"))
    for run in found.get("workflow_runs", []):
        key = f" ({run['key']})" if run["key"] else ""
        lines.append((run["started_at"], f"workflow {run['workflow']}{key} started: {run['trigger']}"))
        if run["ended_at"]:
            lines.append((run["ended_at"], f"workflow {run['workflow']}{key} {run['state']}: {run['outcome'] or ''}"))
        else:
            lines.append((run["started_at"], f"workflow {run['workflow']}{key} now at step {run['step']}"))
    return header + [f"  {at}  {what}" for at, what in sorted(lines)]


@contacts.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def contacts_erase(ctx: click.Context, email: str, yes: bool) -> None:
    """Delete everything about one person (GDPR erasure); a hash of the address keeps them from being re-imported."""
    from reconciler.clock import SystemClock, iso
    from reconciler.state.contacts import erase_contact

    normalised = address(email)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("erasing cannot be undone: add --yes to confirm")
        click.confirm(f"Erase everything about {normalised}? This cannot be undone", abort=True)
    db = database(ctx, workspace_root(ctx))
    held = erase_contact(db, normalised, at=iso(SystemClock().now()))
    click.echo(
        f"Erased {normalised}." if held else f"No record of {normalised}; its hash is kept so it is never imported."
    )


@contacts.command("suppress")
@click.argument("emails", nargs=-1, metavar="[EMAIL]...")
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Addresses from FILE: one per line, or a CSV with an email column (another tool's export).",
)
@click.option(
    "--reason",
    type=click.Choice(["unsubscribed", "bounced", "complained"]),
    default="unsubscribed",
    show_default=True,
    help="Why: unsubscribed and complained keep marketing mail away, bounced every mail.",
)
@click.pass_context
def contacts_suppress(ctx: click.Context, emails: tuple[str, ...], file: Path | None, reason: str) -> None:
    """Keep addresses out of mail (who must not be mailed, brought over from another tool), contacts or not; each
    suppression says where it came from. A stronger reason already held stays (bounced over unsubscribed)."""
    from reconciler.clock import SystemClock, iso
    from reconciler.import_columns import addresses_in
    from reconciler.rows import normalise_email
    from reconciler.state.subscribers import suppress_addresses

    if not emails and file is None:
        raise UsageError("name the addresses, or --file FILE (one address per line, or a CSV with an email column)")
    found: list[tuple[str, str]] = [("", email) for email in emails]
    if file is not None:
        found += [(f"{file}:{line}", text) for line, text in addresses_in(file)]
    good: dict[str, None] = {}
    bad = 0
    for where, text in found:
        try:
            good[normalise_email(text, sendable=False)] = None
        except ValueError as exc:
            bad += 1
            click.echo(f"{where + ': ' if where else ''}{exc}", err=True)
    source = f"contacts suppress --file {file.name}" if file is not None else "contacts suppress"
    db = database(ctx, workspace_root(ctx))
    why = cast("SuppressionReason", reason)
    done = suppress_addresses(db, list(good), why, at=iso(SystemClock().now()), source=source)
    new = sum(one.before is None for one in done)
    raised = sum(one.before is not None and one.before != one.after for one in done)
    kept: dict[str, int] = {}
    for one in done:
        if one.before is not None and one.before == one.after:
            kept[one.after] = kept.get(one.after, 0) + 1
    parts = [f"{new} suppressed ({reason})"]
    if raised:
        parts.append(f"{raised} now {reason} (were unsubscribed)")
    if kept:
        parts.append("already suppressed: " + ", ".join(f"{why} {count}" for why, count in sorted(kept.items())))
    if bad:
        parts.append(f"{bad} not an address")
    click.echo(f"{len(done)} address{'es' * (len(done) != 1)}: " + ", ".join(parts))
    ctx.exit(1 if bad else 0)


@contacts.command("unsubscribe")
@click.argument("email")
@click.option(
    "--list",
    "lists",
    multiple=True,
    metavar="LIST",
    help="Leave only LIST (repeatable); without it, every marketing list, and no marketing mail at all.",
)
@click.pass_context
def contacts_unsubscribe(ctx: click.Context, email: str, lists: tuple[str, ...]) -> None:
    """Record an unsubscribe that reached you another way (a reply, a phone call, another tool), with a consent
    record saying it came from this command. Receipts (transactional lists) still go."""
    from reconciler.clock import SystemClock, iso
    from reconciler.spec.documents import marketing_lists
    from reconciler.state.contacts import find_contact
    from reconciler.state.subscribers import suppress_addresses, unsubscribe_all, unsubscribe_lists

    normalised = address(email)
    desired = _workspace(workspace_root(ctx))
    unknown = [name for name in lists if name not in desired.lists]
    if unknown:
        hint = did_you_mean(unknown[0], desired.lists, otherwise="lists: " + ", ".join(sorted(desired.lists)))
        raise UsageError(f"--list {unknown[0]}: unknown list ({hint})")
    db = database(ctx, workspace_root(ctx))
    at, source = iso(SystemClock().now()), "contacts unsubscribe"
    contact = find_contact(db, normalised)
    if lists:
        if contact is None:
            raise ReconcilerError(
                f"no contact {normalised} in the state database, so on no list; to keep the address out of "
                f"marketing mail before it is imported, run: reconciler contacts suppress {normalised}"
            )
        changed = unsubscribe_lists(db, contact.id, lists, at=at, source=source)
        left = [name for name in lists if name not in changed]
        if changed:
            click.echo(f"Unsubscribed {normalised} from {', '.join(changed)}.")
        if left:
            click.echo(f"{normalised} was not subscribed to {', '.join(left)}: nothing to change there.")
        return
    marketing = sorted(marketing_lists(desired.lists))
    if contact is None:
        suppress_addresses(db, [normalised], "unsubscribed", at=at, source=source)
    else:
        unsubscribe_all(db, contact.id, marketing_lists=marketing, at=at, source=source, ip=None)
    click.echo(
        f"Unsubscribed {normalised} from every marketing list ({', '.join(marketing) or 'none declared'}): no "
        "marketing mail goes to it any more; receipts (transactional lists) still do."
    )


@contacts.command("sample")
@click.option("--count", type=click.IntRange(min=1), default=200, show_default=True, help="How many rows.")
@click.option("--seed", type=int, default=2026, show_default=True, help="The same seed gives the same rows.")
def contacts_sample(count: int, seed: int) -> None:
    """Print made-up contacts as CSV (example.com addresses) to try a workspace: `... sample > try.csv`."""
    from reconciler.samples import sample_csv

    for chunk in sample_csv(count, seed=seed):
        sys.stdout.write(chunk)
