"""The `reconciler` group, its global options, and what every command shares: finding the workspace and the
state database, `--now`, `--confirm`, and printing problems as `validate` does.

Commands import the library inside their own body, so `reconciler --help` and a command that needs little (such as
`validate`) start without the send and web stacks.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reconciler import __version__
from reconciler.errors import Problem, ReconcilerError, SpecErrors, UsageError, count_problems

if TYPE_CHECKING:
    from reconciler.clock import Clock
    from reconciler.spec import DesiredState
    from reconciler.state.location import StateLocation
    from reconciler.state.postgres import StateDatabase


class Group(click.Group):
    """Turns our errors into messages and exit codes, and anything unexpected into a short bug report."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """`--debug` is a global option, but is written after the command as often as before it (`reconciler
        validate --debug`): it is moved to the front, wherever it stands before a `--`."""
        end = args.index("--") if "--" in args else len(args)
        if "--debug" in args[:end]:
            args = ["--debug", *(a for a in args[:end] if a != "--debug"), *args[end:]]
        return super().parse_args(ctx, args)

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
                f"Error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback, and please "
                "report it)",
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
    type=click.Path(dir_okay=False),  # a string: a postgresql:// URL must keep its "//" (a Path would fold it)
    default=None,
    help="The state database (default: $RECONCILER_STATE, else .state/reconciler.db in the workspace).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs (also accepted after the command).")
@click.version_option(__version__, prog_name="reconciler")
@click.pass_context
def main(ctx: click.Context, workspace: Path, state: str | None, debug: bool) -> None:
    """Email marketing as code: validate, plan and apply a workspace of YAML and MJML.

    Exit codes: 0 success, 1 the spec or the plan has errors (or an import had bad rows, or mail could not go out),
    2 usage errors.
    """
    ctx.obj = {"workspace": workspace, "state": state, "debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


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


def clock(now: str | None) -> Clock:
    from reconciler.clock import FixedClock, SystemClock, parse_instant

    if now is None:
        return SystemClock()
    try:
        return FixedClock(parse_instant(now))
    except ValueError as exc:
        raise UsageError(f"--now: {exc}") from None


def workspace_root(ctx: click.Context) -> Path:
    from reconciler.load import find_workspace

    return find_workspace(Path(ctx.obj["workspace"]).resolve())


def state_location(ctx: click.Context, root: Path) -> StateLocation:
    """Where the state is: `--state`, else RECONCILER_STATE, else `.state/reconciler.db` in the workspace (a SQLite
    file, or a PostgreSQL database)."""
    from reconciler.state.location import choose

    return choose(root, ctx.obj["state"])


def database(
    ctx: click.Context, root: Path, *, create: bool = True, read_only: bool = False, bulk: bool = False
) -> StateDatabase:
    """The state database; `read_only` for commands that only read (they work on a read-only mount too), `bulk`
    for one that writes a lot at once (an import); `create=False`: an error where there is no state yet."""
    from reconciler.state.engine import open_state

    return open_state(state_location(ctx, root), create=create, read_only=read_only, bulk=bulk)


def existing_database(ctx: click.Context, root: Path) -> StateDatabase | None:
    """The state database opened for reading, or None where there is none yet (a command that works without one:
    a plan in CI, validate, a test send)."""
    from reconciler.state.engine import open_existing

    return open_existing(state_location(ctx, root), read_only=True)


def checked(root: Path) -> DesiredState:
    """The workspace, or SpecErrors printed as validate prints them (nothing is planned from a broken spec)."""
    from reconciler.check import validate_workspace

    desired, problems = validate_workspace(root)
    if any(p.severity == "error" for p in problems):
        print_problems(problems, "text")
        raise SpecErrors([p for p in problems if p.severity == "error"])
    return desired


def print_problems(
    problems: list[Problem], fmt: str, *, checked: str | None = None, elsewhere: Sequence[Problem] = ()
) -> None:
    """Problems as `validate` prints them, with a summary on stderr. `checked` names the files asked about when
    not the whole workspace; `elsewhere` are the problems of its other files, counted so that a clean file is
    never mistaken for a clean workspace."""
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    if fmt == "json":
        payload = {
            "ok": errors == 0,
            "errors": errors,
            "warnings": warnings,
            "problems": [p.as_dict() for p in problems],
        }
        click.echo(json.dumps(payload, indent=2))
        return
    for problem in problems:
        click.echo(problem.github() if fmt == "github" else problem.format())
    summary = count_problems(problems)
    if checked is not None:
        summary = f"{summary} in {checked}" if problems else f"No problems in {checked}"
        others = count_problems(elsewhere)
        summary += (
            f"; the workspace's other files have {others} (reconciler validate lists them)"
            if elsewhere
            else "; the rest of the workspace is valid too"
        )
    if fmt == "github":
        click.echo(f"reconciler validate: {summary}", err=True)
    elif problems or checked is not None:
        click.echo(summary + ("." if checked is not None and not problems else ""), err=True)
    else:
        click.echo("The workspace is valid.", err=True)


def address(email: str, *, option: str = "", sendable: bool = False) -> str:
    """A normalised address from the command line, or a usage error saying what is wrong with it (after `option`,
    the option that gave it). `sendable`: an address mail is sent to, not one looked up."""
    from reconciler.rows import normalise_email

    try:
        return normalise_email(email, sendable=sendable)  # export and erase find what older versions stored
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}" if option else str(exc)) from None
