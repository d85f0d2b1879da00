"""Templates compile once per message definition, render per recipient, and stay inside the sandbox."""

from __future__ import annotations

import pytest
from jinja2.exceptions import SecurityError

from reconciler.spec import TemplateFile
from reconciler.templates import StrictFields, TemplateFailure, TemplateSet, _compile_mjml, protect, render_text

LAYOUT = """<mjml><mj-body>
{% block content %}{% endblock %}
{% include "partials/footer.mjml" %}
</mj-body></mjml>
"""
FOOTER = (
    '<mj-section><mj-column><mj-text><a href="{{ unsubscribe_url }}">Unsubscribe</a></mj-text></mj-column></mj-section>'
)
MESSAGE = """{% extends "layouts/base.mjml" %}
{% block content %}
{% if contact.vip %}<mj-section><mj-column><mj-text>VIP</mj-text></mj-column></mj-section>{% endif %}
<mj-section><mj-column><mj-text>Hello {{ contact.first_name }}</mj-text></mj-column></mj-section>
{% endblock %}
"""


def templates(**overrides: str) -> dict[str, TemplateFile]:
    texts = {"layouts/base": LAYOUT, "partials/footer": FOOTER, "news/hello": MESSAGE, **overrides}
    return {name: TemplateFile(name=name, path=f"templates/{name}.mjml", text=text) for name, text in texts.items()}


def context(contact: object = None, **fields: object) -> dict[str, object]:
    person = contact if contact is not None else {"first_name": "Ada", "vip": False, **fields}
    return {"contact": person, "unsubscribe_url": "https://x.example/u/T"}


def test_structure_is_resolved_while_per_recipient_jinja_survives() -> None:
    flat = TemplateSet(templates()).flatten("news/hello")
    assert "{% extends" not in flat and "{% include" not in flat
    assert "{{ contact.first_name }}" in flat
    assert "{% if contact.vip %}" in flat
    assert "{{ unsubscribe_url }}" in flat


def test_each_recipient_gets_their_own_content_from_one_compile() -> None:
    compiled = TemplateSet(templates()).compile("news/hello")
    ada = compiled.render(context())
    bob = compiled.render(context(first_name="Bob", vip=True))
    assert "Hello Ada" in ada and "VIP" not in ada
    assert "Hello Bob" in bob and "VIP" in bob
    assert 'href="https://x.example/u/T"' in bob


def test_the_same_template_is_compiled_by_mjml_only_once() -> None:
    text = MESSAGE.replace("Hello", "Hello once")
    before = _compile_mjml.cache_info().misses
    for _ in range(3):
        TemplateSet(templates(**{"news/hello": text})).compile("news/hello")
    assert _compile_mjml.cache_info().misses == before + 1


def test_contact_data_is_html_escaped() -> None:
    html = TemplateSet(templates()).compile("news/hello").render(context(first_name="<script>alert(1)</script>"))
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;" in html


def test_templates_cannot_reach_python_internals() -> None:
    evil = MESSAGE.replace("{{ contact.first_name }}", "{{ contact.__class__.__mro__ }}")
    with pytest.raises(SecurityError):
        TemplateSet(templates(**{"news/hello": evil})).compile("news/hello").render(context())


def test_authors_raw_blocks_stay_raw() -> None:
    assert protect("{% raw %}{{ x }}{% endraw %}") == "{% raw %}{% raw %}{{ x }}{% endraw %}{% endraw %}"


def test_misspelt_variable_is_reported_at_its_file_and_line() -> None:
    broken = MESSAGE.replace("contact.first_name", "contact.first_nme")
    with pytest.raises(TemplateFailure) as failure:
        TemplateSet(templates(**{"news/hello": broken})).render_source("news/hello", context())
    assert (failure.value.template, failure.value.line) == ("news/hello.mjml", 4)
    assert "first_nme" in failure.value.message


def test_mistake_in_a_partial_is_reported_in_the_partial() -> None:
    with pytest.raises(TemplateFailure) as failure:
        TemplateSet(templates(**{"partials/footer": "{{ unsubscribe_ur }}"})).render_source("news/hello", context())
    assert failure.value.template == "partials/footer.mjml"


def test_broken_mjml_is_a_template_failure() -> None:
    with pytest.raises(TemplateFailure, match="MJML does not compile"):
        TemplateSet(templates(**{"layouts/base": "<mjml><mj-body><mj-section>"})).compile("news/hello")


def test_subjects_never_carry_line_breaks() -> None:
    assert render_text("Hi {{ name }}", {"name": "Ada\r\nBcc: victim@example.com"}) == "Hi Ada Bcc: victim@example.com"


def test_subjects_are_not_html_escaped() -> None:
    assert render_text("{{ a }}", {"a": "Tom & Jerry's <deal>"}) == "Tom & Jerry's <deal>"


def test_a_misspelt_field_is_an_error_even_behind_a_default() -> None:
    contact = StrictFields({"first_name": "Ada", "vip": False}, known=["first_name", "city"])
    typo = MESSAGE.replace("{{ contact.first_name }}", "{{ contact.frist_name | default('there') }}")
    with pytest.raises(TemplateFailure) as failure:
        TemplateSet(templates(**{"news/hello": typo})).render_source("news/hello", context(contact=contact))
    assert "frist_name" in failure.value.message
    assert "first_name" in failure.value.hint


def test_a_declared_field_the_contact_lacks_falls_back_to_its_default() -> None:
    contact = StrictFields({"first_name": "Ada"}, known=["first_name", "city"])
    assert render_text("{{ contact.city | default('your town') }}", {"contact": contact}) == "your town"
