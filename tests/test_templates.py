"""Templates compile once per message definition, render per recipient, and stay inside the sandbox."""

from __future__ import annotations

import pytest
from jinja2.exceptions import SecurityError

from reconciler.spec import TemplateFile
from reconciler.templates import StrictFields, TemplateFailure, TemplateSet, _compile_mjml, protect, render_text

pytestmark = pytest.mark.no_state  # the PostgreSQL pass of the suite leaves it out

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


EVERY_ELEMENT = """<mjml lang="en" dir="ltr">
<mj-head>
  <mj-title>Title</mj-title>
  <mj-preview>{{ preheader }}</mj-preview>
  <mj-breakpoint width="480px" />
  <mj-font name="Lato" href="https://fonts.example.com/lato.css" />
  <mj-attributes>
    <mj-all font-family="Lato, Arial" />
    <mj-class name="muted" color="#666666" made-up-but-allowed="1" />
    <mj-text line-height="1.5" />
  </mj-attributes>
  <mj-style inline="inline">.cta a { color: #000; }</mj-style>
</mj-head>
<mj-body background-color="#ffffff" width="600px" css-class="body">
  <mj-raw position="file-start"><!-- raw --></mj-raw>
  <mj-hero mode="fluid-height" background-url="https://x.example/h.jpg" background-height="400px"
           background-width="600px" inner-padding="10px">
    <mj-text mj-class="muted">Hero</mj-text>
  </mj-hero>
  <mj-wrapper padding="0" border-radius="4px" full-width="full-width">
    <mj-section text-align="left" background-repeat="no-repeat">
      <mj-group width="100%" direction="ltr">
        <mj-column width="50%" inner-background-color="#eeeeee" padding="4px" inner-border-radius="4px">
          <mj-image src="https://x.example/a.png" alt="A" fluid-on-mobile="true" width="100px" />
          <mj-button href="https://x.example/?v={% if contact.vip %}1{% endif %}"
                     css-class="cta" rel="noopener" title="Go" inner-padding="8px">Go</mj-button>
          <mj-divider border-width="1px" border-style="dashed" />
          <mj-spacer height="10px" />
        </mj-column>
        <mj-column>
          <mj-table cellpadding="2" role="presentation"><tr><td>{{ contact.first_name }}</td></tr></mj-table>
          <mj-social icon-size="20px" mode="horizontal">
            <mj-social-element name="facebook" href="https://x.example/">Facebook</mj-social-element>
          </mj-social>
          <mj-navbar hamburger="hamburger" base-url="https://x.example">
            <mj-navbar-link href="/shop" padding="4px">Shop</mj-navbar-link>
          </mj-navbar>
          <mj-accordion icon-position="left">
            <mj-accordion-element icon-align="middle">
              <mj-accordion-title font-size="14px">Q</mj-accordion-title>
              <mj-accordion-text line-height="20px">A<br>b</mj-accordion-text>
            </mj-accordion-element>
          </mj-accordion>
          <mj-carousel thumbnails="hidden">
            <mj-carousel-image src="https://x.example/1.png" thumbnails-src="https://x.example/t.png" />
          </mj-carousel>
          <mj-text>{% if contact.vip %}<b>VIP</b>{% endif %} a &amp; b <img src="https://x.example/i.png"></mj-text>
        </mj-column>
      </mj-group>
    </mj-section>
  </mj-wrapper>
</mj-body>
</mjml>
"""


def test_every_mjml_element_with_its_attributes_passes_and_compiles() -> None:
    found = templates(**{"news/all": EVERY_ELEMENT})
    assert TemplateSet(found).markup_problems("news/all") == []
    assert "Facebook" in TemplateSet(found).compile("news/all").html


def test_a_misspelt_element_and_attribute_are_named_where_they_are() -> None:
    broken = MESSAGE.replace("<mj-text>Hello", "<mj-txt>Hello").replace(
        "</mj-text></mj-column></mj-section>\n{%", "</mj-txt></mj-column></mj-section>\n{%"
    )
    footer = FOOTER.replace("<mj-text>", '<mj-text colour="red">')
    found = TemplateSet(templates(**{"news/hello": broken, "partials/footer": footer})).markup_problems("news/hello")
    assert [(f.template, f.line, f.message, f.hint) for f in found] == [
        ("news/hello.mjml", 4, "unknown MJML element <mj-txt>", "did you mean 'mj-text'?"),
        ("partials/footer.mjml", 1, "<mj-text> has no attribute 'colour'", "did you mean 'color'?"),
    ]


def test_mj_include_says_to_use_jinja_include() -> None:
    body = MESSAGE.replace("{% endblock %}", '<mj-include path="partials/footer.mjml" />\n{% endblock %}')
    with pytest.raises(TemplateFailure) as failure:
        TemplateSet(templates(**{"news/hello": body})).compile("news/hello")
    assert (failure.value.line, failure.value.message) == (5, "MJML does not compile: <mj-include> cannot reach files")
    assert "{% include" in failure.value.hint


def test_jinja_between_attributes_is_named_where_mjml_cannot_read_it() -> None:
    body = MESSAGE.replace("<mj-text>Hello", '<mj-text {% if contact.vip %}color="gold"{% endif %}>Hello')
    with pytest.raises(TemplateFailure) as failure:
        TemplateSet(templates(**{"news/hello": body})).compile("news/hello")
    assert (failure.value.template, failure.value.line, failure.value.column) == ("news/hello.mjml", 4, 33)
    assert failure.value.message == "MJML does not compile: Jinja between the attributes of <mj-text>"


def test_an_element_mjml_python_refuses_is_named_at_its_line() -> None:
    head = "<mjml><mj-head>\n<mj-html-attributes></mj-html-attributes>\n</mj-head><mj-body>"
    with pytest.raises(TemplateFailure) as failure:
        TemplateSet(templates(**{"layouts/base": LAYOUT.replace("<mjml><mj-body>", head)})).compile("news/hello")
    assert (failure.value.template, failure.value.line) == ("layouts/base.mjml", 2)
    assert "<mj-html-attributes> is MJML's, but the compiler reconciler uses does not know it" in failure.value.message


def test_an_unknown_filter_is_reported_in_the_layout_that_has_it() -> None:
    layout = LAYOUT.replace("{% block content %}", "{{ organization.name | uper }}\n{% block content %}")
    with pytest.raises(TemplateFailure) as failure:
        TemplateSet(templates(**{"layouts/base": layout})).compile("news/hello")
    assert (failure.value.template, failure.value.line) == ("layouts/base.mjml", 2)
    assert "No filter named 'uper'" in failure.value.message


def test_a_message_loads_a_web_font_only_when_its_layout_asks_for_one() -> None:
    plain = TemplateSet(templates()).compile("news/hello").html
    assert "fonts.googleapis.com" not in plain and "@import" not in plain
    with_font = LAYOUT.replace(
        "<mjml><mj-body>",
        '<mjml><mj-head><mj-font name="Lato" href="https://fonts.googleapis.com/css?family=Lato" />'
        '<mj-attributes><mj-all font-family="Lato, Arial" /></mj-attributes></mj-head><mj-body>',
    )
    html = TemplateSet(templates(**{"layouts/base": with_font})).compile("news/hello").html
    assert '<link href="https://fonts.googleapis.com/css?family=Lato"' in html


def test_lines_stay_true_after_jinja_comments() -> None:
    layout = "{#- What this layout is for. -#}\n" + LAYOUT.replace(
        "{% include", "{# a comment\nover two lines #}\n<mj-sectoin></mj-sectoin>\n{% include"
    )
    [found] = TemplateSet(templates(**{"layouts/base": layout})).markup_problems("news/hello")
    assert (found.template, found.line, found.column) == ("layouts/base.mjml", 6, 1)


def test_an_unclosed_expression_before_another_is_reported_at_its_own_line() -> None:
    body = MESSAGE.replace("{% if contact.vip %}", "{{ contact.first_name }\n{% if contact.vip %}")
    with pytest.raises(TemplateFailure) as failure:
        TemplateSet(templates(**{"news/hello": body})).compile("news/hello")
    assert (failure.value.template, failure.value.line) == ("news/hello.mjml", 3)
    assert failure.value.message.startswith("Jinja syntax: ")


def test_an_element_left_open_in_a_block_is_reported_where_it_opens() -> None:
    body = MESSAGE.replace("</mj-column></mj-section>\n{% endblock %}", "</mj-column>\n{% endblock %}")
    with pytest.raises(TemplateFailure) as failure:
        TemplateSet(templates(**{"news/hello": body})).compile("news/hello")
    assert (failure.value.template, failure.value.line, failure.value.column) == ("news/hello.mjml", 4, 1)
    assert failure.value.message == (
        "MJML does not compile: <mj-section> is not closed before </mj-body> (layouts/base.mjml:4)"
    )
