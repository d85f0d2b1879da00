"""A report as text for the terminal, as JSON for a program, or as CSV for a spreadsheet.

CSV cells that a spreadsheet would read as a formula (starting with =, +, -, @, a tab or a carriage return) get a
leading apostrophe: a link or a subject is data, never a formula that runs on the marketer's machine.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence

from reconciler.report.figures import CampaignReport, OverviewRow, Rates, WorkflowReport

RATE_NOTE = (
    "Rates count people, not machines (opens and clicks by privacy proxies and link scanners are counted apart): "
    "open and click rates are of messages delivered (sent, less later bounces); click-to-open is people who clicked "
    "of people who opened."
)


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    cells = [list(header)] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells]


def overview_text(rows: list[OverviewRow]) -> str:
    if not rows:
        return "Nothing has been sent yet: no campaign has started and no workflow has run.\n"
    table = _table(
        ("KIND", "NAME", "STARTED", "RECIPIENTS", "DELIVERED", "OPEN RATE", "CLICK RATE", "UNSUBSCRIBES", "REVENUE"),
        (
            (
                r.kind,
                r.name,
                (r.started or "-")[:16],
                f"{r.recipients:,}",
                f"{r.delivered:,}",
                percent(r.open_rate),
                percent(r.click_rate),
                f"{r.unsubscribes:,}",
                "-" if r.revenue is None else f"{r.revenue:,.2f}",
            )
            for r in rows
        ),
    )
    return "\n".join([*table, "", RATE_NOTE]) + "\n"


def _rate_lines(rates: Rates, previous: Rates | None) -> list[str]:
    names = {
        "open_rate": "open rate",
        "click_rate": "click rate",
        "click_to_open": "click-to-open",
        "unsubscribe_rate": "unsubscribe rate",
        "bounce_rate": "bounce rate",
    }
    lines = []
    for key, label in names.items():
        beside = f"   (previous campaigns: {percent(getattr(previous, key))})" if previous is not None else ""
        lines.append(f"  {label:<17}{percent(getattr(rates, key)):>8}{beside}")
    return lines


def campaign_text(report: CampaignReport) -> str:
    d, e = report.delivery, report.engagement
    lines = [
        f"Campaign {report.name}: {report.subject}",
        f"started {report.started_at or '-'}, finished {report.finished_at or '-'}",
        "",
        "Delivery",
        f"  recipients {d.recipients:,} · sent {d.sent:,} · pending {d.pending:,} · delivered {d.delivered:,}",
        f"  bounced hard {d.bounced_hard:,} · soft {d.bounced_soft:,} · failed {d.failed:,} · uncertain "
        f"{d.uncertain:,} · skipped {d.skipped:,}",
        "",
        "Engagement (people; machines apart)",
        f"  opens {e.unique_opens:,} unique, {e.total_opens:,} total · clicks {e.unique_clicks:,} unique, "
        f"{e.total_clicks:,} total",
        f"  machine opens {e.machine_opens:,} · machine clicks {e.machine_clicks:,} · unsubscribes "
        f"{e.unsubscribes:,} · complaints {e.complaints:,}",
        "",
        "Rates",
        *_rate_lines(report.rates, report.previous),
    ]
    if len(report.stages) > 1:
        lines += ["", "Stages", *_stage_table(report)]
    if report.links:
        lines += [
            "",
            "Links",
            *_table(
                ("URL", "PEOPLE", "CLICKS"), ((_short(x.url), x.unique_clicks, x.total_clicks) for x in report.links)
            ),
        ]
    if report.timeline:
        lines += ["", "Over time (UTC; hourly for 72 hours, then daily)"]
        lines += _table(("FROM", "OPENS", "CLICKS"), ((m.start, m.opens, m.clicks) for m in report.timeline))
    if report.countries:
        lines += ["", "Countries (the contact's country field)"]
        lines += _table(
            ("COUNTRY", "RECIPIENTS", "OPENED"), ((c.country, c.recipients, c.unique_opens) for c in report.countries)
        )
    if report.ip_countries:
        lines += ["", "Where opens and clicks came from (GeoIP; people only)"]
        lines += _table(
            ("COUNTRY", "PEOPLE", "OPENS+CLICKS"),
            ((c.country, c.people, c.opens_and_clicks) for c in report.ip_countries),
        )
    if report.goal is not None:
        g = report.goal
        roi = "-" if g.roi is None else f"{g.roi * 100:.1f}%"
        cost = "-" if g.cost is None else f"{g.cost:,.2f}"
        lines += [
            "",
            f"Goal: {g.event} within {g.within} of the message",
            f"  converted {g.converted:,} ({percent(g.conversion_rate)}) · conversions {g.conversions:,} · revenue "
            f"{g.revenue:,.2f} · cost {cost} · ROI {roi}",
        ]
    return "\n".join([*lines, "", RATE_NOTE]) + "\n"


def _stage_table(report: CampaignReport) -> list[str]:
    return _table(
        ("STAGE", "SENT", "DELIVERED", "OPENED", "CLICKED", "OPEN RATE", "CLICK RATE", "UNSUBSCRIBES"),
        (
            (
                s.stage,
                s.delivery.sent,
                s.delivery.delivered,
                s.engagement.unique_opens,
                s.engagement.unique_clicks,
                percent(s.rates.open_rate),
                percent(s.rates.click_rate),
                s.engagement.unsubscribes,
            )
            for s in report.stages
        ),
    )


def workflow_text(report: WorkflowReport) -> str:
    runs = " · ".join(f"{state} {count:,}" for state, count in sorted(report.runs.items())) or "no runs yet"
    lines = [
        f"Workflow {report.name} ({report.status}): {runs}",
        f"first run {report.first_run or '-'}, last run {report.last_run or '-'}",
        "",
        *_table(
            (
                "STEP",
                "ENTERED",
                "COMPLETED",
                "WAITING",
                "EXITED",
                "SENT",
                "PENDING",
                "OPENED",
                "CLICKED",
                "OPEN RATE",
                "CLICK RATE",
                "UNSUBSCRIBES",
            ),
            (
                (
                    s.step,
                    s.entered,
                    s.completed,
                    s.waiting,
                    s.exited,
                    s.sent,
                    s.pending,
                    s.engagement.unique_opens,
                    s.engagement.unique_clicks,
                    percent(s.open_rate),
                    percent(s.click_rate),
                    s.engagement.unsubscribes,
                )
                for s in report.steps
            ),
        ),
    ]
    return "\n".join([*lines, "", RATE_NOTE]) + "\n"


def _short(url: str, width: int = 100) -> str:
    """A long link cut in the middle for the terminal (JSON, CSV and HTML keep it whole)."""
    return url if len(url) <= width else url[: width // 2 - 1] + "…" + url[-(width // 2) :]


def as_json(report: CampaignReport | WorkflowReport | list[OverviewRow]) -> str:
    if isinstance(report, list):
        return json.dumps([row.model_dump(mode="json") for row in report], indent=2) + "\n"
    return report.model_dump_json(indent=2) + "\n"


def safe_cell(value: object) -> object:
    """Text a spreadsheet would run as a formula gets a leading apostrophe; numbers stay numbers (a refund's
    negative revenue is a number, not a formula)."""
    if not isinstance(value, str):
        return "" if value is None else value
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def as_csv(report: CampaignReport | WorkflowReport | list[OverviewRow]) -> str:
    """One table: the overview's rows, a workflow's steps, or a campaign's stages (the first message and each
    stage, with every figure)."""
    if isinstance(report, list):
        rows = [row.model_dump(mode="json") for row in report]
    elif isinstance(report, WorkflowReport):
        rows = [_flat(step.model_dump(mode="json")) for step in report.steps]
    else:
        rows = [_flat({"campaign": report.name, **stage.model_dump(mode="json")}) for stage in report.stages]
    return as_rows_csv(rows)


def as_rows_csv(rows: list[dict[str, object]]) -> str:
    """Rows of plain values as CSV, formula-safe."""
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: safe_cell(value) for key, value in row.items()} for row in rows)
    return out.getvalue()


def _flat(row: dict[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
