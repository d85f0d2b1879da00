"""A report's charts as inline SVG: pygal draws the bar charts (a maintained library with clean, scalable SVG and
no runtime needed to show it), and the weekday x hour heat map, which pygal does not have, is a grid of squares.

Every chart is self-contained: pygal's optional tooltip script is dropped (the report must work offline, and the
dashboard's pages allow no script), and each bar keeps its value as an SVG <title>, which browsers show on hover.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from html import escape

import pygal
from pygal.style import Style

from reconciler.report.figures import CampaignReport, Moment

# pygal adds a legacy import hook for its map plugins (which reports do not use) to the whole process; every failed
# import anywhere then raises an ImportWarning. Take it out again.
sys.meta_path[:] = [finder for finder in sys.meta_path if type(finder).__name__ != "PluginImportFixer"]

STYLE = Style(
    background="white",
    plot_background="white",
    foreground="#333",
    foreground_strong="#111",
    foreground_subtle="#999",
    colors=("#1f6feb", "#e8590c", "#2f9e44", "#ae3ec9", "#868e96"),
    font_family="system-ui, sans-serif",
)
_SCRIPT = re.compile(r"<script\b.*?</script>", re.S)
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def svg(chart: pygal.graph.graph.Graph) -> str:
    return _SCRIPT.sub("", chart.render(is_unicode=True))


def config(title: str, *, height: int = 320) -> dict[str, object]:
    return {
        "title": title,
        "style": STYLE,
        "js": [],
        "disable_xml_declaration": True,
        "height": height,
        "width": 800,
        "legend_at_bottom": True,
        "truncate_label": 40,
        "print_values": False,
        "show_minor_x_labels": False,
    }


def over_time(timeline: Sequence[Moment]) -> str:
    """Opens and clicks by people, hour by hour for three days, then day by day."""
    chart = pygal.Bar(**config("Opens and clicks over time (UTC)"), x_label_rotation=30)
    chart.x_labels = [m.start for m in timeline]
    chart.x_labels_major = [m.start for m in timeline[:: max(1, len(timeline) // 12)]]
    chart.add("Opens", [m.opens for m in timeline])
    chart.add("Clicks", [m.clicks for m in timeline])
    return svg(chart)


def funnel(report: CampaignReport) -> str:
    """Recipients, delivered, opened, clicked: where people drop out."""
    d, e = report.delivery, report.engagement
    chart = pygal.HorizontalBar(**config("Delivery funnel", height=260), show_legend=False)
    steps = [("Recipients", d.recipients), ("Delivered", d.delivered), ("Opened", e.unique_opens)]
    steps.append(("Clicked", e.unique_clicks))
    chart.x_labels = [name for name, _ in reversed(steps)]
    chart.add("People", [value for _, value in reversed(steps)])
    return svg(chart)


def links(report: CampaignReport, *, top: int = 10) -> str:
    chart = pygal.HorizontalBar(**config("Links: people who clicked", height=170 + 44 * min(top, len(report.links))))
    shown = report.links[:top]
    chart.x_labels = [link.url for link in reversed(shown)]
    chart.add("People", [link.unique_clicks for link in reversed(shown)])
    chart.add("Clicks", [link.total_clicks for link in reversed(shown)])
    return svg(chart)


def countries(report: CampaignReport, *, top: int = 10) -> str:
    shown = report.countries[:top]
    return _by_country(
        "Countries (the contact's country)",
        [c.country for c in shown],
        {"Recipients": [c.recipients for c in shown], "Opened": [c.unique_opens for c in shown]},
    )


def ip_countries(report: CampaignReport, *, top: int = 10) -> str:
    shown = report.ip_countries[:top]
    return _by_country(
        "Where opens and clicks came from (GeoIP)",
        [c.country for c in shown],
        {"People": [c.people for c in shown], "Opens and clicks": [c.opens_and_clicks for c in shown]},
    )


def _by_country(title: str, countries: list[str], series: dict[str, list[int]]) -> str:
    """Horizontal bars, the first country on top."""
    chart = pygal.HorizontalBar(**config(title, height=170 + 44 * len(countries)))
    chart.x_labels = list(reversed(countries))
    for name, values in series.items():
        chart.add(name, list(reversed(values)))
    return svg(chart)


def heat_map(grid: Sequence[Sequence[int]], zone: str) -> str:
    """Opens by weekday and hour: one square each, darker for more; its count in its <title>."""
    cell, left, top = 22, 40, 34
    highest = max((max(row) for row in grid), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {left + 24 * cell + 4} {top + 7 * cell + 4}" '
        f'class="heat-map" role="img" aria-label="Opens by weekday and hour">',
        f'<text x="0" y="14" font-size="13" font-family="system-ui, sans-serif">Opens by weekday and hour '
        f"({escape(zone)})</text>",
    ]
    for hour in range(0, 24, 3):
        parts.append(f'<text x="{left + hour * cell}" y="{top - 4}" font-size="10">{hour:02d}</text>')
    for day, row in enumerate(grid):
        y = top + day * cell
        parts.append(f'<text x="0" y="{y + 15}" font-size="11">{WEEKDAYS[day]}</text>')
        for hour, count in enumerate(row):
            shade = 0.06 + 0.94 * count / highest if count else 0.0
            parts.append(
                f'<rect class="hour" x="{left + hour * cell}" y="{y}" width="{cell - 2}" height="{cell - 2}" '
                f'fill="#1f6feb" fill-opacity="{shade:.2f}" stroke="#dee2e6" data-count="{count}">'
                f"<title>{WEEKDAYS[day]} {hour:02d}:00 — {count} opens</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts)
