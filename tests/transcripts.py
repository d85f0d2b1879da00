"""Console transcripts in Markdown, and whether a command's real output is the one a transcript shows.

In a ```console block, a line starting with "$ " is a command (a line ending in a backslash goes on to the next);
the lines after it, up to the next command, are what it prints. A shown line "..." (indented or not) stands for any
number of lines. Revision and commit ids, timestamps and durations differ from run to run: they are compared as
placeholders.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import cache

FENCE = re.compile(r"^```(\S*)\s*$")
ANY_LINES = "..."
VARYING = (
    (re.compile(r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})?"), "<time>"),
    (re.compile(r"\b[0-9a-f]{12}\b(?:\+dirty)?"), "<id>"),  # a revision, or a commit (with uncommitted edits)
    (re.compile(r"\b\d+(?:\.\d+)? ?(?:ms|s)\b"), "<duration>"),
)


@dataclass(frozen=True)
class Command:
    line: int  # where the command starts in the file, from 1
    text: str  # as a shell reads it: continuation lines kept, with their backslash-newlines
    shown: tuple[str, ...]  # what the transcript shows it print


def console_blocks(markdown: str) -> list[list[Command]]:
    """Every ```console block of `markdown`, in order, as its commands."""
    blocks: list[list[Command]] = []
    block: list[Command] | None = None
    for number, line in enumerate(markdown.splitlines(), start=1):
        fence = FENCE.match(line)
        if fence:
            if block is not None:
                blocks.append(block)
                block = None
            elif fence.group(1) == "console":
                block = []
        elif block is not None:
            if block and block[-1].text.endswith("\\") and not block[-1].shown:
                last = block[-1]
                block[-1] = Command(last.line, f"{last.text}\n{line}", ())
            elif line.startswith("$ "):
                block.append(Command(number, line[2:], ()))
            else:
                assert block, f"line {number}: a console block starts with a command, not {line!r}"
                last = block[-1]
                block[-1] = Command(last.line, last.text, (*last.shown, line))
    return blocks


def normalise(lines: list[str] | tuple[str, ...]) -> list[str]:
    """The lines with ids, times and durations as placeholders, without trailing blanks or blank last lines."""
    result = []
    for line in lines:
        for pattern, placeholder in VARYING:
            line = pattern.sub(placeholder, line)
        result.append(line.rstrip())
    while result and not result[-1]:
        result.pop()
    return result


def fits(shown: list[str], actual: list[str]) -> bool:
    """Whether `actual` is `shown`, each "..." in `shown` standing for any number of lines (none too)."""

    @cache
    def match(i: int, j: int) -> bool:
        if i == len(shown):
            return j == len(actual)
        if shown[i].strip() == ANY_LINES:
            return any(match(i + 1, k) for k in range(j, len(actual) + 1))
        return j < len(actual) and shown[i] == actual[j] and match(i + 1, j + 1)

    return match(0, 0)


def mismatch(command: Command, output: str, *, where: str) -> str | None:
    """None when `output` is what the transcript shows; otherwise a diff from the transcript to the output."""
    shown, actual = normalise(command.shown), normalise(output.splitlines())
    if fits(shown, actual):
        return None
    diff = difflib.unified_diff(shown, actual, f"{where}:{command.line} (shown)", "actual output", lineterm="")
    return f"$ {command.text}\n" + "\n".join(diff)
