"""A template that reads a field some contacts lack, without a default: `validate` warns where, `plan` counts who
would get no message, and `render --contact` explains the failure instead of reporting a bug."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, reconciler
from sending import import_contacts, workspace

USES_CITY = """\
<mjml>
  <mj-body>
    <mj-section><mj-column>
      <mj-text>Hello {{ contact.first_name | default('friend') }}</mj-text>
      <mj-text>{% if contact.city == 'Łódź' %}See you in Łódź!{% endif %}</mj-text>
      <mj-text><a href="{{ unsubscribe_url }}">Unsubscribe</a> · {{ organization.postal_address }}</mj-text>
    </mj-column></mj-section>
  </mj-body>
</mjml>
"""


def _workspace_reading_city(tmp_path: Path) -> Path:
    root = workspace(tmp_path, 2525)
    (root / "templates/news/hello.mjml").write_text(USES_CITY)
    return root


@pytest.mark.no_state
def test_validate_warns_where_a_field_is_read_without_a_default(tmp_path: Path) -> None:
    root = _workspace_reading_city(tmp_path)
    result = reconciler("validate", cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr  # a warning, not an error
    assert "templates/news/hello.mjml:5:1: warning: Template news/hello: contact.city is read without a default" in (
        result.stdout
    )
    assert "first_name" not in result.stdout  # read with | default: fine


def test_plan_counts_the_recipients_who_lack_the_field(tmp_path: Path) -> None:
    root = _workspace_reading_city(tmp_path)
    import_contacts(root, 3)  # all three have a city
    (root / "more.csv").write_text("email\nno.city.1@example.net\nno.city.2@example.net\n")
    assert reconciler("contacts", "import", "more.csv", "--list", "news", cwd=root).returncode == 0
    result = reconciler("plan", cwd=root)
    assert "→ 5 recipients" in result.stdout, result.stdout
    assert "2 have no city: their message would fail" in result.stdout, result.stdout


def test_render_for_a_contact_without_the_field_says_why(tmp_path: Path) -> None:
    root = _workspace_reading_city(tmp_path)
    (root / "more.csv").write_text("email\nno.city@example.net\n")
    assert reconciler("contacts", "import", "more.csv", "--list", "news", cwd=root).returncode == 0
    result = reconciler("render", "hello", "--contact", "no.city@example.net", cwd=root)
    assert result.returncode == 1
    assert "unexpected" not in result.stderr and "please report" not in result.stderr
    assert "city" in result.stderr and "no.city@example.net" in result.stderr


@pytest.mark.no_state
def test_the_example_workspace_reads_every_optional_field_with_a_default() -> None:
    result = reconciler("validate", cwd=REPO)
    assert result.returncode == 0 and "warning" not in result.stdout, result.stdout
