"""Commands that bring the state in line with the workspace: `plan`, `apply`, `tick`, `run` and `status`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reconciler import DEFAULT_PORT
from reconciler.cli.main import (
    CONFIRM_OPTION,
    NOW_OPTION,
    checked,
    clock,
    database,
    existing_database,
    main,
    print_problems,
    state_location,
    workspace_root,
)
from reconciler.errors import UsageError, did_you_mean

if TYPE_CHECKING:
    from reconciler.clock import Clock
    from reconciler.dispatch import DispatchReport, Progress
    from reconciler.state.postgres import StateDatabase


@main.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "markdown"]),
    default="text",
    show_default=True,
    help="markdown is meant for a pull request comment.",
)
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 without changes, 2 with changes, 1 on errors.")
@click.option(
    "--count-budget",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Time for counting segment audiences and sizes; what is left is shown as not counted.",
)
@click.option(
    "--remote",
    metavar="URL",
    default=None,
    help="Plan against the state of the daemon at URL (its plan endpoint), with the token in RECONCILER_PLAN_TOKEN; "
    "the workspace's files are sent, the state stays there.",
)
@NOW_OPTION
@CONFIRM_OPTION
@click.pass_context
def plan(
    ctx: click.Context,
    fmt: str,
    detailed_exitcode: bool,
    count_budget: float,
    remote: str | None,
    now: str | None,
    confirm: tuple[str, ...],
) -> None:
    """Show what apply would do, with audience counts, against the state database. Changes nothing.

    Without a state database (as in CI) the plan is made against an empty one; with --remote, against the state of
    a running daemon (docs/ci.md).
    """
    from reconciler.gitrepo import git_commit

    root = workspace_root(ctx)
    if remote is not None:
        errors, changes = _remote_plan(root, remote, fmt=fmt, now=now, count_budget=count_budget, confirm=confirm)
    else:
        from reconciler.apply import plan_for
        from reconciler.plan import render
        from reconciler.state.db import empty_db

        desired = checked(root)
        db = existing_database(ctx, root) or empty_db()
        moment = clock(now).now()
        result = plan_for(db, desired, now=moment, budget=count_budget, git_commit=git_commit(root), confirm=confirm)
        click.echo(render(result, fmt).rstrip("\n"))
        errors, changes = len(result.errors), result.has_changes
    if errors:
        ctx.exit(1)
    ctx.exit(2 if detailed_exitcode and changes else 0)


def _remote_plan(
    root: Path, url: str, *, fmt: str, now: str | None, count_budget: float, confirm: tuple[str, ...]
) -> tuple[int, bool]:
    """`plan --remote`: the daemon's plan printed as it came; its number of errors and whether it has changes."""
    from reconciler.errors import SpecErrors
    from reconciler.gitrepo import git_commit
    from reconciler.remote_plan import MAX_COUNT_BUDGET, request_plan

    clock(now)  # a --now that is not a date fails here, as in a local plan
    if count_budget > MAX_COUNT_BUDGET:
        raise UsageError(f"--count-budget: at most {MAX_COUNT_BUDGET:.0f} seconds with --remote")
    try:
        answer = request_plan(
            root, url, fmt=fmt, now=now, git_commit=git_commit(root), confirm=confirm, budget=count_budget
        )
    except SpecErrors as exc:
        print_problems(exc.problems, "text")
        raise
    click.echo(answer.text.rstrip("\n"))
    return answer.errors, answer.changes


@main.command()
@NOW_OPTION
@CONFIRM_OPTION
@click.pass_context
def apply(ctx: click.Context, now: str | None, confirm: tuple[str, ...]) -> None:
    """Carry out the plan once: record lists and fields, schedule, pause, cancel. Never sends."""
    from reconciler.apply import plan_and_apply
    from reconciler.gitrepo import git_commit
    from reconciler.plan import as_text

    root = workspace_root(ctx)
    desired = checked(root)
    db = database(ctx, root)
    result, applied = plan_and_apply(db, desired, now=clock(now).now(), git_commit=git_commit(root), confirm=confirm)
    click.echo(as_text(result).rstrip("\n"))
    click.echo(f"Applied {applied.actions} change{'s' * (applied.actions != 1)} from revision {result.revision}.")
    ctx.exit(1 if result.errors else 0)


@main.command()
@NOW_OPTION
@CONFIRM_OPTION
@click.pass_context
def tick(ctx: click.Context, now: str | None, confirm: tuple[str, ...]) -> None:
    """One pass of the daemon, then exit: apply the workspace, start what is due, and send every message due at
    --now (retries wait for their time; SIGTERM lets messages on the wire finish and sends no more)."""
    import asyncio

    from reconciler.daemon import log_key_changes, reconcile_once

    root = workspace_root(ctx)
    db = database(ctx, root)
    moment = clock(now)
    log_key_changes(db)
    result = reconcile_once(root, db, now=moment.now(), confirm=confirm)
    if not result.valid:
        print_problems(result.problems, "text")
        click.echo(f"Revision {result.revision} has errors: nothing of it was applied.", err=True)
    elif result.plan is not None:
        for action in result.plan.actions:
            click.echo(f"{action.subject}: {action.summary}")
        for problem in result.plan.problems:
            click.echo(problem.format(), err=True)
    for name in result.started:
        click.echo(f"Campaign {name}: started")
    report = asyncio.run(_dispatch(root, db, moment))
    for line in _dispatch_lines(report):
        click.echo(line)
    if result.valid and not (result.plan and result.plan.actions) and not result.started and not report.sources:
        click.echo("Nothing to do.")
    went_out = not report.relays_down and not report.blocked
    ctx.exit(0 if result.valid and not (result.plan and result.plan.errors) and went_out else 1)


async def _dispatch(root: Path, db: StateDatabase, moment: Clock) -> DispatchReport:
    """One dispatch pass with a progress bar per campaign on a terminal (log lines otherwise)."""
    import asyncio
    import signal

    from reconciler.dispatch import Dispatcher

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bars: dict[str, Any] = {}

    def on_progress(progress: Progress) -> None:
        bar = bars.get(progress.source)
        if bar is None:
            bar = bars[progress.source] = click.progressbar(
                length=progress.total, label=progress.source, file=sys.stderr, show_pos=True
            )
            bar.__enter__()
        bar.update(1)
        if progress.done >= progress.total:
            bar.__exit__(None, None, None)

    dispatcher = Dispatcher(
        db, root=root, clock=moment, stop=stop, on_progress=on_progress if sys.stderr.isatty() else None
    )
    try:
        return await dispatcher.run_pass()
    finally:
        for bar in bars.values():
            bar.__exit__(None, None, None)
        await dispatcher.close()


def _dispatch_lines(report: DispatchReport) -> list[str]:
    lines = [f"Campaign {name}: stage started" for name in report.stages_started]
    if report.uncertain:
        lines.append(f"{report.uncertain} message(s) interrupted by a stopped process: marked uncertain")
    for progress in report.sources:
        outcomes = ", ".join(f"{state} {count:,}" for state, count in sorted(progress.outcomes.items()))
        lines.append(f"{progress.source}: {outcomes or 'nothing sent'}")
    lines += [f"Campaign {name}: finished" for name in report.finished]
    lines += [
        f"Transport {name}: the server cannot be reached ({why}); its messages wait, unattempted"
        for name, why in sorted(report.relays_down.items())
    ]
    lines += [f"{source}: its messages wait: {why}" for source, why in sorted(report.blocked.items())]
    return lines


@main.command()
@click.argument("name", required=False)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--failures", is_flag=True, help="With NAME: each message of that campaign or workflow that was not sent, and why."
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Failures to show.")
@click.pass_context
def status(ctx: click.Context, name: str | None, fmt: str, failures: bool, limit: int) -> None:
    """Campaigns with their condition and progress, workflows with their runs and messages by outcome, the last
    applied revision, and the last error. With CAMPAIGN, its line; with WORKFLOW, its runs and messages step
    by step; with CAMPAIGN or WORKFLOW --failures, its messages that failed, are uncertain, wait to be retried
    (or for a workflow were skipped or postponed), with why."""
    from reconciler.state.campaigns import campaign_records
    from reconciler.state.workflow_reads import workflow_names
    from reconciler.status import format_campaign, format_status, format_workflow, status_report, workflow_report

    root = workspace_root(ctx)
    db = database(ctx, root, create=False, read_only=True)
    if name is None:
        if failures:
            raise UsageError("--failures needs a campaign or workflow: reconciler status NAME --failures")
        place = state_location(ctx, root)
        report = {"state": place.display(), "engine": "postgresql" if place.is_postgres else "sqlite"}
        report |= status_report(db)
        click.echo(json.dumps(report, indent=2) if fmt == "json" else format_status(report))
        return
    campaigns = [record.name for record in campaign_records(db)]
    workflows = workflow_names(db)
    if name in campaigns and (failures or name not in workflows):
        if failures:
            _failures(db, name, fmt=fmt, limit=limit, workflow=False)
            return
        found = next(c for c in status_report(db)["campaigns"] if c["name"] == name)
        click.echo(json.dumps(found, indent=2) if fmt == "json" else format_campaign(found))
    elif name in workflows:
        if failures:
            _failures(db, name, fmt=fmt, limit=limit, workflow=True)
            return
        detail = workflow_report(db, name)
        click.echo(json.dumps(detail, indent=2) if fmt == "json" else format_workflow(detail))
    else:
        known = sorted({*campaigns, *workflows})
        raise UsageError(
            f"no campaign or workflow {name!r} in the state database; {did_you_mean(name, known)}".rstrip("; ")
        )


def _failures(db: StateDatabase, name: str, *, fmt: str, limit: int, workflow: bool) -> None:
    """`status NAME --failures`, for a campaign or a workflow, in one shape."""
    from reconciler.state import ledger
    from reconciler.state.workflow_reads import workflow_failures
    from reconciler.status import format_failures

    if not workflow:
        found = ledger.failures(db, name, limit=limit)
        shown = [f.__dict__ for f in found]
        text = format_failures(f"Campaign {name}", found, limit=limit)
    else:
        found = workflow_failures(db, name, limit=limit)
        shown = [
            {"email": f.email, "step": f.stage, "state": f.state, "attempts": f.attempts, "reply": f.reply, "at": f.at}
            for f in found
        ]
        text = format_failures(
            f"Workflow {name}",
            found,
            limit=limit,
            kinds="failed, uncertain, skipped, postponed or waiting-to-retry",
            headings=("STEP", "REASON"),
        )
    click.echo(json.dumps(shown, indent=2) if fmt == "json" else text)


@main.command()
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds between full passes when no file changes.",
)
@click.option(
    "--host",
    default=lambda: os.environ.get("RECONCILER_HOST", "127.0.0.1"),
    show_default="127.0.0.1",
    help="Address the web service listens on (RECONCILER_HOST); 0.0.0.0 for every interface.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=lambda: int(os.environ.get("RECONCILER_PORT", str(DEFAULT_PORT))),
    show_default=str(DEFAULT_PORT),
    help="Port of the web service (RECONCILER_PORT).",
)
@click.pass_context
def run(ctx: click.Context, interval: float, host: str, port: int) -> None:
    """The daemon: watch the workspace, apply every good revision, start campaigns when they are due, send, and
    serve the unsubscribe and preference pages, tracking and the API on HOST:PORT."""
    import asyncio

    from reconciler import allocator
    from reconciler.clock import SystemClock
    from reconciler.daemon import WebOptions
    from reconciler.daemon import run as run_daemon

    allocator.limit_arenas()  # before the daemon's threads make arenas of their own
    root = workspace_root(ctx)
    db = database(ctx, root)
    sender = database(ctx, root)  # connections of their own: sending and the web service run beside the reconcile loop
    lease = database(ctx, root)  # and the heartbeat that holds (or waits for) the lease
    place = state_location(ctx, root)
    web = WebOptions(place, host=host, port=port)
    asyncio.run(
        run_daemon(
            root, db, clock=SystemClock(), interval=interval, dispatch_db=sender, web=web, state=place, lease_db=lease
        )
    )
