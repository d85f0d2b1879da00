"""The map in docs/architecture.md stays true: every module is on it, its layers are the enforced ones, and the
house keeps its small rooms."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.no_state  # the PostgreSQL pass of the suite leaves it out

PACKAGE = REPO / "src" / "reconciler"
MAP = (REPO / "docs" / "architecture.md").read_text()
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
DDL_FUNCTIONS = {("state/schema.py", "_initial")}
"""Migrations whose body is one SQL script: long by nature, and never edited once released."""


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _has_code(path: Path) -> bool:
    """An __init__ that defines something (not only re-exports) is a room of its own."""
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef) for node in tree.body)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_is_named_in_the_architecture_map(path: Path) -> None:
    relative = path.relative_to(PACKAGE).as_posix()
    if path.name == "__init__.py" and not _has_code(path):
        return
    shown = "__main__" if relative == "__main__.py" else relative
    assert f"`{shown}`" in MAP, f"{relative} is not in docs/architecture.md's module table"


def test_the_layers_in_the_map_are_the_ones_lint_imports_enforces() -> None:
    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    block = MAP.split("## The layers", 1)[1].split("```", 2)[1]
    drawn = [re.split(r"\s{2,}", line.strip())[0] for line in block.strip().splitlines()]
    assert drawn == contract["layers"]
    assert contract["exhaustive"] is True and contract["containers"] == ["reconciler"]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    text = path.read_text()
    relative = path.relative_to(PACKAGE).as_posix()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{relative} has {text.count(chr(10))} lines: split it"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (relative, node.name) not in DDL_FUNCTIONS:
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{relative}:{node.lineno} {node.name} has {length} lines"


def test_no_citation_of_documents_outside_the_repository() -> None:
    """The repository stands alone: nothing points a reader at notes a clone does not contain."""
    cited = re.compile(r"ARCHITECTURE\.md|PRODUCT §|PRODUCT\)|MAIL-FACTS|STYLE\.md")
    files = [*PACKAGE.rglob("*.py"), *REPO.glob("docs/*.md"), REPO / "README.md", REPO / "CHANGELOG.md"]
    files += [REPO / "pyproject.toml", REPO / "Makefile", *(REPO / "tests").glob("*.py")]
    beside = [path for folder in ("bench", "ci", "deploy") for path in (REPO / folder).rglob("*") if path.is_file()]
    files += [path for path in beside if "__pycache__" not in path.parts]
    files += [REPO / "Dockerfile", REPO / "action.yml"]
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in files
        if path.name != "test_architecture.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if cited.search(line)
    ]
    assert not offenders
