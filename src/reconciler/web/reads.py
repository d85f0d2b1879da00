"""The read API (bearer token): the overview of campaigns and workflows, one campaign's report, and everything held
about one contact. Each answer is what `reconciler report --format json` and `contacts export` print."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from reconciler.errors import UsageError
from reconciler.report import figures
from reconciler.rows import normalise_email
from reconciler.state.contacts import export_contact
from reconciler.web.api import refused
from reconciler.web.context import context


def _not_found(what: str) -> Response:
    return JSONResponse({"error": f"no {what}"}, 404)


async def campaigns(request: Request) -> Response:
    """GET /api/v1/campaigns: every campaign that started and every workflow, newest first."""
    if (answer := await refused(request)) is not None:
        return answer
    rows = await context(request).read(figures.overview)
    return JSONResponse([row.model_dump(mode="json") for row in rows])


async def campaign_report(request: Request) -> Response:
    """GET /api/v1/campaigns/{name}/report: every figure of one campaign, or of a workflow (the list names both;
    a campaign first when both have the name, as `reconciler report NAME` does)."""
    if (answer := await refused(request)) is not None:
        return answer
    name, web = request.path_params["name"], context(request)
    for read in (figures.campaign_report, figures.workflow_report):
        try:
            found: figures.CampaignReport | figures.WorkflowReport = await web.read(read, name)
        except UsageError:
            continue
        return JSONResponse(found.model_dump(mode="json"))
    return _not_found("such campaign or workflow")


async def contact(request: Request) -> Response:
    """GET /api/v1/contacts/{email}: everything held about one person, their messages and what they did."""
    if (answer := await refused(request)) is not None:
        return answer
    try:
        email = normalise_email(request.path_params["email"], sendable=False)
    except ValueError:
        return _not_found("such contact")
    found = await context(request).read(export_contact, email)
    return _not_found("such contact") if found is None else JSONResponse(found)
