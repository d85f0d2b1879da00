"""What git says about the workspace: the commit a revision was read at, and whether git tracks the state."""

from __future__ import annotations

import subprocess
from pathlib import Path

from reconciler.errors import Problem
from reconciler.load import YAML_FOLDERS, display_path


def git_commit(root: Path) -> str | None:
    """The commit the workspace is checked out at (short), "+dirty" when its files differ; None outside git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(root), "status", "--porcelain", "--", *YAML_FOLDERS, "templates"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


STATE_SIDE_FILES = ("-wal", "-shm", "-journal")
"""What SQLite keeps beside a database file while it is open: they hold the latest writes, as personal as the rest."""


def tracked_state(root: Path, state: Path | None) -> list[Problem]:
    """A warning when git tracks the state (the database, its WAL and shared-memory files, anything in `.state/`):
    contacts and consent records are personal data, and a repository is copied to every clone. None outside git.
    `state` is the SQLite file (None: the state is in PostgreSQL, and only `.state/` is looked at)."""
    root = root.resolve()
    candidates = [root / ".state"]
    if state is not None:
        state = state.resolve()
        candidates += [state.with_name(state.name + suffix) for suffix in ("", *STATE_SIDE_FILES)]
    inside = sorted({str(path.relative_to(root)) for path in candidates if path.is_relative_to(root)})
    if not inside:
        return []
    try:
        listed = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(root), "ls-files", "-z", "--", *inside],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    tracked = sorted(path for path in listed.stdout.split("\0") if path) if listed.returncode == 0 else []
    if not tracked:
        return []
    first, *rest = tracked
    message = "the state database (contacts, consent: personal data) is tracked by git"
    if rest:
        message += f"; so {'is' if len(rest) == 1 else 'are'} {', '.join(rest[:3])}{' …' if len(rest) > 3 else ''}"
    folders = {path.split("/", 1)[0] if path.startswith(".state/") else path for path in tracked}
    hint = (
        f"run `git rm -r --cached {' '.join(sorted(folders))}` and commit (the files stay here); a new state database "
        "writes .state/.gitignore so `git add -A` leaves it out"
    )
    return [Problem(display_path(root / first), 1, 1, "", "", "", message, hint, "warning")]
