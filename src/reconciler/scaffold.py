"""`reconciler init`: a new workspace from the skeleton shipped in `skeleton/`, never over a file that exists.

The skeleton is the smallest workspace that shows each part (Settings, a list, a layout with the footer the law
asks for, a draft campaign) and that validate accepts once the user filled in what only they know: Settings values
are the `FILL-IN` placeholder that `check` reports until each is replaced. Beside it go a `.gitignore` for the state
folder and the JSON Schema wired for VS Code, as the README's editor section describes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ReconcilerError
from reconciler.spec.schema import json_schema_text

SKELETON = Path(__file__).parent / "skeleton"
WORKSPACE_FOLDERS = ("spec", "campaigns", "templates")
SCHEMA_FILE = ".vscode/reconciler.schema.json"
EDITOR_SETTINGS = ".vscode/settings.json"
GITIGNORE = ".gitignore"
STATE_IGNORED = ".state/"
_IGNORES_STATE = {".state", ".state/", "/.state", "/.state/", ".state/*", "/.state/*"}


@dataclass(frozen=True)
class Created:
    """What `create_workspace` did, for the command to tell."""

    root: Path
    written: tuple[str, ...]
    """The files written, relative to `root`, in the order the skeleton lists them."""
    gitignore: str
    """`written` (a new .gitignore), `added` (.state/ appended to the user's), `present` (it already said so) or
    `linked` (a symbolic link, left alone: what it points to may be outside the folder)."""


def skeleton_files() -> dict[str, str]:
    """Every file of a new workspace: relative path → text."""
    files = {
        path.relative_to(SKELETON).as_posix(): path.read_text(encoding="utf-8")
        for folder in WORKSPACE_FOLDERS
        for path in sorted((SKELETON / folder).rglob("*"), key=lambda p: (p.name != "settings.yaml", p))
        if path.is_file()
    }
    schemas = {f"./{SCHEMA_FILE}": ["spec/**/*.yaml", "spec/**/*.yml", "campaigns/**/*.yaml", "campaigns/**/*.yml"]}
    files[SCHEMA_FILE] = json_schema_text()
    files[EDITOR_SETTINGS] = json.dumps({"yaml.schemas": schemas}, indent=2) + "\n"
    return files


def create_workspace(root: Path) -> Created:
    """Write a new workspace into `root` (created if missing). A folder that already holds a workspace, or any
    file the skeleton would write, is refused before anything is written: init never overwrites, so running it
    in the wrong folder costs nothing. Other files (a README, .git) may stay: a new repository is rarely empty."""
    if root.exists() and not root.is_dir():
        raise ReconcilerError(f"{root} is a file, not a folder (give reconciler init a new or empty folder)")
    files = skeleton_files()
    taken = [folder + "/" for folder in WORKSPACE_FOLDERS if _exists(root / folder)]
    taken += [path for path in files if _exists(root / path) and not path.startswith(tuple(taken))]
    taken += sorted(  # a folder of ours that is a link (even a broken one): writing would follow it
        {f"{folder}/ (a link)" for path in files for folder in _folders(path) if (root / folder).is_symlink()}
    )
    if taken:
        raise ReconcilerError(
            f"{root} already holds {', '.join(taken)}: reconciler init never overwrites a file (give it a folder "
            "that does not exist yet, or move these away first)"
        )
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("x", encoding="utf-8") as out:  # "x": a file that appeared meanwhile is not replaced
            out.write(text)
    return Created(root=root, written=tuple(files), gitignore=_ignore_state(root / GITIGNORE))


def _folders(path: str) -> list[str]:
    """The folders a file of the skeleton is written into, outermost first: `a/b/c.txt` -> [`a`, `a/b`]."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[: n + 1]) for n in range(len(parts))]


def _exists(path: Path) -> bool:
    """A path that exists, or a symbolic link (even a broken one) that writing to would follow."""
    return path.exists() or path.is_symlink()


def _ignore_state(gitignore: Path) -> str:
    """Make `.gitignore` keep the state folder (contacts, consent, sends) out of git; the user's lines stay."""
    if gitignore.is_symlink():
        return "linked"
    if not gitignore.exists():
        with gitignore.open("x", encoding="utf-8") as out:
            out.write(f"# the state database and the outbox: personal data, never in git\n{STATE_IGNORED}\n")
        return "written"
    text = gitignore.read_text(encoding="utf-8", errors="replace")
    if any(line.strip() in _IGNORES_STATE for line in text.splitlines()):
        return "present"
    with gitignore.open("a", encoding="utf-8") as out:
        out.write(("" if text.endswith("\n") or not text else "\n") + f"{STATE_IGNORED}\n")
    return "added"
