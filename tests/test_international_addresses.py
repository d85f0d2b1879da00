"""Internationalised addresses: a domain beyond ASCII is sent in its IDNA (punycode) form, in the envelope and the
headers, and stored as people write it; a local part beyond ASCII would need SMTPUTF8, so it is refused on the way
in and never counted in an audience."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conftest import reconciler
from sending import parse, tick, workspace
from smtp_sink import Sink, SinkServer


def test_an_idn_domain_is_sent_as_punycode_and_stored_as_written(tmp_path: Path) -> None:
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        rows = "email,first_name\nada@bücher.example,Ada\nbob@XN--BCHER-KVA.example,Bob\nzoë@example.org,Zoë\n"
        (root / "c.csv").write_text(rows, encoding="utf-8")
        imported = reconciler("contacts", "import", "c.csv", "--list", "news", cwd=root)
        assert imported.returncode == 1 and "c.csv:4: email" in imported.stderr and "SMTPUTF8" in imported.stderr
        tick(root)
    assert sorted(rcpt for rcpt, _ in sink.messages) == ["ada@xn--bcher-kva.example", "bob@xn--bcher-kva.example"]
    for rcpt, data in sink.messages:
        assert str(parse(data)["To"]).endswith(f"<{rcpt}>")
    with sqlite3.connect(root / ".state/reconciler.db") as db:
        stored = sorted(email for (email,) in db.execute("SELECT email FROM contacts"))
        states = db.execute("SELECT state, count(*) FROM ledger GROUP BY 1").fetchall()
    assert stored == ["ada@bücher.example", "bob@bücher.example"]
    assert states == [("sent", 2)]
