"""`reconciler state`: the state database itself; `state migrate` copies a SQLite state into PostgreSQL."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import click

from reconciler.cli.main import main, workspace_root
from reconciler.errors import UsageError

if TYPE_CHECKING:
    from reconciler.state.transfer import CopyReport

PROGRESS_EVERY = 1.0
"""Seconds between two progress lines of a table being copied or verified."""
SHOW_TOTAL_FROM = 10_000
"""Rows of a table from which its total and rate are shown once it is copied."""


@main.group()
def state() -> None:
    """The state database itself: copy a SQLite state into PostgreSQL."""


@state.command("migrate")
@click.option(
    "--to",
    "to",
    required=True,
    metavar="URL",
    help="The empty PostgreSQL database to copy into: postgresql://user@host/dbname (a password is better kept in "
    "PGPASSWORD or ~/.pgpass than on the command line).",
)
@click.pass_context
def state_migrate(ctx: click.Context, to: str) -> None:
    """Copy the SQLite state (--state, else $RECONCILER_STATE, else .state/reconciler.db) into an empty PostgreSQL
    database, verified table by table (rows and a checksum of every value) before anything is committed.

    Both are brought up to date first. A database that holds anything is refused; any difference rolls the copy
    back, leaving it empty. Stop the daemon first: the copy is of one moment, and what is written to the SQLite
    state afterwards stays there. Then run with RECONCILER_STATE (or --state) naming the PostgreSQL database.
    """
    from reconciler.state import location
    from reconciler.state.db import StateError, open_db
    from reconciler.state.transfer import copy_into

    target = location.parse(to)
    if target.conninfo is None:
        raise UsageError(f"--to {to}: not a PostgreSQL database; name one as postgresql://user@host/dbname")
    given = ctx.obj["state"] or os.environ.get(location.ENV)  # a file named needs no workspace around it
    source = location.parse(given) if given else location.choose(workspace_root(ctx))
    if source.path is None:
        raise StateError(
            f"the state to copy is PostgreSQL already ({source.display()}): `state migrate` copies a SQLite state; "
            "name its file with --state"
        )
    source_db = open_db(source.path, create=False)
    try:
        report = copy_into(source_db, target.conninfo, target_name=target.display(), progress=_Progress())
    finally:
        source_db.close()
    _print_report(report, str(source.path), target.display())


class _Progress:
    """Progress lines on stderr: a table's rows so far and their rate, at most once a second, and the total and
    rate of each large table once copied."""

    def __init__(self) -> None:
        self.step = ("", "")
        self.started = self.shown = time.monotonic()

    def __call__(self, phase: str, table: str, done: int, total: int) -> None:
        now = time.monotonic()
        if (phase, table) != self.step:
            self.step, self.started, self.shown = (phase, table), now, now
        if phase == "copy" and done == total >= SHOW_TOTAL_FROM:
            click.echo(f"copied {table}: {done:,} rows{self._rate(done, now)}", err=True)
        elif now - self.shown >= PROGRESS_EVERY:
            verb = "copying" if phase == "copy" else "verifying"
            click.echo(f"{verb} {table}: {done:,} of {total:,} rows{self._rate(done, now)}", err=True)
            self.shown = now

    def _rate(self, done: int, now: float) -> str:
        seconds = now - self.started
        return f" in {seconds:.1f} s ({done / seconds:,.0f} rows/s)" if seconds >= 0.1 else ""


def _print_report(report: CopyReport, source: str, target: str) -> None:
    width = max(len(table.name) for table in report.tables)
    click.echo(f"Copied the SQLite state {source} into {target}:")
    for table in sorted(report.tables, key=lambda table: table.name):
        click.echo(f"  {table.name:<{width}}  {table.rows:>12,}  verified")
    seconds = report.copy_seconds + report.verify_seconds
    rate = f" ({report.rows / report.copy_seconds:,.0f} rows/s)" if report.copy_seconds >= 0.1 else ""
    click.echo(
        f"{len(report.tables)} tables, {report.rows:,} rows copied in {report.copy_seconds:.1f} s{rate} and verified "
        f"in {report.verify_seconds:.1f} s: every table's rows and checksum match ({seconds:.1f} s in all)."
    )
    click.echo(f"Run on it with RECONCILER_STATE (or --state) set to {target}.")
