"""Audience counts for a plan, from the state's membership histogram: pure arithmetic, no SQL.

The same rules decide who is snapshotted into the ledger when a campaign starts (`state.campaigns`), so the
count in the pull request is the count that gets the message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.spec import DesiredState
from reconciler.spec.documents import Campaign
from reconciler.state.contacts import BLOCKING
from reconciler.state.observe import Signature

TRANSACTIONAL_BLOCKING = ("bounced", "erased")


@dataclass(frozen=True)
class AudienceCount:
    """How many would receive a message now, and why the others on its lists would not."""

    recipients: int
    excluded: Mapping[str, int] = field(default_factory=dict)
    unevaluated: tuple[str, ...] = ()
    """Conditions this count leaves out (segments, until they are evaluated)."""

    def describe(self) -> str:
        text = f"→ {self.recipients:,} recipient{'s' * (self.recipients != 1)}"
        excluded = [(why, n) for why, n in sorted(self.excluded.items(), key=lambda item: -item[1]) if n]
        if excluded:
            text += "; excluded: " + ", ".join(f"{why} {n:,}" for why, n in excluded)
        if self.unevaluated:
            text += f" (not counted: {', '.join(self.unevaluated)})"
        return text

    def as_dict(self) -> dict[str, object]:
        return {"recipients": self.recipients, "excluded": dict(self.excluded), "not_counted": list(self.unevaluated)}


def count_audience(
    histogram: Mapping[Signature, int],
    *,
    lists: Iterable[str],
    exclude_lists: Iterable[str] = (),
    transactional: bool = False,
) -> AudienceCount:
    """Subscribed members of any of `lists`, minus suppressed people and members of `exclude_lists`."""
    wanted, unwanted = frozenset(lists), frozenset(exclude_lists)
    blocking = TRANSACTIONAL_BLOCKING if transactional else BLOCKING
    recipients = 0
    excluded: dict[str, int] = {}
    for signature, count in histogram.items():
        if not (signature.subscribed | signature.unsubscribed | signature.pending) & wanted:
            continue
        why: str
        if signature.suppression is not None and signature.suppression in blocking:
            why = signature.suppression
        elif not signature.subscribed & wanted:
            why = "awaiting confirmation" if signature.pending & wanted else "unsubscribed"
        elif signature.subscribed & unwanted:
            why = "excluded list"
        else:
            recipients += count
            continue
        excluded[why] = excluded.get(why, 0) + count
    return AudienceCount(recipients, excluded)


def campaign_audience(desired: DesiredState, campaign: Campaign, histogram: Mapping[Signature, int]) -> AudienceCount:
    audience = campaign.audience
    transactional = all(
        desired.lists[name].category == "transactional" for name in audience.lists if name in desired.lists
    )
    count = count_audience(
        histogram,
        lists=audience.lists,
        exclude_lists=audience.exclude.lists if audience.exclude else (),
        transactional=transactional,
    )
    pending = [f"segment {name}" for name in audience.segments]
    if audience.exclude:
        pending += [f"exclude segment {name}" for name in audience.exclude.segments]
    return AudienceCount(count.recipients, count.excluded, tuple(pending))
