"""A workspace whose transport is a test SMTP server, and ways to look at what sending did."""

from __future__ import annotations

import email
import email.message
import email.policy
import hashlib
import subprocess
import textwrap
from collections import Counter
from pathlib import Path

import state_helpers
from conftest import reconciler

NOW = "2026-11-24T10:00:00Z"
LATER = "2026-11-24T13:00:00Z"
MUCH_LATER = "2026-11-26T13:00:00Z"

TEMPLATE = """\
<mjml>
  <mj-body>
    <mj-section><mj-column>
      <mj-text>Hello {{ contact.first_name | default('friend') }}, {{ contact.city | default('') }}</mj-text>
      <mj-text><a href="https://shop.example.com/a">One</a> <a href="https://shop.example.com/b?x=1&amp;y=2">Two</a>
        <a href="https://shop.example.com/c?who={{ contact.email }}">Three</a>
        <a href="https://other.example.org/d">Four</a> <a href="mailto:help@example.com">Help</a></mj-text>
      <mj-text><a href="{{ unsubscribe_url }}">Unsubscribe</a> · {{ organization.postal_address }}</mj-text>
    </mj-column></mj-section>
  </mj-body>
</mjml>
"""


def workspace(
    root: Path, port: int, *, connections: int = 4, campaign: str = "", public_url: str = "https://mail.example.com"
) -> Path:
    files = {
        "spec/settings.yaml": f"""
            kind: Settings
            name: default
            organization:
              name: Test Shop
              postal_address: "Test Shop, 1 Main Street, 00-001 Warsaw, Poland"
              website: https://shop.example.com
            public_url: {public_url}
            senders:
              news: {{from: "Test Shop <news@example.com>", reply_to: "help@example.com"}}
            transports:
              sink:
                type: smtp
                host: 127.0.0.1
                port: {port}
                security: none
                max_connections: {connections}
                timeout: 10
            defaults: {{sender: news, transport: sink}}
            """,
        "spec/lists.yaml": """
            kind: List
            name: news
            title: News and offers
            description: What is new in the shop.
            ---
            kind: List
            name: offers
            title: Offers
            description: Sales and discounts, twice a month at most.
            opt_in: double
            ---
            kind: List
            name: receipts
            title: Receipts
            category: transactional
            visibility: private
            """,
        "spec/fields.yaml": """
            kind: Field
            name: city
            type: string
            """,
        "templates/news/hello.mjml": TEMPLATE,
        "campaigns/hello.yaml": campaign
        or """
            kind: Campaign
            name: hello
            subject: "Hello {{ contact.first_name | default('there') }}"
            preheader: Our news
            template: news/hello
            audience: {lists: [news]}
            send_at: now
            status: scheduled
            utm: {source: newsletter, campaign: hello}
            """,
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return root


def import_contacts(root: Path, count: int, *, lists: tuple[str, ...] = ("news",)) -> list[str]:
    emails = [f"person{i}@example.net" for i in range(count)]
    rows = ["email,first_name,city"] + [f"{e},Pat{i},Łódź" for i, e in enumerate(emails)]
    (root / "contacts.csv").write_text("\n".join(rows) + "\n")
    args = [arg for name in lists for arg in ("--list", name)] + ["--preconfirmed"]  # made up: offers is double opt-in
    result = reconciler("contacts", "import", "contacts.csv", *args, cwd=root)
    assert result.returncode == 0, result.stderr
    return emails


def tick(root: Path, now: str = NOW, *extra: str) -> subprocess.CompletedProcess[str]:
    result = reconciler("tick", "--now", now, *extra, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def ledger(root: Path) -> Counter[str]:
    rows = query(root, "SELECT state, count(*) FROM ledger GROUP BY state")
    return Counter({str(state): int(str(count)) for state, count in rows})


def query(root: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """One statement's rows on the workspace's state, on the engine of the test run (state_helpers.query)."""
    return state_helpers.query(root, sql, *params)


def pairs(root: Path, sql: str, *params: object) -> dict[str, str]:
    """A two-column query as {first column: second column}, both as text."""
    return {str(key): str(value) for key, value in query(root, sql, *params)}


def parse(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    defects = [d for part in message.walk() for d in part.defects]
    assert not defects, defects
    return message


def body(message: email.message.EmailMessage, subtype: str = "html") -> str:
    """The text of the message's html (or plain) part."""
    part = message.get_body((subtype,))
    assert part is not None, f"no text/{subtype} part"
    content = part.get_content()
    assert isinstance(content, str)
    return content


def bucket(address: str, modulo: int) -> int:
    return int(hashlib.sha256(address.encode()).hexdigest(), 16) % modulo
