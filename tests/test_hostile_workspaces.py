"""Workspace files written to hurt: nesting that would crash the YAML composer, templates that would eat memory or
time, links out of the workspace. Each is a located `validate` problem, and the daemon refuses the revision
instead of dying or hanging."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, reconciler


@pytest.fixture
def base(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(Path(__file__).resolve().parent / "workspaces" / "base", root)
    return root


def _assert_refused(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    output = result.stdout + result.stderr
    for words in expected:
        assert words in output, output[-3000:]


@pytest.mark.parametrize(
    "where",
    [
        "[" * 50_000 + "]" * 50_000,
        "{a: " * 50_000 + "1" + "}" * 50_000,
        "\n" + "".join(" " * (level + 1) + "-\n" for level in range(3000)),
    ],
    ids=["flow-sequences", "flow-mappings", "block-sequences"],
)
def test_yaml_nested_too_deep_is_a_located_problem_not_a_crash(base: Path, where: str) -> None:
    deep = base / "spec" / "deep.yaml"
    deep.write_text("kind: Segment\nname: deep\nwhere: " + where + "\n")
    line = 3 if where.startswith(("[", "{")) else 67  # where the 65th level opens
    _assert_refused(reconciler("validate", cwd=base), f"spec/deep.yaml:{line}:", "nested deeper than 64 levels")
    _assert_refused(reconciler("tick", cwd=base), f"spec/deep.yaml:{line}:", "nested deeper than 64 levels")


@pytest.mark.no_state
def test_aliases_that_nest_deeper_than_the_limit_are_refused(base: Path) -> None:
    lines = ["a0: &a0 [1]"] + [f"a{n}: &a{n} [[[[[[[[[[*a{n - 1}]]]]]]]]]]" for n in range(1, 12)]
    (base / "spec" / "aliases.yaml").write_text("kind: Segment\nname: aliased\n" + "\n".join(lines) + "\n")
    _assert_refused(reconciler("validate", cwd=base), "spec/aliases.yaml:", "nested deeper than 64 levels")


@pytest.mark.no_state
def test_a_deep_but_reasonable_condition_still_validates(base: Path) -> None:
    condition = "{not: " * 30 + "{field: spend, gt: 1}" + "}" * 30
    (base / "spec" / "nested.yaml").write_text(f"kind: Segment\nname: nested\nwhere: {condition}\n")
    result = reconciler("validate", cwd=base)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.no_state
def test_the_example_workspace_needs_no_more_than_the_limit() -> None:
    result = reconciler("validate", cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def _launch_with(root: Path, expression: str) -> None:
    template = root / "templates" / "news" / "launch.mjml"
    text = template.read_text().replace("we are open.</mj-text>", "we are open.</mj-text>\n" + expression)
    template.write_text(text)


@pytest.mark.no_state
@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("<mj-text>{{ 'a' * 10**9 }}</mj-text>", "characters"),
        ("<mj-text>{{ [1] * 10**9 }}</mj-text>", "characters"),
        ("<mj-text>{{ 7 ** (10**9) }}</mj-text>", "too large"),
        ("<mj-text>{{ 'a' | center(1000000000) }}</mj-text>", "characters"),
        ("<mj-text>{{ 'a'.ljust(1000000000) }}</mj-text>", "characters"),
        ("<mj-text>{{ '{:>1000000000}'.format(1) }}</mj-text>", "characters"),
        ("<mj-text>{{ '%1000000000s' % 'x' }}</mj-text>", "characters"),
        ("<mj-text>{{ range(100000) | join('x' * 100000) }}</mj-text>", "characters"),
        ("<mj-text>{{ ('x' * 100000) | replace('x', 'y' * 100000) }}</mj-text>", "characters"),
        (
            "<mj-text>{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}</mj-text>",
            "loop",
        ),
        ("<mj-text>{% for i in range(50000) %}{{ 'x' * 50000 }}{% endfor %}</mj-text>", "characters"),
        (  # loops over a string that write nothing: the clock was looked at only when output came (it ran for ever)
            "<mj-text>{% set s = 'x' * 99999 %}{% for c in s %}{% for d in s %}{% endfor %}{% endfor %}</mj-text>",
            "longer than 2 s",
        ),
    ],
    ids=[
        "repeat-text",
        "repeat-list",
        "power",
        "center",
        "ljust",
        "format",
        "percent",
        "join",
        "replace",
        "loops",
        "output",
        "silent-loops",
    ],
)
def test_a_template_that_would_render_without_bound_is_a_located_problem(
    base: Path, expression: str, words: str
) -> None:
    _launch_with(base, expression)
    result = reconciler("validate", cwd=base)
    _assert_refused(result, "templates/news/launch.mjml:6:", words)


@pytest.mark.no_state
def test_links_out_of_the_workspace_are_refused(base: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "partials").mkdir(parents=True)
    secret = outside / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (outside / "partials" / "footer.mjml").write_text((base / "templates/partials/footer.mjml").read_text())
    (outside / "extra.yaml").write_text("kind: List\nname: extra\ntitle: Extra\n")
    (base / "templates/partials/footer.mjml").unlink()
    (base / "templates/partials/footer.mjml").symlink_to(secret)
    (base / "templates/shared").symlink_to(outside / "partials", target_is_directory=True)
    (base / "spec/extra.yaml").symlink_to(outside / "extra.yaml")
    (base / "templates/welcome/hello.txt").symlink_to(secret)
    inside = base / "templates/partials/also-footer.mjml"
    inside.symlink_to(base / "templates/news/launch.mjml")  # a link that stays inside is fine
    result = reconciler("validate", cwd=base)
    _assert_refused(
        result,
        "templates/partials/footer.mjml:1:1: ",
        "templates/shared:1:1: ",
        "spec/extra.yaml:1:1: ",
        "templates/welcome/hello.txt:1:1: ",
        "outside the workspace",
    )
    assert "root:x:0" not in result.stdout + result.stderr
    assert "also-footer" not in result.stdout


def test_at_send_time_a_render_past_the_bounds_fails_that_contact_alone(tmp_path: Path) -> None:
    from sending import TEMPLATE, import_contacts, query, tick, workspace
    from smtp_sink import Sink, SinkServer

    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        (root / "spec/fields.yaml").write_text(
            "kind: Field\nname: city\ntype: string\n---\nkind: Field\nname: repeat\ntype: integer\n"
        )
        template = root / "templates/news/hello.mjml"
        template.write_text(TEMPLATE.replace("Hello", "{{ 'ha' * contact.repeat | default(1) }} Hello"))
        import_contacts(root, 3)
        (root / "repeat.csv").write_text("email,repeat\nperson1@example.net,1000000000\n")
        assert reconciler("contacts", "import", "repeat.csv", cwd=root).returncode == 0
        tick(root)
    assert sorted(rcpt for rcpt, _ in sink.messages) == ["person0@example.net", "person2@example.net"]
    ((state, reply),) = query(
        root,
        "SELECT l.state, l.last_reply FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE c.email = ?",
        "person1@example.net",
    )
    assert state == "failed" and "characters" in str(reply), reply


@pytest.mark.no_state
def test_segments_nested_through_in_segment_beyond_the_limit_are_a_problem(base: Path) -> None:
    chain = "".join(f"---\nkind: Segment\nname: s{n}\nwhere: {{in_segment: s{n + 1}}}\n" for n in range(3000))
    (base / "spec" / "chain.yaml").write_text(chain + "---\nkind: Segment\nname: s3000\nwhere: {field: spend, gt: 1}\n")
    result = reconciler("validate", cwd=base)
    _assert_refused(result, "spec/chain.yaml:4:", "Segment s0: where.in_segment: segments nest deeper than 64")
    assert "unexpected" not in result.stderr


def test_segments_that_would_expand_without_bound_are_a_problem(base: Path) -> None:
    both = "where: {{any: [{{in_segment: l{0}a}}, {{in_segment: l{0}b}}]}}\n"
    lattice = [f"---\nkind: Segment\nname: l{n}{side}\n" + both.format(n + 1) for n in range(40) for side in "ab"]
    ends = "---\nkind: Segment\nname: l40a\nwhere: {tag: a}\n---\nkind: Segment\nname: l40b\nwhere: {tag: b}\n"
    (base / "spec" / "lattice.yaml").write_text("".join(lattice) + ends)
    campaign = base / "campaigns" / "launch.yaml"
    campaign.write_text(campaign.read_text().replace("segments: [big-spenders]", "segments: [l0a]"))
    for command in ("validate", "plan"):
        result = reconciler(command, cwd=base)
        _assert_refused(result, "spec/lattice.yaml:", "expands to more than 10,000 conditions")


def test_a_segment_with_thousands_of_alternatives_still_plans(base: Path) -> None:
    alternatives = "".join(f"    - {{tag: t{n}}}\n" for n in range(3000))
    (base / "spec" / "wide.yaml").write_text("kind: Segment\nname: wide\nwhere:\n  any:\n" + alternatives)
    campaign = base / "campaigns" / "launch.yaml"
    campaign.write_text(campaign.read_text().replace("segments: [big-spenders]", "segments: [wide]"))
    (base / "c.csv").write_text("email,tags\na@example.com,t2999\nb@example.com,x\n")
    assert reconciler("contacts", "import", "c.csv", "--list", "news", cwd=base).returncode == 0
    result = reconciler("plan", cwd=base)
    assert result.returncode == 0, result.stdout[-1000:] + result.stderr[-1000:]
    assert "  wide          1 member\n" in result.stdout, result.stdout
