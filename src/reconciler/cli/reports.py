"""`reconciler report`: how a campaign or a workflow did, from the state database (read only)."""

from __future__ import annotations

from pathlib import Path

import click

from reconciler.cli.main import database, main, state_file, workspace_root
from reconciler.errors import UsageError


@main.command()
@click.argument("name", required=False)
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv", "html"]), default="text", show_default=True)
@click.option("--since", metavar="WHEN", help="Count engagement and conversions from this time (ISO 8601, offset).")
@click.option("--until", metavar="WHEN", help="... and before this time.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE, not stdout.")
@click.option("--rebuild", is_flag=True, help="Count the report counters again from the recorded facts first.")
@click.pass_context
def report(
    ctx: click.Context,
    name: str | None,
    fmt: str,
    since: str | None,
    until: str | None,
    output: Path | None,
    rebuild: bool,
) -> None:
    """How it did: without NAME, every campaign that started and every workflow, newest first (recipients,
    delivered, open and click rates, unsubscribes, revenue); with a campaign's NAME, its delivery, engagement
    (people and machines apart), rates beside the previous campaigns', stages, links, opens over time, countries
    and goal; with a workflow's NAME, its runs and each step."""
    from reconciler.clock import iso, parse_instant
    from reconciler.report import figures, render
    from reconciler.state.reports import Window, started_campaigns
    from reconciler.state.workflow_reads import workflow_names

    root = workspace_root(ctx)
    if not state_file(ctx, root).exists():
        raise UsageError("no state database yet: nothing has been sent (run `reconciler apply` or the daemon first)")
    try:
        window = Window(
            since=iso(parse_instant(since)) if since else "", until=iso(parse_instant(until)) if until else "9999"
        )
    except (ValueError, OverflowError) as exc:
        raise UsageError(f"--since/--until: {exc} (write e.g. 2030-11-29T00:00:00Z)") from None
    if window.since >= window.until:
        raise UsageError(f"--since {since} is not before --until {until}")
    if rebuild:
        from reconciler.state.rollups import rebuild as count_again

        counted = count_again(database(ctx, root))
        click.echo(f"Counted {counted:,} engagement facts again.", err=True)
    db = database(ctx, root, read_only=True)
    found: figures.CampaignReport | figures.WorkflowReport | list[figures.OverviewRow]
    if name is None:
        found = figures.overview(db, window)
    elif name in {c.name for c in started_campaigns(db)} or name not in workflow_names(db):
        found = figures.campaign_report(db, name, window)
    else:
        found = figures.workflow_report(db, name, window)
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
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"Wrote {output} ({len(text.encode()):,} bytes)", err=True)
