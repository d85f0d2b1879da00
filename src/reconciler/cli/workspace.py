"""Commands that read or start the workspace: `init`, `validate`, `schema` and `segments show`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from reconciler.cli.main import (
    NOW_OPTION,
    address,
    checked,
    clock,
    database,
    existing_database,
    main,
    print_problems,
    state_location,
    workspace_root,
)
from reconciler.errors import Problem, UsageError

if TYPE_CHECKING:
    from reconciler.spec import DesiredState


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

    PATHS are workspaces, or files in one (then only their problems are shown). Needs no secret and no state; with
    a state database at hand it also warns about edits to campaigns that were sent, and in a git repository when
    git tracks the state.
    """
    from reconciler.check import validate_workspace
    from reconciler.gitrepo import tracked_state

    problems: list[Problem] = []
    elsewhere: list[Problem] = []
    groups = _workspaces(paths or (ctx.obj["workspace"],))
    for root, only in groups:
        desired, found = validate_workspace(root)
        if not any(p.severity == "error" for p in found):
            found += _history_edits(ctx, root, desired)
        found += tracked_state(root, state_location(ctx, root).path)
        if only is not None:
            found += _not_read(root, [p for p in paths if p.is_file()])
        for problem in found:
            (problems if only is None or Path(problem.path).resolve() in only else elsewhere).append(problem)
    problems = sorted(set(problems))
    partial = any(only is not None for _, only in groups)
    checked = (
        (", ".join(str(p) for p in paths) if len(paths) <= 3 else f"the {len(paths)} paths given") if partial else None
    )
    print_problems(problems, fmt, checked=checked, elsewhere=sorted(set(elsewhere)))
    ctx.exit(1 if any(p.severity == "error" for p in problems) else 0)


def _not_read(root: Path, given: list[Path]) -> list[Problem]:
    """A file named on the command line that the workspace does not read (a backup, a draft elsewhere) is not
    checked: say so, rather than call it valid."""
    from reconciler.archive import workspace_files
    from reconciler.load import display_path

    read = {path.resolve() for path in workspace_files(root)[0]}
    return [
        Problem(
            display_path(path),
            1,
            1,
            "",
            "",
            "",
            "not a file of the workspace: not checked",
            "the workspace reads spec/ and campaigns/ (*.yaml, *.yml) and templates/ (*.mjml, *.txt, pages/*.html)",
            "warning",
        )
        for path in given
        if path.resolve().is_relative_to(root.resolve()) and path.resolve() not in read
    ]


def _history_edits(ctx: click.Context, root: Path, desired: DesiredState) -> list[Problem]:
    """Edits to campaigns the state database says were sent (nothing without a readable state database)."""
    from reconciler.clock import SystemClock
    from reconciler.plan import history_edits
    from reconciler.state import StateError, observe

    try:
        db = existing_database(ctx, root)
        if db is None:
            return []
        observed = observe(db, audience=False)
    except StateError:
        return []  # validate needs no state: one it cannot read only means these warnings are left out
    return history_edits(desired, observed, now=SystemClock().now())


def _workspaces(targets: tuple[Path, ...]) -> list[tuple[Path, set[Path] | None]]:
    """Group PATHS by workspace; a workspace given as a folder shows all its problems."""
    from reconciler.load import find_workspace

    found: dict[Path, set[Path] | None] = {}
    for target in targets:
        if not target.exists():
            raise UsageError(f"{target} does not exist")
        root = find_workspace(target.resolve())
        if target.is_dir() and target.resolve() == root:
            found[root] = None
        elif found.get(root, set()) is not None:
            files = found.setdefault(root, set())
            assert files is not None
            files |= {p.resolve() for p in target.rglob("*")} if target.is_dir() else {target.resolve()}
    return list(found.items())


_INIT_ROLES = {
    "spec/settings.yaml": "who sends: fill in every FILL-IN",
    "spec/lists.yaml": "one list, newsletter (double opt-in)",
    "campaigns/first-newsletter.yaml": "a draft: it sends nothing until status: scheduled",
    "templates/layouts/base.mjml": "the layout every message extends",
    "templates/partials/footer.mjml": "unsubscribe link and postal address",
    "templates/newsletter/first-issue.mjml": "the campaign's content",
    ".vscode/reconciler.schema.json": "the JSON Schema (after an upgrade, reconciler schema prints the new one)",
    ".vscode/settings.json": "VS Code's YAML extension completes and checks with the schema",
}
_GITIGNORE = {
    "written": "keeps .state/ (contacts, consent, sends) out of git",
    "added": "added .state/: contacts, consent and sends stay out of git",
    "present": "already keeps .state/ out of git",
    "linked": "a symbolic link, not changed: make sure it holds .state/",
}


@main.command()
@click.argument("directory", metavar="[DIR]", required=False, type=click.Path(path_type=Path))
@click.pass_context
def init(ctx: click.Context, directory: Path | None) -> None:
    """Start a workspace in DIR (default: -C, else the current folder): Settings to fill in, a list, a layout
    with its footer, a draft campaign, .gitignore and the schema for VS Code. Never overwrites a file."""
    from reconciler.scaffold import GITIGNORE, create_workspace

    given = directory if directory is not None else Path(ctx.obj["workspace"])
    created = create_workspace(given)
    width = max(len(path) for path in created.written) + 2
    click.echo(f"Created a workspace in {given}:")
    for path in (*created.written, GITIGNORE):
        role = _GITIGNORE[created.gitignore] if path == GITIGNORE else _INIT_ROLES.get(path, "")
        click.echo(f"  {path:<{width}}{role}".rstrip())
    here = given.resolve() == Path.cwd().resolve()
    steps = [] if here else [(f"cd {shlex.quote(str(given))}", "")]
    steps += [
        ("reconciler validate", "names each FILL-IN left in spec/settings.yaml; fill them in"),
        ("reconciler plan", "what apply would do (the draft sends nothing)"),
        ('git init && git add -A && git commit -m "Our email, as code"', ""),
    ]
    click.echo("\nNext:")
    for command, why in steps:
        click.echo(f"  {command:<{width}}{why}".rstrip())


@main.command()
def schema() -> None:
    """Print the JSON Schema of workspace documents (for editors and CI)."""
    from reconciler.spec.schema import json_schema_text

    sys.stdout.write(json_schema_text())


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
    from reconciler.segment_show import show

    root = workspace_root(ctx)
    desired = checked(root)
    db = database(ctx, root, create=False, read_only=True)
    email = address(contact) if contact else None
    click.echo(show(db, desired, name, now=clock(now).now(), sample=sample, explain=explain, contact=email))
