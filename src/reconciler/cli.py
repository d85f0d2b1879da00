"""The `reconciler` command: each subcommand is a few lines over the library.

Errors we raise on purpose are printed as one clear message, never a traceback (``--debug`` shows one).
Exit codes (PRODUCT §3): 0 success, 1 the spec or plan has errors, 2 usage errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
from sqlite_utils import Database

from reconciler import __version__
from reconciler.apply import observe_for, plan_and_apply
from reconciler.check import check
from reconciler.clock import Clock, FixedClock, SystemClock, iso, parse_instant
from reconciler.contacts import BATCH_ROWS, import_file, normalise_email
from reconciler.daemon import WebOptions, reconcile_once
from reconciler.daemon import run as run_daemon
from reconciler.dispatch import Composer, Dispatcher, DispatchReport, Progress, instance_id, signer_for
from reconciler.errors import Problem, ReconcilerError, SpecErrors, UsageError, did_you_mean
from reconciler.explain import show
from reconciler.load import find_workspace, git_commit, load_workspace
from reconciler.plan import as_json, as_markdown, as_text, make_plan
from reconciler.plan.content import campaign_content, step_content
from reconciler.report import format_status, status_report
from reconciler.samples import sample_csv
from reconciler.spec import DesiredState
from reconciler.spec.schema import json_schema_text
from reconciler.spec.workflow import SendStep, walk_steps
from reconciler.state import open_db, state_path
from reconciler.state.contacts import erase_contact, export_contact
from reconciler.state.ledger import contact_row
from reconciler.state.schema import migrations
from reconciler.templates import TemplateSet, sample_row
from reconciler.tokens import Signer

log = logging.getLogger(__name__)


class Group(click.Group):
    """Turns our errors into messages and exit codes, and anything unexpected into a short bug report."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            raise click.UsageError(str(exc), ctx) from exc
        except ReconcilerError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # `reconciler schema | head`: the reader has all it wanted
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush from failing again
            ctx.exit(1)
        except Exception as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(
                f"Error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback, and "
                "please report it)",
                err=True,
            )
            ctx.exit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C",
    "--workspace",
    "workspace",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="The workspace folder (holding spec/, campaigns/, templates/).",
)
@click.option(
    "--state",
    "state",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The state database (default: $RECONCILER_STATE, else .state/reconciler.db in the workspace).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(__version__, prog_name="reconciler")
@click.pass_context
def main(ctx: click.Context, workspace: Path, state: Path | None, debug: bool) -> None:
    """Email marketing as code: validate, plan and apply a workspace of YAML and MJML."""
    ctx.obj = {"workspace": workspace, "state": state, "debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
    help="github prints annotations for GitHub Actions.",
)
@click.pass_context
def validate(ctx: click.Context, paths: tuple[Path, ...], fmt: str) -> None:
    """Check the spec: schema, references, templates (compile and render with sample data), compliance.

    PATHS are workspaces, or files in one (then only their problems are shown). Needs no secret and no state.
    """
    targets = paths or (ctx.obj["workspace"],)
    problems: list[Problem] = []
    for root, only in _workspaces(targets):
        desired, found = load_workspace(root)
        found += check(desired)
        problems += [p for p in found if only is None or Path(p.path).resolve() in only]
    problems = sorted(set(problems))
    errors = sum(p.severity == "error" for p in problems)
    _print_problems(problems, fmt)
    ctx.exit(1 if errors else 0)


def _workspaces(targets: tuple[Path, ...]) -> list[tuple[Path, set[Path] | None]]:
    """Group PATHS by workspace; a workspace given as a folder shows all its problems."""
    found: dict[Path, set[Path] | None] = {}
    for target in targets:
        if not target.exists():
            raise UsageError(f"{target} does not exist")
        root = find_workspace(target.resolve())
        if target.is_dir() and target.resolve() == root:
            found[root] = None
        elif found.get(root, set()) is not None:
            found.setdefault(root, set())
            files = found[root]
            assert files is not None
            files |= {p.resolve() for p in target.rglob("*")} if target.is_dir() else {target.resolve()}
    return list(found.items())


def _print_problems(problems: list[Problem], fmt: str) -> None:
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "ok": errors == 0,
                    "errors": errors,
                    "warnings": warnings,
                    "problems": [p.as_dict() for p in problems],
                },
                indent=2,
            )
        )
        return
    for problem in problems:
        click.echo(problem.github() if fmt == "github" else problem.format())
    summary = f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    if fmt == "github":
        click.echo(f"reconciler validate: {summary}", err=True)
    elif problems:
        click.echo(summary, err=True)
    else:
        click.echo("The workspace is valid.", err=True)


@main.command()
def schema() -> None:
    """Print the JSON Schema of workspace documents (for editors and CI)."""
    sys.stdout.write(json_schema_text())


# --- plan, apply, tick, status, run -----------------------------------------------------------------------------

NOW_OPTION = click.option(
    "--now",
    "now",
    metavar="ISO-8601",
    default=None,
    help="Act as if it were this instant (e.g. 2026-11-27T09:00:00+01:00).",
)
CONFIRM_OPTION = click.option(
    "--confirm",
    "confirm",
    multiple=True,
    metavar="CAMPAIGN",
    help="Send this campaign although its start time is past the grace period (repeatable).",
)


def _clock(now: str | None) -> Clock:
    if now is None:
        return SystemClock()
    try:
        return FixedClock(parse_instant(now))
    except ValueError as exc:
        raise UsageError(f"--now: {exc}") from None


def _root(ctx: click.Context) -> Path:
    return find_workspace(Path(ctx.obj["workspace"]).resolve())


def _db(ctx: click.Context, root: Path, *, create: bool = True) -> Database:
    return open_db(state_path(root, ctx.obj["state"]), create=create)


def _checked(root: Path) -> DesiredState:
    """The workspace, or SpecErrors printed as validate prints them (nothing is planned from a broken spec)."""
    desired, problems = load_workspace(root)
    problems = sorted(set(problems + check(desired)))
    if any(p.severity == "error" for p in problems):
        _print_problems(problems, "text")
        raise SpecErrors([p for p in problems if p.severity == "error"])
    return desired


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
@NOW_OPTION
@CONFIRM_OPTION
@click.pass_context
def plan(
    ctx: click.Context,
    fmt: str,
    detailed_exitcode: bool,
    count_budget: float,
    now: str | None,
    confirm: tuple[str, ...],
) -> None:
    """Show what apply would do, with audience counts, against the state database. Changes nothing.

    Without a state database (as in CI) the plan is made against an empty one.
    """
    root = _root(ctx)
    desired = _checked(root)
    path = state_path(root, ctx.obj["state"])
    db = open_db(path) if path.exists() else Database(memory=True)
    if not path.exists():
        migrations.apply(db)
    moment = _clock(now).now()
    observed = observe_for(db, desired, now=moment, budget=count_budget)
    result = make_plan(desired, observed, now=moment, git_commit=git_commit(root), confirm=confirm)
    click.echo({"text": as_text, "json": as_json, "markdown": as_markdown}[fmt](result).rstrip("\n"))
    if result.errors:
        ctx.exit(1)
    ctx.exit(2 if detailed_exitcode and result.has_changes else 0)


@main.command()
@NOW_OPTION
@CONFIRM_OPTION
@click.pass_context
def apply(ctx: click.Context, now: str | None, confirm: tuple[str, ...]) -> None:
    """Carry out the plan once: record lists and fields, schedule, pause, cancel. Never sends."""
    root = _root(ctx)
    desired = _checked(root)
    db = _db(ctx, root)
    result, applied = plan_and_apply(db, desired, now=_clock(now).now(), git_commit=git_commit(root), confirm=confirm)
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
    root = _root(ctx)
    db = _db(ctx, root)
    clock = _clock(now)
    result = reconcile_once(root, db, now=clock.now(), confirm=confirm)
    if not result.valid:
        _print_problems(result.problems, "text")
        click.echo(f"Revision {result.revision} has errors: nothing of it was applied.", err=True)
    elif result.plan is not None:
        for action in result.plan.actions:
            click.echo(f"{action.subject}: {action.summary}")
        for problem in result.plan.problems:
            click.echo(problem.format(), err=True)
    for name in result.started:
        click.echo(f"Campaign {name}: started")
    report = asyncio.run(_dispatch(root, db, clock))
    for line in _dispatch_lines(report):
        click.echo(line)
    if result.valid and not (result.plan and result.plan.actions) and not result.started and not report.sources:
        click.echo("Nothing to do.")
    ctx.exit(0 if result.valid and not (result.plan and result.plan.errors) else 1)


async def _dispatch(root: Path, db: Database, clock: Clock) -> DispatchReport:
    """One dispatch pass with a progress bar per campaign on a terminal (log lines otherwise)."""
    import signal

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
        db, root=root, clock=clock, stop=stop, on_progress=on_progress if sys.stderr.isatty() else None
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
        lines.append(f"Campaign {progress.source}: {outcomes or 'nothing sent'}")
    lines += [f"Campaign {name}: finished" for name in report.finished]
    return lines


@main.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def status(ctx: click.Context, fmt: str) -> None:
    """Campaigns with their condition and progress, the last applied revision, and the last error."""
    root = _root(ctx)
    report = status_report(_db(ctx, root, create=False))
    click.echo(json.dumps(report, indent=2) if fmt == "json" else format_status(report))


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
    default=lambda: int(os.environ.get("RECONCILER_PORT", "8025")),
    show_default="8025",
    help="Port of the web service (RECONCILER_PORT).",
)
@click.pass_context
def run(ctx: click.Context, interval: float, host: str, port: int) -> None:
    """The daemon: watch the workspace, apply every good revision, start campaigns when they are due, send, and
    serve the unsubscribe and preference pages, tracking and the API on HOST:PORT."""
    root = _root(ctx)
    db = _db(ctx, root)
    sender = _db(ctx, root)  # connections of their own: sending and the web service run beside the reconcile loop
    web = WebOptions(_db(ctx, root), host=host, port=port)
    asyncio.run(run_daemon(root, db, clock=SystemClock(), interval=interval, dispatch_db=sender, web=web))


# --- contacts -----------------------------------------------------------------------------------------------------


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
    root = _root(ctx)
    desired = _checked(root)
    path = state_path(root, ctx.obj["state"])
    db = open_db(path) if path.exists() else None
    content, lists, kind, bulk = _render_content(desired, target)
    field_types = {name: field.type for name, field in desired.fields.items()}
    if contact_email:
        if db is None or (row := contact_row(db, normalise_email(contact_email))) is None:
            raise UsageError(
                f"--contact: {contact_email} is not a contact in the state database; import it first, "
                "or leave --contact out to render for a sample contact"
            )
    else:
        row = sample_row(field_types)
    settings = desired.settings
    assert settings is not None
    composer = Composer(
        content,
        source=target.split(":", 1)[0],
        stage="",
        kind=kind,
        bulk=bulk,
        field_types=field_types,
        lists={name: {"title": desired.lists[name].title} for name in lists if name in desired.lists},
        public_url=settings.public_url,
        signer=signer_for(db) if db is not None else Signer(b"preview"),
        instance=instance_id(db) if db is not None else "preview",
    )
    if output is not None and output.suffix.lower() == ".eml":
        message = composer.compose(row, now=SystemClock().now())
        output.write_bytes(message.data)
        click.echo(f"Wrote {output} ({len(message.data) / 1024:.1f} KB message)", err=True)
        return
    page = composer.render(row).html
    if output is None:
        click.echo(page)
        return
    output.write_text(page, encoding="utf-8")
    click.echo(f"Wrote {output} ({len(page.encode()) / 1024:.1f} KB of HTML)", err=True)


def _render_content(desired: DesiredState, target: str) -> tuple[dict[str, Any], list[str], str, bool]:
    templates = TemplateSet(desired.templates)
    if ":" not in target:
        campaign = desired.campaigns.get(target)
        if campaign is None:
            hint = did_you_mean(
                target, desired.campaigns, otherwise="campaigns: " + ", ".join(sorted(desired.campaigns))
            )
            raise UsageError(f"no campaign named {target!r}; {hint}")
        return campaign_content(desired, campaign, templates), campaign.audience.lists, "campaign", True
    name, step_id = target.split(":", 1)
    workflow = desired.workflows.get(name)
    if workflow is None:
        hint = did_you_mean(name, desired.workflows, otherwise="workflows: " + ", ".join(sorted(desired.workflows)))
        raise UsageError(f"no workflow named {name!r}; {hint}")
    steps = {step.id: step for _, step in walk_steps(workflow.steps) if isinstance(step, SendStep) and step.id}
    if step_id not in steps:
        raise UsageError(
            f"workflow {name} has no send step with id {step_id!r}; send steps with an id: "
            + (", ".join(sorted(steps)) or "none")
        )
    trigger_list = getattr(workflow.trigger, "subscribed", None)
    content = step_content(desired, workflow, steps[step_id], templates)
    return content, [trigger_list] if trigger_list else [], "workflow", workflow.category == "marketing"


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
@click.pass_context
def contacts_import(ctx: click.Context, file: Path, lists: tuple[str, ...], consent: str | None) -> None:
    """Import a CSV or JSONL file: columns are field names; bad rows are reported with their line."""
    root = _root(ctx)
    desired, problems = load_workspace(root)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        _print_problems(errors, "text")
        raise SpecErrors(errors)
    db = _db(ctx, root)
    size = file.stat().st_size if file.is_file() else 0
    if sys.stderr.isatty() and size > 1_000_000:
        with click.progressbar(length=size, label=f"Importing {file.name}", file=sys.stderr) as bar:
            position = {"bytes": 0}

            def progress(rows: int) -> None:
                done = int(size * rows / max(1, _estimate_rows(file, size)))
                bar.update(max(0, min(size, done) - position["bytes"]))
                position["bytes"] = min(size, done)

            report = import_file(
                db, desired, file, lists=list(lists), consent_text=consent, now=SystemClock().now(), progress=progress
            )
    else:

        def progress(rows: int) -> None:
            if rows % 100_000 < BATCH_ROWS:
                log.info("%s: %d rows read", file.name, rows)

        report = import_file(
            db,
            desired,
            file,
            lists=list(lists),
            consent_text=consent,
            now=SystemClock().now(),
            progress=progress if size > 1_000_000 else None,
        )
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
    db = _db(ctx, _root(ctx), create=False)
    found = export_contact(db, _address(email))
    if found is None:
        raise ReconcilerError(f"no contact {email} in the state database")
    click.echo(json.dumps(found, indent=2, ensure_ascii=False))


@contacts.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def contacts_erase(ctx: click.Context, email: str, yes: bool) -> None:
    """Delete everything about one person (GDPR erasure); a hash of the address keeps them from being re-imported."""
    address = _address(email)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("erasing cannot be undone: add --yes to confirm")
        click.confirm(f"Erase everything about {address}? This cannot be undone", abort=True)
    db = _db(ctx, _root(ctx))
    held = erase_contact(db, address, at=iso(SystemClock().now()))
    click.echo(f"Erased {address}." if held else f"No record of {address}; its hash is kept so it is never imported.")


def _address(email: str) -> str:
    try:
        return normalise_email(email)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@contacts.command("sample")
@click.option("--count", type=click.IntRange(min=1), default=200, show_default=True, help="How many rows.")
@click.option("--seed", type=int, default=2026, show_default=True, help="The same seed gives the same rows.")
def contacts_sample(count: int, seed: int) -> None:
    """Print made-up contacts as CSV (example.com addresses) to try a workspace: `... sample > try.csv`."""
    for chunk in sample_csv(count, seed=seed):
        sys.stdout.write(chunk)


# --- segments -----------------------------------------------------------------------------------------------------


@main.group()
def segments() -> None:
    """Look at segments as the state database has them now."""


@segments.command("show")
@click.argument("name")
@click.option("--sample", type=click.IntRange(min=0), default=10, show_default=True, help="Members to list.")
@click.option("--explain", is_flag=True, help="How many contacts meet each condition.")
@click.option("--contact", metavar="EMAIL", default=None, help="Why this contact is in or out: each condition ✓/✗.")
@NOW_OPTION
@click.pass_context
def segments_show(
    ctx: click.Context, name: str, sample: int, explain: bool, contact: str | None, now: str | None
) -> None:
    """A segment's size, a sample of its members, and with --explain or --contact why people are in or out."""
    root = _root(ctx)
    desired = _checked(root)
    db = _db(ctx, root, create=False)
    address = _address(contact) if contact else None
    click.echo(show(db, desired, name, now=_clock(now).now(), sample=sample, explain=explain, contact=address))
