"""Every route of the web service, fuzzed from the OpenAPI description it serves: valid and invalid requests,
with and without the token. No answer may be a 5xx, and nothing may log a traceback."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, GenerationMode
from schemathesis.core.result import Ok

from reconciler.clock import SystemClock
from reconciler.web import create_app
from state_helpers import place
from test_web_input import BEARER, TOKEN, applied, error_log  # noqa: F401 - `applied` is a fixture
from web_server import WebServer

EXAMPLES = int(os.environ.get("RECONCILER_FUZZ_EXAMPLES", "60"))
"""Per operation (valid and invalid requests, random and real link tokens; four times as many for the JSON API):
about 1,600 requests, well under a minute in CI; set RECONCILER_FUZZ_EXAMPLES for a longer run."""


PLAN_TOKEN = "test-plan-token"


@pytest.fixture(autouse=True)
def api_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_API_TOKEN", TOKEN)
    monkeypatch.setenv("RECONCILER_PLAN_TOKEN", PLAN_TOKEN)


@schemathesis.serializer("application/gzip", "application/x-tar")
def _archive(ctx: Any, value: Any) -> bytes:
    """The plan endpoint's body as sent: bytes as they are, anything else as its text."""
    return value if isinstance(value, bytes) else str(value).encode()


MEMBER_NAMES = ["spec/settings.yaml", "spec/lists.yaml", "campaigns/a.yaml", "templates/a.mjml", "../x.yaml", "/x", ""]


def _archives() -> st.SearchStrategy[bytes]:
    """Tar archives (compressed or not) of members with names good and bad, of any type, holding any bytes."""

    @st.composite
    def archive(draw: st.DrawFn) -> bytes:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, kind, data in draw(
                st.lists(
                    st.tuples(
                        st.sampled_from(MEMBER_NAMES) | st.text(max_size=20),
                        st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.FIFOTYPE]),
                        st.binary(max_size=200) | st.just(b"kind: Settings\norganization: x\n"),
                    ),
                    max_size=4,
                )
            ):
                info = tarfile.TarInfo(name.replace("\x00", ""))
                info.type, info.linkname = kind, "/etc/passwd" if kind == tarfile.SYMTYPE else ""
                info.size = len(data) if kind == tarfile.REGTYPE else 0
                tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        body = raw.getvalue()
        return gzip.compress(body) if draw(st.booleans()) else body

    return archive()


def _no_fetching(url: str) -> bytes:
    raise httpx.ConnectError(f"the fuzz test fetches nothing ({url})")


def test_the_description_names_every_route_with_its_methods(applied: Path) -> None:  # noqa: F811
    app = create_app(place(applied), clock=SystemClock(), root=applied)
    routes = {route.path: set(route.methods) - {"HEAD"} for route in app.routes}  # type: ignore[attr-defined]
    with WebServer(applied) as base:
        described = httpx.get(f"{base}/api/v1/openapi.json").json()
    paths = {
        path: {method.upper() for method in item if method != "parameters"} - {"HEAD"}
        for path, item in described["paths"].items()
    }
    assert paths == routes


CLICKED = "https://shop.example.com/a"
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
"""Any JSON value: what a confused or hostile client sends where the description says otherwise."""
ADDRESSES = st.sampled_from(["fuzz@example.org", "Fuzz@XN--BCHER-KVA.example", "zoë@example.org", "x@", ""])
WEBHOOK_KEYS = ("id", "type", "bounce_type", "detail", "RecordType", "ID", "Email", "Type", "Description")
SNS_KEYS = ("Type", "Message", "MessageId", "Timestamp", "TopicArn", "Signature", "SignatureVersion", "SubscribeURL")


def _confused_bodies(description: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Objects with the keys the API and the webhooks read, each holding any JSON value (or an address)."""
    schemas = description["components"]["schemas"]
    keys = {*schemas["Contact"]["properties"], *schemas["Event"]["properties"], *WEBHOOK_KEYS, *SNS_KEYS}
    values = {key: ADDRESSES | JSON if key.lower() == "email" else JSON for key in sorted(keys)}
    values["SigningCertURL"] = st.just("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-f.pem") | JSON
    objects = st.fixed_dictionaries({}, optional=values)
    return objects | st.lists(objects, max_size=3) | JSON


def _with_body(case: schemathesis.Case[Any], body: Any) -> schemathesis.Case[Any]:
    case.body = body
    return case


Fixed = tuple[dict[str, Any], dict[str, Any] | None]
"""Path parameters and query parameters a strategy keeps as given."""


def _valid_tokens(root: Path, base: str) -> dict[str, Fixed]:
    """Real link tokens for a pending double opt-in (ledger row 1, contact 1), so the fuzzer gets past the token
    check into each page's own handling: path template -> fixed parameters."""
    from reconciler.tokens import Signer
    from sending import query

    httpx.post(f"{base}/subscribe", data={"email": "fuzz@example.org", "list": "offers"}).raise_for_status()
    ((key,),) = query(root, "SELECT value FROM meta WHERE key = 'signing_key'")
    ((row_id, contact_id),) = query(root, "SELECT id, contact_id FROM ledger")
    sign, row, contact = Signer(str(key).encode()).sign, int(str(row_id)), int(str(contact_id))
    return {
        "/u/{token}": ({"token": sign("unsubscribe", row)}, None),
        "/p/{token}": ({"token": sign("preferences", contact)}, None),
        "/confirm/{token}": ({"token": sign("confirm", row)}, None),
        "/v/{token}": ({"token": sign("view", row)}, None),
        "/o/{token}.gif": ({"token": sign("open", row)}, None),
        "/c/{token}": ({"token": sign("click", row, CLICKED)}, {"u": CLICKED}),
    }


def _cases(
    operation: APIOperation[Any, Any, Any, Any], fixed: Fixed | None, confused: st.SearchStrategy[Any]
) -> st.SearchStrategy[schemathesis.Case[Any]]:
    """Valid and invalid requests, with random link tokens and (when given) real ones; for the JSON API, as many
    again with bodies of any shape."""
    strategies = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        strategies.append(operation.as_strategy(mode))
        if fixed is not None:
            strategies.append(operation.as_strategy(mode, path_parameters=fixed[0], query=fixed[1]))
    cases = st.one_of(*strategies)
    if operation.path.startswith("/api/v1/") and operation.method == "post":
        cases = cases | st.builds(_with_body, operation.as_strategy(GenerationMode.POSITIVE), confused)
    if operation.path == "/api/v1/plan":
        cases = cases | st.builds(_with_body, operation.as_strategy(GenerationMode.POSITIVE), _archives())
    return cases


def test_no_route_answers_5xx_or_logs_a_traceback(applied: Path) -> None:  # noqa: F811
    with error_log() as log, WebServer(applied, fetch=_no_fetching) as base:
        description = httpx.get(f"{base}/api/v1/openapi.json").json()
        schema = schemathesis.openapi.from_dict(description)
        confused = _confused_bodies(description)
        valid = _valid_tokens(applied, base)
        answers: dict[str, set[int]] = {}
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            operation = result.ok()
            cases = _cases(operation, valid.get(operation.path), confused)
            examples = 4 * EXAMPLES if operation.path.startswith("/api/v1/") else EXAMPLES

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                # the same requests every run, so that the answers checked below do not depend on luck; set
                # RECONCILER_FUZZ_RANDOM=1 for new ones each run (how a NUL in event properties was found)
                derandomize=not os.environ.get("RECONCILER_FUZZ_RANDOM"),
                suppress_health_check=list(HealthCheck),
            )
            @given(case=cases, authorized=st.booleans())
            def request(case: schemathesis.Case[Any], authorized: bool) -> None:
                # requests with the token come from an address of their own: the wrong tokens of the others soon
                # hold loopback back (429), as they would a guesser
                # plans (with the plan token) come from an address of their own too
                plan = case.operation.path == "/api/v1/plan"
                token = {"authorization": f"Bearer {PLAN_TOKEN}"} if plan else BEARER
                headers = {**token, "x-forwarded-for": "192.0.2.2" if plan else "192.0.2.1"} if authorized else None
                if authorized and case.headers:  # a generated Authorization would be a wrong token from that address
                    case.headers.pop("authorization", None)
                response = case.call(base_url=base, headers=headers, timeout=30)
                answers.setdefault(case.operation.label, set()).add(response.status_code)
                assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:500])

            request()
    assert not log.records, log.text()
    described = sum(len(set(item) - {"parameters"}) for item in description["paths"].values())
    assert len(answers) == described >= 19, answers
    assert {200, 422} <= answers["POST /api/v1/contacts"] and {200, 422} <= answers["POST /api/v1/events"]
    assert 200 in answers["GET /p/{token}"] and 302 in answers["GET /c/{token}"], answers
    assert {200, 400, 401, 422} <= answers["POST /api/v1/plan"], answers
