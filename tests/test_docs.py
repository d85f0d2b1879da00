"""Every command, option and document kind a user can meet is documented where they will look."""

from __future__ import annotations

import json
import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click
import pytest

from conftest import REPO, reconciler
from reconciler.check import validate_workspace
from reconciler.cli import main
from reconciler.spec import KINDS
from reconciler.yamlnodes import parse_documents

pytestmark = pytest.mark.no_state  # the PostgreSQL pass of the suite leaves it out

README = (REPO / "README.md").read_text()
SPEC_DOC = (REPO / "docs" / "spec-language.md").read_text()


def mentions(text: str, option: str) -> bool:
    """Whether `text` names `option` as a whole token: "-o" is not in "one-off", "--count" not in "--count-budget"."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def commands() -> list[tuple[str, click.Command]]:
    """Every command, with the subcommands of groups as "group sub"."""
    assert isinstance(main, click.Group)
    found = []
    for name, command in sorted(main.commands.items()):
        found.append((name, command))
        if isinstance(command, click.Group):
            found += [(f"{name} {sub}", child) for sub, child in sorted(command.commands.items())]
    return found


@pytest.mark.parametrize(("name", "command"), commands())
def test_every_command_and_option_is_in_the_readme(name: str, command: click.Command) -> None:
    assert f"  {name} " in README or f"reconciler {name}" in README
    for param in command.params:
        if isinstance(param, click.Option):
            assert any(mentions(README, opt) for opt in param.opts), f"{name} {param.opts} is not in README.md"


def test_global_options_are_in_the_readme() -> None:
    for param in main.params:
        if isinstance(param, click.Option) and "--help" not in param.opts:
            assert any(mentions(README, opt) for opt in param.opts), param.opts


def test_options_are_matched_as_whole_tokens() -> None:
    assert mentions("render X [-o FILE]", "-o") and mentions("`--count-budget SECONDS`", "--count-budget")
    assert not mentions("a one-off draft", "-o") and not mentions("--count-budget", "--count")
    assert not mentions("--output-dir", "--output") and not mentions("x--o", "-o")


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_is_in_the_example_and_the_spec_guide(kind: str) -> None:
    example = "\n".join(p.read_text() for p in REPO.glob("spec/*.yaml")) + "\n".join(
        p.read_text() for p in REPO.glob("campaigns/*.yaml")
    )
    assert f"kind: {kind}" in example
    assert kind in SPEC_DOC or kind in README


def test_the_readme_shows_the_two_commands_and_ci_usage() -> None:
    for text in ("make run", "make test", "reconciler validate --format github", "reconciler schema"):
        assert text in README


def test_the_installed_distribution_and_the_command_agree_on_name_and_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == "reconciler-email"  # "reconciler" on the package index is someone else's
    try:
        installed = version(project["name"])
    except PackageNotFoundError:  # an environment installed before the rename
        pytest.skip("this environment installed the distribution under its old name; make install again")
    done = reconciler("--version", cwd=REPO)
    assert done.stdout.strip().endswith(project["version"]) and installed == project["version"], done.stdout


def test_the_editor_schema_covers_every_file_the_loader_reads() -> None:
    readme = (REPO / "README.md").read_text()
    found = re.search(r'"\./\.vscode/reconciler\.schema\.json": (\[[^\]]*\])', readme)
    assert found, "the README's yaml.schemas example"
    globs = json.loads(found.group(1))
    for path in ("spec/lists.yaml", "spec/more/lists.yml", "campaigns/2030/sale.yaml", "campaigns/sale.yml"):
        assert any(_globstar(glob).fullmatch(path) for glob in globs), (path, globs)


def _globstar(glob: str) -> re.Pattern[str]:
    """A glob as VS Code reads it: `**/` is any number of folders (none too), `*` stays within one."""
    parts = re.split(r"(\*\*/|\*)", glob)
    table = {"**/": "(?:[^/]+/)*", "*": "[^/]*"}
    return re.compile("".join(table.get(part, re.escape(part)) for part in parts))


def test_each_seed_pattern_in_workflows_md_is_yaml_that_validates_in_the_example(example: Path) -> None:
    text = (REPO / "docs" / "workflows.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL):  # every snippet of the page is YAML
        assert parse_documents(block)[1] == [], block
    section = text.split("## The seed patterns in YAML", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 8, "one snippet per seed pattern"
    documents = [doc for block in blocks for doc in block.split("---\n")]
    campaigns = [doc for doc in documents if "kind: Campaign" in doc]
    (example / "spec/seed-patterns.yaml").write_text("---\n".join(d for d in documents if d not in campaigns))
    (example / "campaigns/seed-patterns.yaml").write_text("---\n".join(campaigns))
    desired, problems = validate_workspace(example)
    assert [p.format() for p in problems if p.severity == "error" or "seed-patterns" in p.path] == []
    assert len(desired.workflows) == 5 + 7 and len(desired.campaigns) == 3 + 1
