"""The `reconciler` command: each subcommand is a few lines over the library.

Errors we raise on purpose are printed as one clear message, never a traceback (``--debug`` shows one).
Exit codes (PRODUCT §3): 0 success, 1 the spec or plan has errors, 2 usage errors.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from reconciler import __version__
from reconciler.check import check
from reconciler.errors import Problem, ReconcilerError, UsageError
from reconciler.load import find_workspace, load_workspace
from reconciler.spec.schema import json_schema_text

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
            click.echo(f"Error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback, and "
                       "please report it)", err=True)  # fmt: skip
            ctx.exit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C", "--workspace", "workspace", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
    show_default=True, help="The workspace folder (holding spec/, campaigns/, templates/).",
)  # fmt: skip
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(__version__, prog_name="reconciler")
@click.pass_context
def main(ctx: click.Context, workspace: Path, debug: bool) -> None:
    """Email marketing as code: validate, plan and apply a workspace of YAML and MJML."""
    ctx.obj = {"workspace": workspace, "debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text", show_default=True,
              help="github prints annotations for GitHub Actions.")  # fmt: skip
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
        click.echo(json.dumps({"ok": errors == 0, "errors": errors, "warnings": warnings,
                               "problems": [p.as_dict() for p in problems]}, indent=2))  # fmt: skip
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
