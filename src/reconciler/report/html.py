"""A report as one self-contained HTML page: inline styles and SVG charts, no script, no fetch, readable on a
phone. `reconciler report --format html` writes it as a file; the daemon's dashboard serves the same pages."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pygal
from jinja2 import Environment, PackageLoader, select_autoescape

from reconciler.report import charts
from reconciler.report.figures import CampaignReport, OverviewRow, WorkflowReport
from reconciler.report.render import RATE_NOTE, percent

PAGES = Environment(loader=PackageLoader("reconciler.report", "templates"), autoescape=select_autoescape(["html"]))
DEFINITIONS = (
    ("Delivered", "Sent and accepted by the relay, less the messages that bounced afterwards."),
    ("Open rate", "People who opened (or clicked, an open with images off) of the messages delivered."),
    ("Click rate", "People who clicked of the messages delivered."),
    ("Click-to-open", "People who clicked of the people who opened."),
    ("Unsubscribe rate", "People who unsubscribed through this campaign's messages of the messages delivered."),
    ("Bounce rate", "Hard and soft bounces and failures of the recipients."),
    ("Machine opens and clicks", "Opens by privacy proxies and image prefetchers, clicks by link scanners: apart."),
    ("Conversion and ROI", "People who did the goal's event within its window after their first message; ROI is "
     "(revenue - cost) / cost."),
)  # fmt: skip


def _page(template: str, **values: object) -> str:
    return PAGES.get_template(template).render(
        pct=percent,
        rate_note=RATE_NOTE,
        definitions=DEFINITIONS,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **values,
    )


def campaign_html(report: CampaignReport, *, back: str | None = None) -> str:
    figures = {
        "funnel": charts.funnel(report),
        "over_time": charts.over_time(report.timeline) if report.timeline else "",
        "heat_map": charts.heat_map(report.weekday_hours, report.timezone),
        "links": charts.links(report) if report.links else "",
        "countries": charts.countries(report) if report.countries else "",
        "ip_countries": charts.ip_countries(report) if report.ip_countries else "",
    }
    return _page(
        "campaign.html", title=f"Campaign {report.name}", r=report, charts=figures, back=back, signed_in=bool(back)
    )


def workflow_html(report: WorkflowReport, *, back: str | None = None) -> str:
    chart = pygal.Bar(**charts.config("Each step: runs that reached it, messages sent, people who opened"))
    chart.x_labels = [s.step for s in report.steps]
    chart.add("Entered", [s.entered for s in report.steps])
    chart.add("Sent", [s.sent for s in report.steps])
    chart.add("Opened", [s.engagement.unique_opens for s in report.steps])
    steps = charts.svg(chart)
    return _page(
        "workflow.html",
        title=f"Workflow {report.name}",
        r=report,
        charts={"steps": steps},
        back=back,
        signed_in=bool(back),
    )


def overview_html(rows: list[OverviewRow], *, link: Callable[[OverviewRow], str] | None = None) -> str:
    return _page(
        "overview.html", title="Campaigns and workflows", rows=rows, link=link, back=None, signed_in=link is not None
    )
