"""A campaign's condition, in the words of Kubernetes/Flux controllers: ready (yes/no), a reason a machine can
match on, and a message a person reads. The reasons are these constants, whoever sets them (apply, start,
dispatch), so `status`, `/healthz` and scripts can rely on them."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    DRAFT = "Draft"
    SCHEDULED = "Scheduled"
    PAUSED = "Paused"
    CANCELLED = "Cancelled"
    SENDING = "Sending"
    SENT = "Sent"
    STALLED = "Stalled"
    """The files say something that cannot be applied (an edit to a started campaign ...): fix the files."""
    LATE_SCHEDULE = "LateSchedule"
    """Its start time passed longer ago than the grace period: it waits for `apply --confirm`."""
    REMOVED = "Removed"
    """Its file was removed."""
    POLICY_REJECTIONS = "PolicyRejections"
    """Paused by dispatch: too many messages were refused for policy or reputation reasons."""
    DELIVERY_FAILING = "DeliveryFailing"
    """Still sending, but most messages so far failed: look at the failures before it finishes."""
    DELIVERY_FAILED = "DeliveryFailed"
    """Finished, but most messages failed."""
    SENDING_BLOCKED = "SendingBlocked"
    """Its messages wait: something they need is missing (a DKIM key or password in the environment, a transport
    in the Settings); the message says what. It sends again by itself once that is fixed."""

    @classmethod
    def for_status(cls, status: str) -> Reason:
        """The reason that goes with a campaign status when nothing is wrong."""
        return {
            "draft": cls.DRAFT,
            "scheduled": cls.SCHEDULED,
            "paused": cls.PAUSED,
            "cancelled": cls.CANCELLED,
            "sending": cls.SENDING,
            "sent": cls.SENT,
        }[status]
