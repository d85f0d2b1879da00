"""The spec models accept what docs/spec-language.md documents and explain what they refuse."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.spec import Campaign, Segment, Workflow
from reconciler.spec.conditions import AllCondition, EventCondition, FieldCondition, NotCondition
from reconciler.spec.contact import BUILTIN_FIELDS, TEXT_FIELDS, Contact, ContactValues
from reconciler.spec.documents import LocalSendTime
from reconciler.spec.types import format_duration, parse_duration
from reconciler.spec.workflow import IfStep, SendStep, WaitUntilStep, walk_steps

pytestmark = pytest.mark.no_state  # the PostgreSQL pass of the suite leaves it out


def campaign(**fields: Any) -> Campaign:
    base: dict[str, Any] = {
        "kind": "Campaign",
        "name": "black-friday-2030",
        "subject": "Hi",
        "template": "offers/black-friday",
        "audience": {"lists": ["offers"]},
    }
    return Campaign.model_validate({**base, **fields})


def errors(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[tuple[Any, ...], str]]:
    return [(e["loc"], e["msg"]) for e in exc.value.errors()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30m", timedelta(minutes=30)), ("12h", timedelta(hours=12)), ("2d", timedelta(days=2)), ("1w", timedelta(7))],
)
def test_durations_read_and_write_in_spec_units(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert format_duration(expected) == text


@pytest.mark.parametrize("text", ["2", "3days", "-1d", "1.5h", "", "d", "1h1d"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_durations_may_combine_units_and_are_more_than_zero_and_at_most_ten_years() -> None:
    assert parse_duration("1d12h") == timedelta(hours=36)
    assert parse_duration("1w2d3h4m") == timedelta(days=9, hours=3, minutes=4)
    with pytest.raises(ValueError, match="0d is zero"):
        parse_duration("0d")
    with pytest.raises(ValueError, match="longer than 10 years"):
        parse_duration("99999999999999999999999w")


def test_send_at_accepts_now_an_offset_datetime_or_a_local_time() -> None:
    assert campaign(send_at="now").send_at == "now"
    at = campaign(send_at="2026-11-27T09:00:00+01:00").send_at
    assert at == datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    local = campaign(send_at={"local_time": "09:00", "date": "2026-11-27"}).send_at
    assert local == LocalSendTime(local_time=time(9, 0), date=date(2026, 11, 27))


def test_send_at_without_offset_is_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        campaign(send_at="2026-11-27T09:00:00")
    assert errors(exc)[0][1] == "Input should have timezone info"


def test_campaigns_are_drafts_until_scheduled() -> None:
    assert campaign().status == "draft"


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError) as exc:
        campaign(subjct="typo")
    assert errors(exc) == [(("subjct",), "Extra inputs are not permitted")]


def test_models_are_frozen() -> None:
    with pytest.raises(ValidationError):
        campaign().subject = "changed"  # type: ignore[misc]


def test_segment_condition_tree_of_product_section_2_4() -> None:
    segment = Segment.model_validate(
        {
            "kind": "Segment",
            "name": "top-spenders-2020",
            "lists": ["offers"],
            "where": {
                "all": [
                    {"field": "spend_2020", "gt": 100},
                    {"any": [{"field": "country", "in": ["PL", "DE"]}, {"tag": "vip"}]},
                    {"event": "purchase", "within": "90d", "count": {"gte": 2}},
                    {"not": {"engaged": {"campaign": "spring-sale", "action": "clicked"}}},
                ]
            },
            "order_by": {"field": "spend_2020", "direction": "desc"},
            "limit": 100,
        }
    )
    assert isinstance(segment.where, AllCondition)
    first, _, event, negated = segment.where.all
    assert isinstance(first, FieldCondition) and (first.operator, first.operand) == ("gt", 100)
    assert isinstance(event, EventCondition) and event.count is not None and event.count.bounds() == {"gte": 2}
    assert isinstance(negated, NotCondition)


def test_a_condition_with_two_operators_says_so() -> None:
    with pytest.raises(ValidationError) as exc:
        Segment.model_validate({"kind": "Segment", "name": "s", "where": {"field": "a", "gt": 1, "lt": 2}})
    assert "exactly one operator, found gt, lt" in errors(exc)[0][1]


def test_a_condition_without_a_known_subject_lists_the_subjects() -> None:
    with pytest.raises(ValidationError) as exc:
        Segment.model_validate({"kind": "Segment", "name": "s", "where": {"feild": "a", "eq": 1}})
    assert "needs one of: all, any, not, field" in errors(exc)[0][1]


def test_limit_needs_an_order_and_says_so_at_limit() -> None:
    with pytest.raises(ValidationError) as exc:
        Segment.model_validate({"kind": "Segment", "name": "s", "limit": 10})
    assert errors(exc) == [(("limit",), "Value error, needs order_by, or the top N would be arbitrary")]


def test_a_broken_order_by_is_not_also_reported_as_missing() -> None:
    with pytest.raises(ValidationError) as exc:
        Segment.model_validate({"kind": "Segment", "name": "s", "order_by": {"field": 3}, "limit": 10})
    assert [loc for loc, _ in errors(exc)] == [("order_by", "field")]


def test_workflow_step_tree_of_product_section_2_6() -> None:
    workflow = Workflow.model_validate(
        {
            "kind": "Workflow",
            "name": "welcome",
            "trigger": {"subscribed": "newsletter"},
            "re_entry": "never",
            "exit_when": {"event": "purchase"},
            "steps": [
                {"id": "hello", "send": "welcome/hello", "subject": "Welcome"},
                {"wait": "2d"},
                {"id": "tips", "send": "welcome/tips", "subject": "Three tips"},
                {"wait_until": {"opened": "tips"}, "timeout": "3d"},
                {
                    "if": {"opened": "tips"},
                    "then": [{"send": "welcome/next-steps", "subject": "Ready?"}],
                    "else": [{"send": "welcome/nudge", "subject": "Did you see this?"}],
                },
                {"add_to_list": "customers"},
                {"set_field": {"field": "onboarded", "value": True}},
            ],
        }
    )
    kinds = [type(step).__name__ for _, step in walk_steps(workflow.steps)]
    assert kinds[:5] == ["SendStep", "WaitStep", "SendStep", "WaitUntilStep", "IfStep"]
    assert kinds[5:7] == ["SendStep", "SendStep"]  # then before else
    branch = workflow.steps[4]
    assert isinstance(branch, IfStep) and isinstance(branch.else_[0], SendStep)
    assert isinstance(workflow.steps[3], WaitUntilStep)


def test_wait_until_needs_a_timeout() -> None:
    with pytest.raises(ValidationError) as exc:
        Workflow.model_validate(
            {"kind": "Workflow", "name": "w", "trigger": {"event": "x"}, "steps": [{"wait_until": {"opened": "a"}}]}
        )
    assert errors(exc)[0][0][-1] == "timeout"


@pytest.mark.parametrize("value", ["hunter2", "smtp_password", "MY-SECRET"])
def test_env_names_never_echo_what_was_written(value: str) -> None:
    from reconciler.spec import Settings

    with pytest.raises(ValidationError) as exc:
        Settings.model_validate(
            {
                "kind": "Settings",
                "name": "default",
                "organization": {"name": "A", "postal_address": "1 Road"},
                "public_url": "https://m.example",
                "senders": {"news": {"from": "A <a@a.example>"}},
                "defaults": {"sender": "news"},
                "signing_key_env": value,
            }
        )
    assert "environment variable" in str(exc.value.errors()[0]["msg"])
    assert value not in str(exc.value.errors()[0]["msg"])


@pytest.mark.parametrize("where", [["a", "b"], "text", 3, None])
def test_a_condition_that_is_not_a_mapping_is_an_error_not_a_crash(where: object) -> None:
    with pytest.raises(ValidationError) as exc:
        Segment.model_validate({"kind": "Segment", "name": "s", "where": where or []})
    assert "a condition needs one of" in errors(exc)[0][1]


def test_the_stored_contact_holds_every_field_a_document_can_give_a_contact() -> None:
    """The built-in fields are declared once, in ContactValues (a WorkflowTest's contact); the stored Contact, a
    plain dataclass for speed, declares them again with its own types, and must miss none."""
    stored = {field.name: field.type for field in dataclasses.fields(Contact)}
    assert set(ContactValues.model_fields) | set(BUILTIN_FIELDS) <= set(stored)
    assert all(stored[name] == "str | None" for name in TEXT_FIELDS)
