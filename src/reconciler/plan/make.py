"""make_plan(desired, observed, *, now): the diff between the files and the state, as actions. Pure.

Rules: a campaign's content is frozen once it has started sending (a change is an error; once it was sent, or
cancelled while sending, it is history and a change is a warning that it is not applied);
`paused` and `cancelled` always apply; a removed file cancels a campaign that has not started and keeps history;
a schedule further in the past than the grace period waits for confirmation.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from reconciler.errors import Problem
from reconciler.plan.audience import AudienceCount, campaign_audience, stored_audience
from reconciler.plan.content import campaign_content, spec_json, workflow_content
from reconciler.plan.model import Action, Op, Plan
from reconciler.plan.when import ago, describe_when, start_at
from reconciler.spec import DesiredState
from reconciler.spec.documents import Campaign
from reconciler.spec.workflow import Workflow, step_graph
from reconciler.state.campaigns import CampaignDefinition, CampaignRecord
from reconciler.state.content import digest
from reconciler.state.observe import ObservedState
from reconciler.state.workflows import StoredWorkflow
from reconciler.templates import TemplateSet, template_set

ENDED = ("sent", "cancelled")


def make_plan(
    desired: DesiredState,
    observed: ObservedState,
    *,
    now: datetime,
    git_commit: str | None = None,
    confirm: Collection[str] = (),
) -> Plan:
    """What apply would do to bring the state in line with `desired` at `now`."""
    templates = template_set(desired.templates)
    actions: list[Action] = []
    problems: list[Problem] = []
    audiences: dict[str, AudienceCount] = {}
    not_applied: dict[str, str] = {}
    actions += _lists(desired, observed)
    actions += _fields(desired, observed)
    actions += _workflows(desired, observed, templates)
    for name, campaign in sorted(desired.campaigns.items()):
        audiences[name] = campaign_audience(desired, campaign, observed)
        planner = _CampaignPlan(
            desired, campaign, observed.campaigns.get(name), templates, now, audiences[name], confirmed=name in confirm
        )
        actions += planner.actions()
        problems += planner.problems
        if planner.not_applied:
            not_applied[name] = planner.not_applied
    for name, record in sorted(observed.campaigns.items()):
        if name not in desired.campaigns and record.removed_at is None:
            actions += _removed_campaign(record, problems)
    for name in sorted(confirm):
        actions += _confirm(desired, observed, name, now, problems)
    return Plan(
        desired.revision,
        git_commit,
        tuple(actions),
        tuple(problems),
        audiences,
        observed.serial,
        dict(observed.segment_counts),
        dict(observed.last_counts),
        tuple(sorted(set(desired.segments) - set(observed.segment_counts))),
        not_applied,
        _unchanged_runs(desired, observed, actions),
    )


def history_edits(desired: DesiredState, observed: ObservedState, *, now: datetime) -> list[Problem]:
    """The warnings about edits to campaigns that are history (sent, or cancelled while sending): what `validate`
    adds when a state database is at hand, worded as `plan` words them."""
    plan = make_plan(desired, observed, now=now)
    return [p for p in plan.problems if p.severity == "warning" and p.kind == "Campaign" and p.name in plan.not_applied]


class _CampaignPlan:
    """The action (at most one) and problems for one campaign that has a file."""

    def __init__(
        self,
        desired: DesiredState,
        campaign: Campaign,
        record: CampaignRecord | None,
        templates: TemplateSet,
        now: datetime,
        audience: AudienceCount,
        *,
        confirmed: bool = False,
    ) -> None:
        self.desired, self.campaign, self.record, self.now, self.audience = desired, campaign, record, now, audience
        self.confirmed = confirmed
        self.source = desired.source("Campaign", campaign.name)
        self.spec = spec_json(campaign)
        self.content = campaign_content(desired, campaign, templates)
        self.content_hash = self.content.digest
        self.stored_audience = stored_audience(desired, campaign)
        self.problems: list[Problem] = []
        self.not_applied: str | None = None
        """What the file says that is not applied to a campaign that is history (sent, or cancelled while sending)."""

    def problem(self, loc: tuple[str | int, ...], message: str, hint: str = "", *, error: bool = True) -> None:
        line, column = self.source.at(loc)
        field = ".".join(str(part) for part in loc)
        self.problems.append(
            Problem(
                self.source.path,
                line,
                column,
                "Campaign",
                self.campaign.name,
                field,
                message,
                hint,
                "error" if error else "warning",
            )
        )

    def action(self, op: Any, summary: str, *, changes: tuple[str, ...] = (), status: str | None = None) -> Action:
        when = start_at(self.campaign.send_at, now=self.now)
        definition = CampaignDefinition(self.source.path, self.spec, self.content, self.stored_audience)
        return Action(
            "Campaign",
            self.campaign.name,
            op,
            summary,
            changes,
            self.audience,
            status or self.campaign.status,
            when,
            describe_when(self.campaign.send_at, now=self.now),
            definition=definition,
        )

    def changes(self) -> tuple[str, ...]:
        assert self.record is not None
        old = self.record.spec
        changed = [
            key for key in sorted(set(self.spec) | set(old)) if key != "status" and self.spec.get(key) != old.get(key)
        ]
        if self.content_hash != self.record.content_hash and not changed:
            changed.append("template files")
        return tuple(changed)

    def actions(self) -> list[Action]:
        record, status = self.record, self.campaign.status
        if record is None or (record.removed_at is not None and not record.started):
            return self._create()
        if record.removed_at is not None:
            self.problem(
                ("name",),
                f"a campaign of this name already ran (started {record.started_at}) and its file was removed",
                "give the new campaign a new name; history keeps the old one",
            )
            return []
        changes = self.changes()
        if record.started:
            return self._started(record, changes)
        if self.stored_audience.definitions != record.audience.definitions:
            changes += ("segment definitions",)
        if status == record.status:
            if not changes:
                self._late(record)
                return []
            return [self._with_late(self.action("update", f"update ({', '.join(changes)})", changes=changes))]
        op = {"scheduled": "schedule", "draft": "unschedule", "paused": "pause", "cancelled": "cancel"}[status]
        summary = {
            "schedule": f"schedule for {describe_when(self.campaign.send_at, now=self.now)}",
            "unschedule": "back to draft: will not be sent",
            "pause": "pause before it starts",
            "cancel": "cancel: will not be sent",
        }[op]
        if changes:
            summary += f"; update ({', '.join(changes)})"
        return [self._with_late(self.action(op, summary, changes=changes))]

    def _create(self) -> list[Action]:
        status = self.campaign.status
        if status == "scheduled":
            summary = f"schedule for {describe_when(self.campaign.send_at, now=self.now)}"
            return [self._with_late(self.action("schedule", summary))]
        summary = {
            "draft": "draft: not scheduled",
            "paused": "paused: not scheduled",
            "cancelled": "cancelled: never sent",
        }[status]
        return [self.action("create", summary)]

    def _started(self, record: CampaignRecord, changes: tuple[str, ...]) -> list[Action]:
        status = self.campaign.status
        if record.status in ENDED:
            self._ended(record, changes)
            return []
        if changes:
            self.problem(
                (changes[0],) if changes[0] != "template files" else ("template",),
                f"started sending at {record.started_at}: its content is frozen, but {', '.join(changes)} changed",
                "revert the change, or copy the campaign to a new file with a new name; status: paused or "
                "cancelled are always allowed",
            )
        if status == record.status or (status, record.status) == ("scheduled", "sending"):
            return []
        if record.held and status == "scheduled" and not self.confirmed:
            self.problem(
                ("status",),
                f"sending was paused by the daemon: {record.message}",
                f"find out why the server refuses the mail, then resume with "
                f"`reconciler apply --confirm {self.campaign.name}`",
                error=False,
            )
            return []
        if status == "draft":
            self.problem(
                ("status",),
                "a campaign that started sending cannot return to draft",
                "use status: paused to stop it for now, or cancelled to stop it for good",
            )
            return []
        op: Op = {"paused": "pause", "scheduled": "resume", "cancelled": "cancel"}[status]  # type: ignore[assignment]
        left = record.progress.get("queued", 0) + record.progress.get("deferred", 0)
        summary = {
            "pause": f"pause sending ({left:,} messages wait)",
            "resume": f"resume sending ({left:,} messages to go)",
            "cancel": f"cancel: {left:,} unsent messages are skipped",
        }[op]
        return [Action("Campaign", self.campaign.name, op, summary, (), None, "sending" if op == "resume" else status)]

    def _ended(self, record: CampaignRecord, changes: tuple[str, ...]) -> None:
        """A campaign that finished sending, or was cancelled while sending, is history: what the files say now is
        not applied and blocks nothing, and the warning says so (validate, plan, apply and status all show it)."""
        if self.campaign.status != ("scheduled" if record.status == "sent" else "cancelled"):
            changes = ("status", *changes)
        if not changes:
            return
        if record.status == "sent":
            when = f"sent on {record.finished_at or record.started_at}"
            hint = "what was sent stays as it was: revert the file, or copy it to a new name to send it again"
        else:
            when = f"cancelled while sending (started on {record.started_at})"
            hint = "cancelling is final: revert the file, or copy it to a new name to send the rest"
        loc = (changes[0],) if changes[0] != "template files" else ("template",)
        message = f"not applied: {when}; {', '.join(changes)} changed"
        self.problem(loc, message, hint, error=False)
        where = self.problems[-1]
        self.not_applied = f"{where.field}: {message} ({where.path}:{where.line})"

    def _late(self, record: CampaignRecord) -> None:
        if record.status == "scheduled" and not record.confirmed_late and record.start_at:
            self._check_late(datetime.fromisoformat(record.start_at))

    def _with_late(self, action: Action) -> Action:
        if action.status == "scheduled" and action.start_at and not (self.record and self.record.confirmed_late):
            self._check_late(action.start_at)
        return action

    def _check_late(self, when: datetime) -> None:
        grace = self.desired.settings.schedule_grace if self.desired.settings else None
        if grace is not None and self.now - when > grace:
            self.problem(
                ("send_at",),
                f"send_at is {ago(self.now - when)} in the past, more than the grace of "
                f"{ago(grace)}: it waits instead of sending",
                f"confirm with `reconciler apply --confirm {self.campaign.name}`, or set a new send_at",
                error=False,
            )


def _removed_campaign(record: CampaignRecord, problems: list[Problem]) -> list[Action]:
    if not record.started:
        summary = "file removed: cancelled, record kept" if record.status != "cancelled" else "file removed"
        return [Action("Campaign", record.name, "remove", summary, (), None, "cancelled")]
    if record.status in ENDED:
        return [Action("Campaign", record.name, "remove", "file removed; history kept", (), None, record.status)]
    problems.append(
        Problem(
            record.path,
            1,
            1,
            "Campaign",
            record.name,
            "",
            f"the file was removed while the campaign is {record.status}; it carries on",
            "restore the file with status: cancelled to stop it",
            "warning",
        )
    )
    return []


def _confirm(
    desired: DesiredState, observed: ObservedState, name: str, now: datetime, problems: list[Problem]
) -> list[Action]:
    record = observed.campaigns.get(name)
    if name not in desired.campaigns:
        problems.append(
            Problem(
                desired.root,
                1,
                1,
                "Campaign",
                name,
                "",
                "--confirm names no campaign of the workspace",
                "check the name with `reconciler status`",
            )
        )
        return []
    if record is not None and record.started:
        return []
    when = start_at(desired.campaigns[name].send_at, now=now)
    return [Action("Campaign", name, "confirm", f"confirmed: send although send_at {when.isoformat()} is past")]


def _lists(desired: DesiredState, observed: ObservedState) -> list[Action]:
    actions = []
    for name, document in sorted(desired.lists.items()):
        old = observed.lists.get(name)
        if old is None or old.removed_at:
            summary = f"{document.title!r}: {document.visibility}, {document.opt_in} opt-in, {document.category}"
            actions.append(Action("List", name, "create", summary, document=document))
        else:
            changes = tuple(
                k for k in sorted(type(document).model_fields) if getattr(document, k) != getattr(old.document, k)
            )
            if changes:
                actions.append(
                    Action("List", name, "update", f"update ({', '.join(changes)})", changes, document=document)
                )
    for name, old in sorted(observed.lists.items()):
        if name not in desired.lists and not old.removed_at:
            actions.append(Action("List", name, "remove", "removed from the spec; subscriptions are kept"))
    return actions


def _fields(desired: DesiredState, observed: ObservedState) -> list[Action]:
    actions = []
    for name, document in sorted(desired.fields.items()):
        old = observed.fields.get(name)
        if old is None:
            actions.append(Action("Field", name, "create", document.type, document=document))
        elif old != document.type:
            actions.append(
                Action(
                    "Field",
                    name,
                    "update",
                    f"type {old} → {document.type} (stored values stay as they are; re-import to convert them)",
                    ("type",),
                    document=document,
                )
            )
    for name in sorted(set(observed.fields) - set(desired.fields)):
        actions.append(Action("Field", name, "remove", "removed from the spec; stored values are kept"))
    return actions


def _workflows(desired: DesiredState, observed: ObservedState, templates: TemplateSet) -> list[Action]:
    actions = []
    for name, workflow in sorted(desired.workflows.items()):
        stored = workflow_content(desired, workflow, templates)
        content_hash = digest(stored.model_dump(mode="json", by_alias=True))
        old = observed.workflows.get(name)
        runs = observed.runs.get(name, {})
        if old is None:
            trigger = next(iter(workflow.trigger.model_dump(mode="json", exclude_none=True).items()))
            summary = f"{workflow.status}, triggered by {trigger[0]}: {trigger[1]}"
            actions.append(Action("Workflow", name, "create", summary, workflow=stored, content_hash=content_hash))
        elif old != content_hash:
            summary = _edit_summary(stored, old) + _runs_after_edit(workflow, runs)
            actions.append(Action("Workflow", name, "update", summary, workflow=stored, content_hash=content_hash))
    for name in sorted(set(observed.workflows) - set(desired.workflows)):
        runs = observed.runs.get(name, {})
        active = sum(runs.values())
        ending = f"; its {_runs(active)} will end (their history is kept): {_on_steps(runs)}" if active else ""
        actions.append(Action("Workflow", name, "remove", "removed from the spec" + ending))
    return actions


def _unchanged_runs(desired: DesiredState, observed: ObservedState, actions: list[Action]) -> dict[str, str]:
    """The active runs of each workflow the plan leaves as it is, and the steps they are on."""
    changed = {action.name for action in actions if action.kind == "Workflow"}
    return {
        name: f"{_runs(sum(runs.values()))}: {_on_steps(runs, desired.workflows[name])}"
        for name, runs in sorted(observed.runs.items())
        if name in desired.workflows and name not in changed and any(runs.values())
    }


def _edit_summary(stored: StoredWorkflow, old_hash: str) -> str:
    """Says "paused" or "active again" when that is the whole edit (the record's hash with the status flipped back is
    the stored one), else that the steps or templates changed."""
    workflow = stored.workflow
    flipped = "active" if workflow.status == "paused" else "paused"
    before = stored.model_copy(update={"workflow": workflow.model_copy(update={"status": flipped})})
    if digest(before.model_dump(mode="json", by_alias=True)) != old_hash:
        return "steps or templates changed"
    return "paused: starts no runs until it is active again" if workflow.status == "paused" else "active again"


def _runs_after_edit(workflow: Workflow, runs: Mapping[str, int]) -> str:
    """What an edit does to the runs on their way: those on a step that is gone end, the others stay where they
    are (a paused workflow holds them), and on which steps."""
    if not runs:
        return ""
    keys = set(step_graph(workflow.steps))
    gone = {step: count for step, count in runs.items() if step not in keys}
    stay = {step: count for step, count in runs.items() if step in keys and count}
    parts = [f"{_runs(count)} on removed step {step} will end" for step, count in sorted(gone.items())]
    if stay:
        staying = sum(stay.values())
        held = " (held: the workflow is paused)" if workflow.status == "paused" else ""
        verb = "stays" if staying == 1 else "stay"
        where = next(iter(stay)) if len(stay) == 1 else f"their steps: {_on_steps(stay, workflow)}"
        parts.append(f"{_runs(staying)} {verb} on {where}{held}")
    return "; " + "; ".join(parts)


def _on_steps(runs: Mapping[str, int], workflow: Workflow | None = None) -> str:
    """ "2 on pause, 1 on rest": in the order runs meet the steps (by name when the workflow is gone)."""
    order = {key: index for index, key in enumerate(step_graph(workflow.steps))} if workflow else {}
    steps = sorted((step for step, count in runs.items() if count), key=lambda s: (order.get(s, len(order)), s))
    return ", ".join(f"{runs[step]:,} on {step}" for step in steps)


def _runs(count: int) -> str:
    return f"{count:,} active run{'' if count == 1 else 's'}"
