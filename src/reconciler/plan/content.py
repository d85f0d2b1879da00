"""What a campaign sends, as one JSON value with a hash: the "essence" a plan compares and apply stores.

Once a campaign starts, the stored content is what gets sent, whatever the files say later; the hash tells
`plan` whether the files still say the same.
"""

from __future__ import annotations

from typing import Any

from reconciler.segments import segment_closure
from reconciler.spec import DesiredState
from reconciler.spec.conditions import InSegmentCondition, walk
from reconciler.spec.documents import Campaign, CampaignTracking, Tracking
from reconciler.spec.workflow import (
    SegmentEnteredTrigger,
    SendStep,
    SubscribedTrigger,
    Workflow,
    step_key,
    walk_steps,
)
from reconciler.state.content import MessageContent, StageContent
from reconciler.state.workflows import StoredWorkflow
from reconciler.templates import TemplateSet


def spec_json(document: Any) -> dict[str, Any]:
    return dict(document.model_dump(mode="json", by_alias=True, exclude={"kind"}))


def _message(templates: TemplateSet, desired: DesiredState, name: str) -> dict[str, Any]:
    return {"template": name, "mjml": templates.flatten(name), "text_part": desired.templates[name].text_part}


def _tracking(desired: DesiredState, switches: CampaignTracking) -> Tracking:
    settings = desired.settings
    assert settings is not None
    return Tracking(
        opens=settings.tracking.opens if switches.opens is None else switches.opens,
        clicks=settings.tracking.clicks if switches.clicks is None else switches.clicks,
    )


def campaign_content(desired: DesiredState, campaign: Campaign, templates: TemplateSet) -> MessageContent:
    """Everything that decides the bytes a recipient gets (not who gets them, nor when)."""
    settings = desired.settings
    assert settings is not None, "plans are made only from checked workspaces"
    return MessageContent(
        subject=campaign.subject,
        preheader=campaign.preheader,
        **_message(templates, desired, campaign.template),
        sender=settings.senders[campaign.sender or settings.defaults.sender],
        transport=campaign.transport or settings.defaults.transport,
        tracking=_tracking(desired, campaign.tracking),
        utm=campaign.utm,
        organization=settings.organization,
        stages=tuple(
            StageContent(
                name=stage.name,
                subject=stage.subject,
                preheader=stage.preheader,
                after=stage.after.total_seconds(),
                only=stage.only,
                **_message(templates, desired, stage.template),
            )
            for stage in campaign.stages
        ),
    )


def step_content(desired: DesiredState, workflow: Workflow, step: SendStep, templates: TemplateSet) -> MessageContent:
    """One workflow message in the shape of a campaign's content (what `render` and dispatch build from)."""
    settings = desired.settings
    assert settings is not None
    return MessageContent(
        subject=step.subject,
        preheader=step.preheader,
        **_message(templates, desired, step.send),
        sender=settings.senders[step.sender or workflow.sender or settings.defaults.sender],
        transport=workflow.transport or settings.defaults.transport,
        tracking=_tracking(desired, step.tracking),
        organization=settings.organization,
    )


def workflow_content(desired: DesiredState, workflow: Workflow, templates: TemplateSet) -> StoredWorkflow:
    """What a workflow's runs work from, as apply stores it: each send step's message, the segments its trigger
    and conditions name, the list its messages are for."""
    contents = {
        step_key(step, loc): step_content(desired, workflow, step, templates)
        for loc, step in walk_steps(workflow.steps)
        if isinstance(step, SendStep)
    }
    named = [workflow.trigger.segment_entered] if isinstance(workflow.trigger, SegmentEnteredTrigger) else []
    for _, step in walk_steps(workflow.steps):
        condition = getattr(step, "if_", None) or getattr(step, "wait_until", None)
        if condition is not None:
            named += [node.in_segment for _, node in walk(condition) if isinstance(node, InSegmentCondition)]
    trigger_list = workflow.trigger.subscribed if isinstance(workflow.trigger, SubscribedTrigger) else None
    return StoredWorkflow(
        workflow=workflow,
        contents=contents,
        segments=segment_closure(desired.segments, named),
        list_name=trigger_list or workflow.list_,
    )
