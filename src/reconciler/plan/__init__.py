"""Planning: the pure diff between the workspace and the state (ARCHITECTURE: `plan` runs no SQL, no I/O)."""

from reconciler.plan.audience import AudienceCount, count_audience
from reconciler.plan.describe import FORMATS, as_json, as_markdown, as_text, render, render_invalid
from reconciler.plan.make import history_edits, make_plan
from reconciler.plan.model import Action, Plan

__all__ = [
    "FORMATS",
    "Action",
    "AudienceCount",
    "Plan",
    "as_json",
    "as_markdown",
    "as_text",
    "count_audience",
    "history_edits",
    "make_plan",
    "render",
    "render_invalid",
]
