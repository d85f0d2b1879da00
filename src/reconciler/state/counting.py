"""A plan's counts: each segment evaluated once, into a set of contacts, and shared by its size and every audience
that uses it; audiences and who lacks a field a message reads counted from those sets and the contacts'
subscriptions, in Python.

A campaign's audience by `audience.audience_sql`'s rules: a contact on its lists is kept out, in this order, by a
suppression its kind of mail honours, by not being subscribed (awaiting confirmation or unsubscribed), by an
excluded list (these three by `audience.list_reason`, the same for every contact with the same subscriptions and
suppression, so counted from the membership histogram `observe` reads), by not being in its segments, by being in
an excluded segment. Only the last two need the segments: they are counted over the segments' members, whose
subscriptions and suppression are read once for all of them (one row per contact, as the histogram does).

Before, each audience and each (campaign, field) was a query of its own that evaluated its segments again: a
1,000-campaign workspace evaluated its 50 segments thousands of times.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace

from reconciler.audience import Audience, Counting
from reconciler.segments import Sql
from reconciler.state import audiences as run
from reconciler.state.observe import ObservedState, Signature, audience_histogram, signatures
from reconciler.state.postgres import StateDatabase
from reconciler.state.segment_sets import SegmentSets

Key = tuple[int, int, int, str | None]
"""A contact's subscriptions as bit masks (subscribed, unsubscribed, pending) and their suppression."""


def with_counts(
    db: StateDatabase, observed: ObservedState, counting: Counting, *, deadline: float | None = None
) -> ObservedState:
    """`observed` plus the counts `counting` asks for. Counting stops at `deadline` (time.monotonic()): what was
    not counted by then is absent, and the plan says so."""

    def in_time() -> bool:
        return deadline is None or time.monotonic() <= deadline

    histogram = audience_histogram(db) if observed.audience is None else observed.audience  # a pass reads it here

    used = [name for a in counting.audiences.values() for name in (*a.segments, *a.exclude_segments)]
    sets = SegmentSets(db, counting.compiler)
    members: dict[str, frozenset[int]] = {}
    for name in dict.fromkeys([*used, *counting.sizes]):
        if name in counting.members and in_time():
            members[name] = frozenset(sets.members(name))
    sizes = {name: len(found) for name, found in members.items() if name in counting.sizes}
    lacking = _lacking(db, counting, members, in_time)
    counter = _Counter(db, histogram, [*(members[n] for n in used if n in members), *lacking.values()])
    audience_counts = dict(observed.audience_counts)
    for key, audience in counting.audiences.items():
        if (audience.segments or audience.exclude_segments) and _known(audience, members):
            audience_counts[key] = counter.audience(audience, members)
    missing_counts = {name: dict(fields) for name, fields in observed.missing_counts.items()}
    for (name, field), (key, test) in counting.missing.items():
        audience = counting.audiences[key]
        if (test.text, test.params) in lacking and _known(audience, members):
            found = counter.recipients(audience, members, lacking[(test.text, test.params)])
            missing_counts.setdefault(name, {})[field] = found
    return replace(
        observed,
        audience=histogram,
        audience_counts=audience_counts,
        segment_counts={**observed.segment_counts, **sizes},
        missing_counts=missing_counts,
    )


def _lacking(
    db: StateDatabase, counting: Counting, members: Mapping[str, frozenset[int]], in_time: Callable[[], bool]
) -> dict[tuple[str, tuple[object, ...]], frozenset[int]]:
    """Who lacks each field a campaign's messages read, by its test: among the members of the campaigns' segments
    (their recipients are among them), or among every contact for a campaign without segments."""
    among: dict[tuple[str, tuple[object, ...]], set[int] | None] = {}
    tests: dict[tuple[str, tuple[object, ...]], Sql] = {}
    for key, test in counting.missing.values():
        audience = counting.audiences[key]
        which = (test.text, test.params)
        tests[which] = test
        if not _known(audience, members):
            continue
        chosen = _union(members, audience.segments)
        so_far = among.setdefault(which, set())
        if chosen is None or so_far is None:
            among[which] = None
        else:
            so_far.update(chosen)
    found: dict[tuple[str, tuple[object, ...]], frozenset[int]] = {}
    for which, contacts in among.items():
        if in_time():
            found[which] = frozenset(run.lacking(db, tests[which], contacts))
    return found


def _known(audience: Audience, members: Mapping[str, frozenset[int]]) -> bool:
    return all(name in members for name in (*audience.segments, *audience.exclude_segments))


class _Counter:
    """Audiences counted over the subscriptions of the contacts in the given sets (read once) and the histogram."""

    def __init__(self, db: StateDatabase, histogram: Mapping[Signature, int], sets: Iterable[frozenset[int]]) -> None:
        self.histogram = histogram
        wanted: set[int] = set().union(*sets)
        self.keys, self.kinds = signatures(db, wanted) if wanted else ({}, {})
        self.reasons: dict[tuple[Audience, Key | None], str | None] = {}

    def reason(self, audience: Audience, key: Key | None) -> str | None:
        """The list rules' reason for a kind of contact (None: not on the audience's lists)."""
        if (audience, key) not in self.reasons:
            self.reasons[(audience, key)] = None if key is None else self.kinds[key].reason(audience)
        return self.reasons[(audience, key)]

    def recipients(self, audience: Audience, members: Mapping[str, frozenset[int]], among: frozenset[int]) -> int:
        """How many of `among` are recipients of `audience`."""
        found = set(among)
        chosen = _union(members, audience.segments)
        if chosen is not None:
            found &= chosen
        found -= _union(members, audience.exclude_segments) or frozenset()
        return self._listed(audience, found)

    def audience(self, audience: Audience, members: Mapping[str, frozenset[int]]) -> dict[str, int]:
        """Candidates by the first reason that keeps each out ('' = a recipient), as `audience_sql` counts them."""
        counts: Counter[str] = Counter()
        for signature, n in self.histogram.items():
            why = signature.reason(audience)
            if why is not None:
                counts[why] += n
        by_lists = counts.pop("", 0)
        chosen = _union(members, audience.segments)
        inside = by_lists
        if chosen is not None:
            inside = self._listed(audience, chosen)
            counts["not in segments"] = by_lists - inside
        excluded = _union(members, audience.exclude_segments)
        if excluded is not None:
            both = excluded if chosen is None else excluded & chosen
            counts["excluded segment"] = self._listed(audience, both)
            inside -= counts["excluded segment"]
        counts[""] = inside
        return {why: n for why, n in counts.items() if n}

    def _listed(self, audience: Audience, contacts: Collection[int]) -> int:
        """How many of `contacts` its list rules let through."""
        kinds = Counter(map(self.keys.get, contacts))
        return sum(n for key, n in kinds.items() if self.reason(audience, key) == "")


def _union(members: Mapping[str, frozenset[int]], names: Iterable[str]) -> frozenset[int] | None:
    """The members of any of the segments `names`; None when there are none (no condition)."""
    found = [members[name] for name in names]
    if not found:
        return None
    return found[0] if len(found) == 1 else frozenset().union(*found)
