"""How long `reconciler validate` takes on a large workspace, against the floor of parsing it.

Generates 1,000 campaigns, 50 segments and 200 templates, then times the real command (a fresh process, as in
CI). The baseline, measured in the same run, is the work no validator can skip: composing every YAML file with
ruamel.yaml and compiling each distinct template once with mjml-python. Target: validate under 3 s.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mjml import mjml2html
from ruamel.yaml import YAML

CAMPAIGNS, SEGMENTS, TEMPLATES = 1000, 50, 200
RUNS = 3

SETTINGS = """\
kind: Settings
name: default
organization: {name: Bench Shop, postal_address: "Bench Shop, 1 Long Road, 00-001 Warsaw, Poland"}
public_url: https://mail.bench.example
timezone: Europe/Warsaw
senders:
  news: {from: "Bench Shop <news@bench.example>"}
defaults: {sender: news}
"""
LISTS = "".join(
    f"---\nkind: List\nname: {name}\ntitle: {name.title()}\ncategory: {category}\n"
    for name, category in [
        ("news", "marketing"),
        ("offers", "marketing"),
        ("customers", "marketing"),
        ("orders", "transactional"),
    ]
)
FIELDS = "".join(
    f"---\nkind: Field\nname: {name}\ntype: {kind}\n"
    for name, kind in [
        ("spend", "number"),
        ("orders", "integer"),
        ("roast", "string"),
        ("birthday", "date"),
        ("last_order_at", "datetime"),
        ("wholesale", "boolean"),
        ("interests", "list"),
        ("city", "string"),
        ("score", "number"),
        ("visits", "integer"),
    ]
)
LAYOUT = """<mjml>
  <mj-head><mj-preview>{{ preheader }}</mj-preview></mj-head>
  <mj-body background-color="#f4f1ec">
    <mj-section><mj-column><mj-text font-size="20px">Bench Shop</mj-text></mj-column></mj-section>
    {% block content %}{% endblock %}
    <mj-section><mj-column><mj-text font-size="11px">
      {{ organization.postal_address }} · <a href="{{ unsubscribe_url }}">Unsubscribe</a> ·
      <a href="{{ preferences_url }}">Preferences</a>
    </mj-text></mj-column></mj-section>
  </mj-body>
</mjml>
"""


def template(index: int) -> str:
    sections = "\n".join(
        f"""<mj-section><mj-column>
  <mj-image src="https://bench.example/img/{index}-{s}.jpg" alt="Product {s}" />
  <mj-text>Hello {{{{ contact.first_name | default('there') }}}}, item {index}-{s}
  for {{{{ contact.roast | default('you') }}}}.
  {{% if contact.spend > 100 %}}Thanks for being a regular.{{% endif %}}</mj-text>
  <mj-button href="https://bench.example/p/{index}/{s}">Shop now</mj-button>
</mj-column></mj-section>"""
        for s in range(6)
    )
    return f'{{% extends "layouts/base.mjml" %}}\n{{% block content %}}\n{sections}\n{{% endblock %}}\n'


def segment(index: int) -> str:
    return f"""---
kind: Segment
name: segment-{index}
lists: [offers]
where:
  all:
    - {{field: spend, gt: {index * 10}}}
    - any: [{{field: roast, in: [light, dark]}}, {{tag: vip}}]
    - {{event: purchase, within: 90d, count: {{gte: 2}}}}
    - not: {{engaged: {{campaign: campaign-{index}, action: clicked}}}}
order_by: {{field: spend, direction: desc}}
limit: {100 + index}
"""


def campaign(index: int) -> str:
    return f"""kind: Campaign
name: campaign-{index}
subject: "{{{{ contact.first_name | default('Hi') }}}}, offer {index}"
preheader: Offer number {index}
template: offers/t{index % TEMPLATES}
audience:
  lists: [offers, news]
  segments: [segment-{index % SEGMENTS}]
  exclude: {{segments: [segment-{(index + 1) % SEGMENTS}]}}
send_at: 2026-12-01T09:00:00+01:00
status: scheduled
stages:
  - {{name: reminder, template: offers/t{(index + 1) % TEMPLATES}, subject: Last day, after: 2d, only: not_opened}}
"""


def generate(root: Path) -> None:
    for folder in ("spec", "campaigns", "templates/layouts", "templates/offers"):
        (root / folder).mkdir(parents=True)
    (root / "spec/settings.yaml").write_text(SETTINGS)
    (root / "spec/lists.yaml").write_text(LISTS)
    (root / "spec/fields.yaml").write_text(FIELDS)
    (root / "spec/segments.yaml").write_text("".join(segment(i) for i in range(SEGMENTS)))
    (root / "templates/layouts/base.mjml").write_text(LAYOUT)
    for i in range(TEMPLATES):
        (root / f"templates/offers/t{i}.mjml").write_text(template(i))
    for i in range(CAMPAIGNS):
        (root / f"campaigns/campaign-{i}.yaml").write_text(campaign(i))


def baseline(root: Path) -> float:
    """Parse every YAML file and compile every distinct template once: the floor under any validator."""
    started = time.perf_counter()
    yaml = YAML(typ="safe", pure=False)
    for path in sorted(root.rglob("*.yaml")):
        list(yaml.compose_all(path.read_text()))
    layout = (root / "templates/layouts/base.mjml").read_text()
    for path in sorted((root / "templates/offers").glob("*.mjml")):
        body = path.read_text().split("{% block content %}")[1].split("{% endblock %}")[0]
        mjml2html(layout.replace("{% block content %}{% endblock %}", body))
    return time.perf_counter() - started


def timed(root: Path, *args: str, expect: tuple[int, ...] = (0,)) -> float:
    """Seconds `reconciler -C root ARGS` takes in a fresh process, as in CI; exits when it fails."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "-C", str(root), *args], capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    if result.returncode not in expect:
        sys.exit(f"{args[0]} failed on the generated workspace:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        generate(root)
        ours = statistics.median(timed(root, "validate") for _ in range(RUNS))
        floor = statistics.median(baseline(root) for _ in range(RUNS))
    verdict = "meets" if ours < 3.0 else "MISSES"
    print(f"validate: {CAMPAIGNS} campaigns, {SEGMENTS} segments, {TEMPLATES} templates")
    print(f"  reconciler validate (new process, median of {RUNS}): {ours:.2f} s  ({verdict} the 3 s target)")
    print(f"  baseline: parse YAML + compile each template once:   {floor:.2f} s")
    print(f"  ratio validate / baseline: {ours / floor:.2f}")


if __name__ == "__main__":
    main()
