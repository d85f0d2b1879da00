"""What a campaign sends, as one JSON value with a hash: the "essence" a plan compares and apply stores.

Once a campaign starts, the stored content is what gets sent, whatever the files say later; the hash tells
`plan` whether the files still say the same.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from reconciler.spec import DesiredState
from reconciler.spec.documents import Campaign, CampaignTracking, LocalSendTime
from reconciler.spec.workflow import SendStep, Workflow, walk_steps
from reconciler.templates import TemplateSet

EARLIEST_OFFSET = timedelta(hours=14)
"""The most any time zone is ahead of UTC (Pacific/Kiritimati): a local-time send starts there."""


def digest(value: Any) -> str:
    """A stable hash of a JSON value (keys sorted), short enough to read in a plan."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def spec_json(document: Any) -> dict[str, Any]:
    return dict(document.model_dump(mode="json", by_alias=True, exclude={"kind"}))


def _message(templates: TemplateSet, desired: DesiredState, name: str) -> dict[str, Any]:
    return {"template": name, "mjml": templates.flatten(name), "text_part": desired.templates[name].text_part}


def _tracking(desired: DesiredState, switches: CampaignTracking) -> dict[str, bool]:
    settings = desired.settings
    assert settings is not None
    return {
        "opens": settings.tracking.opens if switches.opens is None else switches.opens,
        "clicks": settings.tracking.clicks if switches.clicks is None else switches.clicks,
    }


def campaign_content(desired: DesiredState, campaign: Campaign, templates: TemplateSet) -> dict[str, Any]:
    """Everything that decides the bytes a recipient gets (not who gets them, nor when)."""
    settings = desired.settings
    assert settings is not None, "plans are made only from checked workspaces"
    sender = settings.senders[campaign.sender or settings.defaults.sender]
    tracking = _tracking(desired, campaign.tracking)
    return {
        "subject": campaign.subject,
        "preheader": campaign.preheader,
        **_message(templates, desired, campaign.template),
        "sender": sender.model_dump(mode="json", by_alias=True),
        "transport": campaign.transport or settings.defaults.transport,
        "tracking": tracking,
        "utm": campaign.utm.model_dump(mode="json") if campaign.utm else None,
        "organization": settings.organization.model_dump(mode="json"),
        "stages": [
            {
                "name": stage.name,
                "subject": stage.subject,
                "preheader": stage.preheader,
                "after": stage.after.total_seconds(),
                "only": stage.only,
                **_message(templates, desired, stage.template),
            }
            for stage in campaign.stages
        ],
    }


def step_content(desired: DesiredState, workflow: Workflow, step: SendStep, templates: TemplateSet) -> dict[str, Any]:
    """One workflow message in the shape of a campaign's content (what `render` and dispatch build from)."""
    settings = desired.settings
    assert settings is not None
    sender = settings.senders[step.sender or workflow.sender or settings.defaults.sender]
    return {
        "subject": step.subject,
        "preheader": step.preheader,
        **_message(templates, desired, step.send),
        "sender": sender.model_dump(mode="json", by_alias=True),
        "transport": workflow.transport or settings.defaults.transport,
        "tracking": _tracking(desired, step.tracking),
        "utm": None,
        "organization": settings.organization.model_dump(mode="json"),
        "stages": [],
    }


def workflow_content(desired: DesiredState, workflow: Workflow, templates: TemplateSet) -> dict[str, Any]:
    sends = sorted({step.send for _, step in walk_steps(workflow.steps) if getattr(step, "send", None)})
    return {"spec": spec_json(workflow), "templates": {name: _message(templates, desired, name) for name in sends}}


def start_at(send_at: Any, *, now: datetime) -> datetime:
    """When sending starts: now, the given instant, or for a local time the moment it is reached anywhere."""
    if send_at == "now":
        return now
    if isinstance(send_at, LocalSendTime):
        local = datetime.combine(send_at.date, send_at.local_time, tzinfo=UTC)
        return local - EARLIEST_OFFSET
    assert isinstance(send_at, datetime)
    return send_at.astimezone(UTC)


def local_due(send_at: LocalSendTime, timezone: str) -> datetime:
    """The instant `send_at`'s wall-clock time is reached in `timezone`."""
    moment = datetime.combine(send_at.date, send_at.local_time, tzinfo=ZoneInfo(timezone))
    return moment.astimezone(UTC)


def describe_when(send_at: Any, *, now: datetime) -> str:
    if send_at == "now":
        return "now"
    if isinstance(send_at, LocalSendTime):
        return f"{send_at.date.isoformat()} {send_at.local_time.strftime('%H:%M')} in each contact's time zone"
    assert isinstance(send_at, datetime)
    text = f"{send_at.strftime('%a %Y-%m-%d %H:%M')} {send_at.strftime('%z')[:3]}:{send_at.strftime('%z')[3:]}"
    if send_at.utcoffset() != timedelta(0):
        text += f" ({send_at.astimezone(UTC).strftime('%H:%M')} UTC)"
    return text


def ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' * (count != 1)}"
    return f"{seconds} seconds"
