"""`reconciler report`: how a campaign or a workflow did, from the state database (read only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from reconciler.cli.main import database, main, workspace_root
from reconciler.errors import UsageError, did_you_mean


@main.command()
@click.argument("name", required=False)
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv", "html"]), default="text", show_default=True)
@click.option("--since", metavar="WHEN", help="Count engagement and conversions from this time (ISO 8601, offset).")
@click.option("--until", metavar="WHEN", help="... and before this time.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE, not stdout.")
@click.option("--rebuild", is_flag=True, help="Count the report counters again from the recorded facts first.")
@click.option(
    "--recipients",
    "per_recipient",
    is_flag=True,
    help="With NAME: each message, its state and reply, opens, clicks and unsubscribe (text: a page at a time).",
)
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True, help="With --recipients as text.")
@click.pass_context
def report(
    ctx: click.Context,
    name: str | None,
    fmt: str,
    since: str | None,
    until: str | None,
    output: Path | None,
    rebuild: bool,
    per_recipient: bool,
    page: int,
) -> None:
    """How it did: without NAME, every campaign that started and every workflow, newest first (recipients,
    delivered, open and click rates, unsubscribes, revenue); with a campaign's NAME, its delivery, engagement
    (people and machines apart), rates beside the previous campaigns', stages, links, opens over time, countries
    and goal; with a workflow's NAME, its runs and each step (WORKFLOW:STEP: that step alone)."""
    from reconciler.clock import iso, parse_instant
    from reconciler.report import figures, render
    from reconciler.state.db import NoState
    from reconciler.state.reports import Window, started_campaigns
    from reconciler.state.workflow_reads import workflow_names

    root = workspace_root(ctx)
    try:
        db = database(ctx, root, create=False, read_only=True)
    except NoState:
        raise UsageError(
            "no state database yet: nothing has been sent (run `reconciler apply` or the daemon first)"
        ) from None
    try:
        window = Window(
            since=iso(parse_instant(since)) if since else "", until=iso(parse_instant(until)) if until else "9999"
        )
    except (ValueError, OverflowError) as exc:
        hint = "" if "write" in str(exc) else " (write e.g. 2030-11-29T00:00:00Z)"
        raise UsageError(f"--since/--until: {exc}{hint}") from None
    if window.since >= window.until:
        raise UsageError(f"--since {since} is not before --until {until or '(no end)'}")
    if rebuild:
        from reconciler.state.rollups import rebuild as count_again

        counted = count_again(database(ctx, root))
        click.echo(f"Counted {counted:,} engagement facts again.", err=True)
    if per_recipient:
        if name is None:
            raise UsageError("--recipients needs the NAME of a campaign or workflow")
        _write(_recipients(db, name, fmt, page), output)
        return
    found: figures.CampaignReport | figures.WorkflowReport | list[figures.OverviewRow]
    if name is None:
        found = figures.overview(db, window)
    elif name in {c.name for c in started_campaigns(db)} or name.partition(":")[0] not in workflow_names(db):
        found = figures.campaign_report(db, name, window)
    else:
        workflow, _, step = name.partition(":")
        found = figures.workflow_report(db, workflow, window)
        if step:
            found = _only_step(found, step)
    if fmt == "html":
        from reconciler.report import html

        if isinstance(found, list):
            text = html.overview_html(found)
        elif isinstance(found, figures.WorkflowReport):
            text = html.workflow_html(found)
        else:
            text = html.campaign_html(found)
    elif fmt == "json":
        text = render.as_json(found)
    elif fmt == "csv":
        text = render.as_csv(found)
    elif isinstance(found, list):
        text = render.overview_text(found)
    elif isinstance(found, figures.WorkflowReport):
        text = render.workflow_text(found)
    else:
        text = render.campaign_text(found)
    _write(text, output)


def _only_step(found: Any, step: str) -> Any:
    """WORKFLOW:STEP: the workflow's report with that step alone."""
    steps = [s for s in found.steps if s.step == step]
    if not steps:
        known = [s.step for s in found.steps]
        meant = did_you_mean(step, known, otherwise="")
        raise UsageError(f"workflow {found.name} has no step {step!r}; {meant or 'its steps: ' + ', '.join(known)}")
    return found.model_copy(update={"steps": steps})


PAGE = 50
"""Recipients per page of text."""


def _recipients(db: Any, name: str, fmt: str, page: int) -> str:
    """Every message of the campaign or workflow as JSON or CSV; a page of PAGE as text."""
    import dataclasses
    import json

    from reconciler.report.render import as_rows_csv
    from reconciler.state.reports import recipients, started_campaigns
    from reconciler.state.workflow_reads import workflow_names

    kind = (
        "workflow" if name in workflow_names(db) and name not in {c.name for c in started_campaigns(db)} else "campaign"
    )
    if fmt in ("json", "csv"):
        found = recipients(db, kind, name, limit=-1)
        rows = [dataclasses.asdict(r) for r in found]
        return json.dumps(rows, indent=2, ensure_ascii=False) + "\n" if fmt == "json" else as_rows_csv(rows)
    if fmt == "html":
        raise UsageError("--recipients is text, JSON or CSV")
    shown = recipients(db, kind, name, limit=PAGE + 1, offset=(page - 1) * PAGE)
    if not shown and page > 1:
        raise UsageError(f"--page {page}: there are fewer pages of recipients (50 a page); try --page 1")
    lines = [f"{'ADDRESS':<36} {'STAGE':<12} {'STATE':<10} OPENS CLICKS UNSUB  REPLY"]
    for r in shown[:PAGE]:
        unsub = "yes" if r.unsubscribed else "-"
        lines.append(
            f"{r.email:<36} {r.stage or '-':<12} {r.state:<10} {r.opens:>5} {r.clicks:>6} {unsub:<5}  {r.reply[:60]}"
        )
    if len(shown) > PAGE:
        lines.append(f"... more: --page {page + 1} (or --format csv for everyone)")
    return "\n".join(lines) + "\n"


def _write(text: str, output: Path | None) -> None:
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(
                f"-o {output}: cannot write it ({exc.strerror or exc}); name a file in a folder that exists"
            ) from None
        click.echo(f"Wrote {output} ({len(text.encode()):,} bytes)", err=True)
