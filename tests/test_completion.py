"""Shell completion as the README documents it: `_RECONCILER_COMPLETE=SHELL_source reconciler` prints a script for
bash, zsh and fish, and the script completes commands, subcommands and options."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

COMMAND = Path(sys.executable).parent / "reconciler"
README = (REPO / "README.md").read_text()
pytestmark = [
    pytest.mark.skipif(not COMMAND.exists(), reason="the reconciler command is not installed beside Python"),
    pytest.mark.no_state,
]


def _environment(**variables: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{COMMAND.parent}{os.pathsep}{os.environ.get('PATH', '')}", **variables}


def _run(**variables: str) -> str:
    done = subprocess.run(
        [str(COMMAND)], env=_environment(**variables), capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


@pytest.mark.parametrize(
    ("shell", "registers"),
    [
        ("bash", "complete -o nosort -F _reconciler_completion reconciler"),
        ("zsh", "compdef _reconciler_completion reconciler"),
        ("fish", "complete --no-files --command reconciler"),
    ],
)
def test_a_completion_script_is_printed_for_each_shell(shell: str, registers: str) -> None:
    assert f"_RECONCILER_COMPLETE={shell}_source reconciler" in README
    script = _run(_RECONCILER_COMPLETE=f"{shell}_source")
    assert registers in script
    assert f"_RECONCILER_COMPLETE={shell}_complete" in script


def _bash_completes(words: str) -> list[str]:
    """What bash offers after `words` (the last one being typed), with the script sourced as the README says."""
    script = f"""
eval "$(_RECONCILER_COMPLETE=bash_source reconciler)"
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
_reconciler_completion reconciler
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(["bash", "-c", script], env=_environment(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_commands_subcommands_and_options() -> None:
    assert _bash_completes("reconciler va") == ["validate"]
    assert "init" in _bash_completes("reconciler ''")
    assert _bash_completes("reconciler contacts im") == ["import"]
    assert _bash_completes("reconciler validate --for") == ["--format"]
    assert _bash_completes("reconciler validate --format ''") == ["text", "json", "github"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_get_the_same_candidates(shell: str) -> None:
    """zsh and fish need not be installed: their scripts ask the program, and this is its answer."""
    cword = "im" if shell == "fish" else "2"
    answer = _run(_RECONCILER_COMPLETE=f"{shell}_complete", COMP_WORDS="reconciler contacts im", COMP_CWORD=cword)
    assert "import" in answer
