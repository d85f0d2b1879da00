"""Internationalised addresses: a domain beyond ASCII is sent in its IDNA (punycode) form, in the envelope and the
headers, and stored as people write it; a local part beyond ASCII would need SMTPUTF8, so it is refused on the way
in and never counted in an audience."""

from __future__ import annotations

from pathlib import Path

from conftest import reconciler
from sending import parse, tick, workspace
from smtp_sink import Sink, SinkServer
from state_helpers import connected


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
    with connected(root) as db:
        stored = sorted(email for (email,) in db.execute("SELECT email FROM contacts"))
        states = db.execute("SELECT state, count(*) FROM ledger GROUP BY 1").fetchall()
    assert stored == ["ada@bücher.example", "bob@bücher.example"]
    assert states == [("sent", 2)]


def test_a_local_part_beyond_ascii_an_older_version_stored_fails_once_with_the_reason(tmp_path: Path) -> None:
    """Refused on the way in now, but an older version stored such addresses: the message fails at send time with a
    sentence that says why, its row is settled (never retried, not even a day later) and the campaign finishes."""
    sink = Sink()
    with SinkServer(sink) as port:
        root = workspace(tmp_path, port)
        (root / "c.csv").write_text("email\nada@example.org\n", encoding="utf-8")
        assert reconciler("contacts", "import", "c.csv", "--list", "news", cwd=root).returncode == 0
        with connected(root) as db:  # as an older version stored it
            db.execute(
                "INSERT INTO contacts(email, email_hash, created_at, updated_at) "
                "VALUES ('zoë@example.org', 'h-zoe', '2026-11-01', '2026-11-01')"
            )
            db.execute(
                "INSERT INTO subscriptions(contact_id, list, status, updated_at) "
                "SELECT id, 'news', 'subscribed', '2026-11-01' FROM contacts WHERE email = 'zoë@example.org'"
            )
        tick(root)
        first = _row_of(root, "zoë@example.org")
        tick(root, "2026-11-25T10:00:00Z")
        tick(root, "2026-11-27T10:00:00Z")
        later = _row_of(root, "zoë@example.org")
    assert [rcpt for rcpt, _ in sink.messages] == ["ada@example.org"]
    assert not any("@example.org" in rcpt and rcpt != "ada@example.org" for rcpt in sink.attempts)  # never offered
    state, reply, attempts, next_attempt_at = first
    assert state == "failed" and "SMTPUTF8" in str(reply), first
    assert int(str(attempts)) <= 1 and next_attempt_at is None, first
    assert later == first  # not tried again
    with connected(root) as db:
        assert db.execute("SELECT status FROM campaigns WHERE name = 'hello'").fetchone() == ("sent",)


def _row_of(root: Path, email: str) -> tuple[object, ...]:
    with connected(root) as db:
        row = db.execute(
            "SELECT l.state, l.last_reply, l.attempts, l.next_attempt_at FROM ledger l "
            "JOIN contacts c ON c.id = l.contact_id WHERE c.email = ?",
            (email,),
        ).fetchone()
    assert row is not None, f"no message for {email}"
    return tuple(row)
