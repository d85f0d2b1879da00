"""A workspace with workflows, driven pass by pass on a fixed clock, sending to a real SMTP server.

`Journey.at(moment)` runs one daemon pass at that moment (reconcile: apply, start, run workflows; then one
dispatch pass), exactly as `reconciler tick --now` does, but in this process so a test can take a hundred steps
through simulated weeks in a few seconds. What a test looks at is what a user could: the messages the server got,
the ledger, the runs and their history, the contact's lists, tags and fields. Given a state database (either
engine), a journey runs on it; `reconcile` is a pass without the dispatch pass, for what the runner alone does.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any

from reconciler.clock import FixedClock, parse_instant
from reconciler.daemon import PassResult, reconcile_once
from reconciler.dispatch import Dispatcher
from reconciler.state import engagement
from reconciler.state.db import write
from reconciler.state.postgres import StateDatabase
from reconciler.state.subscribers import change_subscriptions, contact_for, insert_events, unsubscribe_all
from smtp_sink import Sink
from state_helpers import open_state

SETTINGS = """
kind: Settings
name: default
organization:
  name: Test Shop
  postal_address: "Test Shop, 1 Main Street, 00-001 Warsaw, Poland"
public_url: https://mail.example.com
timezone: Europe/Warsaw
senders:
  news: {{from: "Test Shop <news@example.com>"}}
transports:
  sink: {{type: smtp, host: 127.0.0.1, port: {port}, security: none, max_connections: 2, timeout: 10}}
defaults: {{sender: news, transport: sink}}
{extra}
"""

LISTS = """
kind: List
name: news
title: News
---
kind: List
name: customers
title: Customers
visibility: private
---
kind: List
name: vip
title: VIP
visibility: private
---
kind: List
name: receipts
title: Receipts
category: transactional
visibility: private
---
kind: Field
name: birthday
type: date
---
kind: Field
name: orders
type: number
---
kind: Field
name: stage
type: string
"""

TEMPLATE = """<mjml><mj-body><mj-section><mj-column>
<mj-text>Hello {{ contact.first_name | default('friend') }}</mj-text>
<mj-text><a href="https://shop.example.com/x">Shop</a></mj-text>
<mj-text><a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ organization.postal_address }}</mj-text>
</mj-column></mj-section></mj-body></mjml>
"""


class Journey:
    """One workspace and its state, moved through time by the test."""

    def __init__(
        self, root: Path, sink: Sink, port: int, workflows: str, *, settings: str = "", db: StateDatabase | None = None
    ) -> None:
        self.root, self.sink = root, sink
        files = {
            "spec/settings.yaml": SETTINGS.format(port=port, extra=settings),
            "spec/lists.yaml": LISTS,
            "templates/mail/a.mjml": TEMPLATE,
            "templates/mail/b.mjml": TEMPLATE,
            "templates/mail/c.mjml": TEMPLATE,
        }
        for relative, text in files.items():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / relative).write_text(text.lstrip("\n"), encoding="utf-8")
        self.write_workflows(workflows)
        self.db: Any = db if db is not None else open_state(root)

    def write_workflows(self, text: str) -> None:
        (self.root / "spec/workflows.yaml").write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")

    def at(self, moment: str) -> PassResult:
        """One daemon pass at `moment`; the revision must be valid."""
        now = parse_instant(moment)
        result = self.reconcile(moment)
        asyncio.run(self._dispatch(now))
        return result

    def reconcile(self, moment: str) -> PassResult:
        """The reconcile half of a pass (apply, start, run the workflows) at `moment`; nothing is sent."""
        result = reconcile_once(self.root, self.db, now=parse_instant(moment))
        assert result.valid, [p.format() for p in result.problems]
        return result

    async def _dispatch(self, now: datetime) -> None:
        dispatcher = Dispatcher(self.db, root=self.root, clock=FixedClock(now))
        try:
            await dispatcher.run_pass()
        finally:
            await dispatcher.close()

    # --- what happens to people ---------------------------------------------------------------------------------

    def person(self, email: str, *, lists: tuple[str, ...] = (), at: str, **fields: Any) -> int:
        """A contact (with custom fields and a time zone) subscribed to `lists`, as a form or the API does it."""
        builtin = {k: fields.pop(k) for k in ("first_name", "timezone") if k in fields}
        with write(self.db):
            contact_id = contact_for(self.db, email, at=at, first_name=builtin.get("first_name"))
            self.db.conn.execute(
                "UPDATE contacts SET fields = ?, timezone = ? WHERE id = ?",
                (json.dumps(fields), builtin.get("timezone"), contact_id),
            )
            change_subscriptions(self.db, contact_id, {name: "subscribed" for name in lists}, at=at, source="api")
        return contact_id

    def leave(self, email: str, list_name: str, *, at: str) -> None:
        with write(self.db):
            contact_id = contact_for(self.db, email, at=at)
            change_subscriptions(self.db, contact_id, {list_name: "unsubscribed"}, at=at, source="preferences")

    def leave_all(self, email: str, *, at: str) -> None:
        """ "Unsubscribe from everything" on the preference page."""
        with write(self.db):
            contact_id = contact_for(self.db, email, at=at)
        unsubscribe_all(
            self.db, contact_id, marketing_lists=["news", "customers", "vip"], at=at, source="page", ip=None
        )

    def event(self, email: str, kind: str, *, at: str, **properties: Any) -> None:
        insert_events(self.db, [(email, kind, at, properties, None)], at=at)

    def opens(self, email: str, step: str, *, at: str, machine: bool = False, action: str = "opened") -> None:
        """The person (or a privacy proxy) opens the message a workflow step sent them."""
        row = self.db.conn.execute(
            "SELECT l.id FROM ledger l JOIN contacts c ON c.id = l.contact_id WHERE c.email = ? AND l.stage = ? "
            "AND l.workflow IS NOT NULL ORDER BY l.id DESC LIMIT 1",
            (email, step),
        ).fetchone()
        assert row is not None, f"{email} got no message from step {step}"
        with write(self.db):
            engagement.record(self.db, [engagement.Engagement(row[0], action, at, machine=machine)])  # type: ignore[arg-type]

    # --- what a user can see ------------------------------------------------------------------------------------

    def received(self) -> list[tuple[str, str]]:
        """(recipient, subject) of every message the SMTP server accepted, in order."""
        from sending import parse

        return [(rcpt, str(parse(data)["Subject"])) for rcpt, data in self.sink.messages]

    def sent(self, email: str) -> list[str]:
        """The workflow steps whose messages went to `email`, in order."""
        rows = self.db.conn.execute(
            "SELECT l.workflow || '/' || l.stage FROM ledger l JOIN contacts c ON c.id = l.contact_id "
            "WHERE c.email = ? AND l.workflow IS NOT NULL AND l.state = 'sent' ORDER BY l.sent_at, l.id",
            (email,),
        )
        return [str(r[0]) for r in rows]

    def queued(self, email: str) -> list[tuple[str, str]]:
        """(workflow/step, state) of each message a workflow made for `email` (sent or not), in order."""
        rows = self.db.conn.execute(
            "SELECT l.workflow || '/' || l.stage, l.state FROM ledger l JOIN contacts c ON c.id = l.contact_id "
            "WHERE c.email = ? AND l.workflow IS NOT NULL ORDER BY l.id",
            (email,),
        )
        return [(str(a), str(b)) for a, b in rows]

    def runs(self, email: str) -> list[tuple[str, str, str, str]]:
        """(workflow, key, state, step) of each of the contact's runs, oldest first."""
        rows = self.db.conn.execute(
            "SELECT r.workflow, r.key, r.state, r.step FROM workflow_runs r JOIN contacts c ON c.id = r.contact_id "
            "WHERE c.email = ? ORDER BY r.id",
            (email,),
        )
        return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    def history(self, email: str) -> list[tuple[str, str]]:
        """(step, result) of everything the contact's runs did, in order."""
        rows = self.db.conn.execute(
            "SELECT s.step, s.result FROM workflow_steps s JOIN workflow_runs r ON r.id = s.run_id "
            "JOIN contacts c ON c.id = r.contact_id WHERE c.email = ? ORDER BY s.id",
            (email,),
        )
        return [(str(a), str(b)) for a, b in rows]

    def contact(self, email: str) -> dict[str, Any]:
        row = self.db.conn.execute("SELECT id, tags, fields FROM contacts WHERE email = ?", (email,)).fetchone()
        lists = self.db.conn.execute(
            "SELECT list, status FROM subscriptions WHERE contact_id = ? ORDER BY list", (row[0],)
        ).fetchall()
        return {"tags": json.loads(row[1]), "fields": json.loads(row[2]), "lists": dict(lists)}


def instant(text: str) -> datetime:
    return parse_instant(text)
