"""A plan as people read it: text for a terminal, markdown for a pull request comment, JSON for programs."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

from reconciler.errors import Problem, count_problems
from reconciler.plan.model import SYMBOLS, Action, Plan

_VERBS = {
    "create": "to create",
    "update": "to change",
    "schedule": "to schedule",
    "unschedule": "to unschedule",
    "pause": "to pause",
    "resume": "to resume",
    "cancel": "to cancel",
    "remove": "to remove",
    "confirm": "to confirm",
}


def header(plan: Plan) -> str:
    source = f"revision {plan.revision}"
    if plan.git_commit:
        source += f" (commit {plan.git_commit})"
    return source


def totals(plan: Plan) -> str:
    counts: Counter[str] = Counter(action.op for action in plan.actions)
    parts = [f"{counts[op]} {verb}" for op, verb in _VERBS.items() if counts[op]]
    text = "Plan: " + (", ".join(parts) if parts else "no changes") + "."
    errors = len(plan.errors)
    warnings = len(plan.problems) - errors
    if errors:
        text += f" {errors} error{'s' * (errors != 1)}: those changes are not applied."
    if warnings:
        text += f" {warnings} warning{'s' * (warnings != 1)}."
    return text


def _lines(plan: Plan, action: Action) -> list[str]:
    lines = [f"{action.summary}"]
    if action.audience is not None and action.op not in ("remove", "confirm"):
        lines.append(action.audience.describe() + plan.change(action.subject, action.audience.counted))
    return lines


def _segments(plan: Plan) -> list[str]:
    width = max((len(name) for name in plan.segment_counts), default=0)
    return [
        f"  {name.ljust(width)}  {n:,} member{'s' * (n != 1)}{plan.change(f'Segment {name}', n)}"
        for name, n in sorted(plan.segment_counts.items())
    ]


def as_text(plan: Plan) -> str:
    out = [f"Plan for {header(plan)}:", ""]
    if not plan.actions:
        out.append("  No changes: the state matches the workspace.")
    width = max((len(a.subject) for a in plan.actions), default=0)
    for action in plan.actions:
        first, *rest = _lines(plan, action)
        out.append(f"  {SYMBOLS[action.op]} {action.subject.ljust(width)}  {first}")
        out += [f"    {' ' * width}  {line}" for line in rest]
    unchanged = {
        name: count
        for name, count in plan.audiences.items()
        if not any(a.kind == "Campaign" and a.name == name for a in plan.actions)
    }
    if unchanged:
        width = max(len(name) for name in unchanged)
        out += ["", "Audiences of unchanged campaigns:"]
        out += [
            f"  {name.ljust(width)}  {count.describe()}{plan.change(f'Campaign {name}', count.counted)}"
            for name, count in sorted(unchanged.items())
        ]
    if plan.workflow_runs:
        width = max(len(name) for name in plan.workflow_runs)
        out += ["", "Active runs of unchanged workflows:"]
        out += [f"  {name.ljust(width)}  {runs}" for name, runs in plan.workflow_runs.items()]
    if plan.segment_counts:
        out += ["", "Segments:", *_segments(plan)]
        if plan.uncounted_segments:
            out.append(
                f"  ... and {len(plan.uncounted_segments)} more not counted within the time budget "
                "(--count-budget, or `reconciler segments show NAME`)"
            )
    if plan.problems:
        out.append("")
        out += [problem.format() for problem in plan.problems]
    out += ["", totals(plan)]
    return "\n".join(out) + "\n"


def as_markdown(plan: Plan) -> str:
    """A pull request comment: what merging this would do."""
    out = [f"### reconciler plan for {header(plan)}", ""]
    if plan.actions:
        out += ["| | Document | Change | Audience |", "|---|---|---|---|"]
        for action in plan.actions:
            audience = action.audience.describe() if action.audience and action.op not in ("remove",) else ""
            out.append(
                f"| {SYMBOLS[action.op]} | `{action.kind} {action.name}` | {_cell(action.summary)} | "
                f"{_cell(audience)} |"
            )
    else:
        out.append("No changes: the state matches the workspace.")
    out += _markdown_problems(plan.problems)
    if plan.audiences or plan.segment_counts:
        out += ["", "<details><summary>Audiences of every campaign, and segment sizes</summary>", ""]
        out += [
            f"- `{name}` {_cell(count.describe() + plan.change(f'Campaign {name}', count.counted))}"
            for name, count in sorted(plan.audiences.items())
        ]
        out += [
            f"- segment `{name}`: {n:,} members{plan.change(f'Segment {name}', n)}"
            for name, n in sorted(plan.segment_counts.items())
        ]
        out += ["", "</details>"]
    out += ["", totals(plan)]
    return "\n".join(out) + "\n"


def _markdown_problems(problems: Sequence[Problem]) -> list[str]:
    if not problems:
        return []
    out = ["", "**Problems**", ""]
    for problem in problems:
        badge = "❌" if problem.severity == "error" else "⚠️"
        out.append(f"- {badge} `{problem.path}:{problem.line}` {_cell(problem.format().split(': ', 1)[-1])}")
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def as_json(plan: Plan) -> str:
    return json.dumps(
        {
            "revision": plan.revision,
            "git_commit": plan.git_commit,
            "changes": plan.has_changes,
            "errors": len(plan.errors),
            "actions": [action.as_dict() for action in plan.actions],
            "problems": [problem.as_dict() for problem in plan.problems],
            "audiences": {name: count.as_dict() for name, count in sorted(plan.audiences.items())},
            "segments": dict(sorted(plan.segment_counts.items())),
            "last_counts": dict(sorted(plan.last_counts.items())),
            "workflow_runs": dict(plan.workflow_runs),
        },
        indent=2,
    )


FORMATS = {"text": as_text, "markdown": as_markdown, "json": as_json}
"""Every way a plan is shown, by the name `--format` and the plan endpoint's `format` take."""


def render(plan: Plan, fmt: str) -> str:
    return FORMATS[fmt](plan)


def render_invalid(problems: Sequence[Problem], fmt: str, *, revision: str, git_commit: str | None) -> str:
    """What is shown instead of a plan when the workspace has errors (nothing is planned from it), in the shape of
    a plan of that format: the problems, every one, as `validate` words them."""
    errors = sum(p.severity == "error" for p in problems)
    if fmt == "json":
        body: dict[str, object] = {"revision": revision, "git_commit": git_commit, "changes": False, "errors": errors}
        return json.dumps({**body, "actions": [], "problems": [p.as_dict() for p in problems]}, indent=2)
    source = header(Plan(revision, git_commit, ()))
    verdict = f"{count_problems(problems)}: nothing is planned until the errors are fixed."
    if fmt == "markdown":
        out = [f"### reconciler plan for {source}", "", f"The workspace has {verdict}", *_markdown_problems(problems)]
        return "\n".join(out) + "\n"
    return "\n".join([*(p.format() for p in problems), f"Revision {revision}: {verdict}"]) + "\n"
