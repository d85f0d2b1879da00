"""`reconciler contacts`: import, export, show, erase and made-up samples (runtime data, never in git)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reconciler.cli.main import address, database, main, print_problems, workspace_root
from reconciler.errors import ReconcilerError, SpecErrors, UsageError

if TYPE_CHECKING:
    from reconciler.imports import ImportReport

log = logging.getLogger(__name__)
SHOW_PROGRESS_FROM = 1_000_000
"""Bytes of a file from which an import shows its progress."""


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
@click.pass_context
def contacts_import(
    ctx: click.Context, file: Path, lists: tuple[str, ...], consent: str | None, preconfirmed: bool
) -> None:
    """Import a CSV or JSONL file (UTF-8, or UTF-16/32 with a byte order mark): columns are field names; bad rows
    are reported with their line."""
    from reconciler.clock import SystemClock
    from reconciler.imports import BATCH_ROWS, import_file
    from reconciler.load import load_workspace

    root = workspace_root(ctx)
    desired, problems = load_workspace(root)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        print_problems(errors, "text")
        raise SpecErrors(errors)
    db = database(ctx, root, bulk=True)
    size = file.stat().st_size if file.is_file() else 0
    now = SystemClock().now()

    def run(progress: Callable[[int], None] | None) -> ImportReport:
        return import_file(
            db,
            desired,
            file,
            lists=list(lists),
            consent_text=consent,
            now=now,
            preconfirmed=preconfirmed,
            progress=progress,
        )

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
    for bad in report.bad:
        click.echo(f"{file}:{bad.line}: {bad.message}", err=True)
    click.echo(report.summary())
    ctx.exit(1 if report.bad else 0)


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
        where = e["source"] + (f"/{e.get('step') or e.get('stage')}" if e.get("step") or e.get("stage") else "")
        lines.append((e["at"], f"{e['action']} {where}" + (" (a machine)" if e["machine"] else "")))
    for e in found["events"]:
        lines.append((e["occurred_at"], f"event {e['type']} {json.dumps(e['properties'], ensure_ascii=False)}"))
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


@contacts.command("sample")
@click.option("--count", type=click.IntRange(min=1), default=200, show_default=True, help="How many rows.")
@click.option("--seed", type=int, default=2026, show_default=True, help="The same seed gives the same rows.")
def contacts_sample(count: int, seed: int) -> None:
    """Print made-up contacts as CSV (example.com addresses) to try a workspace: `... sample > try.csv`."""
    from reconciler.samples import sample_csv

    for chunk in sample_csv(count, seed=seed):
        sys.stdout.write(chunk)
