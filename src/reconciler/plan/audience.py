"""Audience counts for a plan, from the state's membership histogram: pure arithmetic, no SQL.

The same rules decide who is snapshotted into the ledger when a campaign starts (`state.campaigns`), so the
count in the pull request is the count that gets the message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from reconciler.audience import (
    MARKETING_BLOCKING,
    Audience,
    audience_key,
    blocking_for,
    campaign_audience_parts,
)
from reconciler.segments import segment_closure
from reconciler.spec import DesiredState
from reconciler.spec.documents import Campaign
from reconciler.state.campaigns import SegmentDefinitions, StoredAudience
from reconciler.state.observe import ObservedState, Signature


@dataclass(frozen=True)
class AudienceCount:
    """How many would receive a message now, and why the others on its lists would not."""

    recipients: int
    excluded: Mapping[str, int] = field(default_factory=dict)
    unevaluated: tuple[str, ...] = ()
    """Conditions this count leaves out (segments, until they are evaluated)."""
    missing: Mapping[str, int] = field(default_factory=dict)
    """Recipients who lack a field the message reads without a default (their message would fail), by field."""

    @property
    def counted(self) -> int | None:
        """The number of recipients, or None when it was not counted: a count not made is never shown as 0, and no
        change since the last apply is derived from it."""
        return None if self.unevaluated else self.recipients

    def describe(self) -> str:
        if self.unevaluated:
            return f"→ recipients not counted: {', '.join(self.unevaluated)}"
        text = f"→ {self.recipients:,} recipient{'s' * (self.recipients != 1)}"
        excluded = [(why, n) for why, n in sorted(self.excluded.items(), key=lambda item: -item[1]) if n]
        if excluded:
            text += "; excluded: " + ", ".join(f"{why} {n:,}" for why, n in excluded)
        for name, n in sorted(self.missing.items()):
            if n:
                text += f"; {n:,} {'has' if n == 1 else 'have'} no {name}: their message would fail"
        return text

    def as_dict(self) -> dict[str, object]:
        return {
            "recipients": self.counted,
            "excluded": dict(self.excluded),
            "not_counted": list(self.unevaluated),
            "missing_fields": dict(self.missing),
        }


def count_audience(
    histogram: Mapping[Signature, int],
    *,
    lists: Iterable[str],
    exclude_lists: Iterable[str] = (),
    blocking: Sequence[str] = MARKETING_BLOCKING,
) -> AudienceCount:
    """Subscribed members of any of `lists`, minus people suppressed for a `blocking` reason and members of
    `exclude_lists` (the rules of `audience.audience_sql`, which the snapshot runs)."""
    rules = Audience(tuple(lists), tuple(exclude_lists), (), (), tuple(blocking))
    recipients = 0
    excluded: dict[str, int] = {}
    for signature, count in histogram.items():
        why = signature.reason(rules)
        if why == "":
            recipients += count
        elif why is not None:
            excluded[why] = excluded.get(why, 0) + count
    return AudienceCount(recipients, excluded)


def campaign_audience(desired: DesiredState, campaign: Campaign, observed: ObservedState) -> AudienceCount:
    """The campaign's audience now: from the membership histogram, or for segments from their counted query; with
    who lacks a field its messages read without a default, where that was counted."""
    missing = observed.missing_counts.get(campaign.name, {})
    return replace(_audience(desired, campaign, observed), missing=missing)


def _audience(desired: DesiredState, campaign: Campaign, observed: ObservedState) -> AudienceCount:
    lists, exclude_lists, segments, exclude_segments = campaign_audience_parts(campaign)
    if segments or exclude_segments:
        counts = observed.audience_counts.get(audience_key(lists, exclude_lists, segments, exclude_segments))
        if counts is None:  # not counted (a pass without changes, or out of time)
            names = [f"segment {n}" for n in segments] + [f"exclude segment {n}" for n in exclude_segments]
            return AudienceCount(0, {}, tuple(names))
        excluded = {why: n for why, n in counts.items() if why not in ("", "not in segments")}
        return AudienceCount(counts.get("", 0), excluded)
    if observed.audience is None:  # the membership histogram was not read (a daemon's pass that leaves it alone)
        return AudienceCount(0, {}, tuple(f"list {n}" for n in lists) or ("lists",))
    return count_audience(
        observed.audience, lists=lists, exclude_lists=exclude_lists, blocking=blocking_for(desired.lists, lists)
    )


def stored_audience(desired: DesiredState, campaign: Campaign) -> StoredAudience:
    """Who the campaign goes to, with what its segments mean now: it starts from this, whatever the files say later."""
    lists, exclude_lists, segments, exclude_segments = campaign_audience_parts(campaign)
    closure = segment_closure(desired.segments, [*segments, *exclude_segments])
    definitions = None
    if closure:
        definitions = SegmentDefinitions(
            segments=dict(sorted(closure.items())),
            fields={name: field.type for name, field in sorted(desired.fields.items())},
            timezone=desired.timezone,
        )
    return StoredAudience(
        lists=tuple(lists),
        exclude_lists=tuple(exclude_lists),
        segments=tuple(segments),
        exclude_segments=tuple(exclude_segments),
        definitions=definitions,
    )
