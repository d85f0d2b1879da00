"""`reconciler state migrate --to postgresql://…`: a SQLite state, made through the real commands, copied into an
empty PostgreSQL database (the session's throwaway cluster) and verified; a target that holds anything refused
untouched; a copy that differs on its way in (a trigger in the target changing or dropping rows, JSON PostgreSQL
does not read, a row breaking a foreign key) rolled back, leaving the target empty. The checksum's normalisation
is tested on its own, without a server."""

from __future__ import annotations

import math
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import pg_cluster
from conftest import EXAMPLE_FOLDERS, REPO, reconciler
from reconciler.state.contacts import ContactRow, import_batch, start_import
from reconciler.state.db import open_db, open_postgres, write
from reconciler.state.engagement import Engagement, record
from reconciler.state.postgres import PostgresDatabase
from reconciler.state.postgres_schema import RECORD
from reconciler.state.subscribers import insert_events
from reconciler.state.transfer import Checksum, row_text
from reconciler.state.typed_values import TYPED_TABLES

pytestmark = pytest.mark.sqlite_only("`state migrate` copies a SQLite file (its PostgreSQL side: in the SQLite pass)")

NOW = "2030-11-26T12:00:00Z"
BOUGHT = "2030-11-27T09:30:00Z"
PEOPLE = """email,first_name,last_name,total_spend,orders_count,favourite_roast,wholesale
ann@example.com,Ann,Ó'Brien,1234.5,3,light,false
bob@example.com,Bob,Smith,0.1,1,dark,true
zoe@example.com,Zoë,Łukasiewicz,99999999.99,12,medium,false
chen@example.com,陈,伟,,0,,
"""


# --- the checksum, without a server ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ((0.1 + 0.2,), (0.3,)),  # floats exactly: the last bit counts
        ((1,), (1.0,)),
        ((0.0,), (-0.0,)),
        ((None,), ("None",)),
        ((None,), ("",)),
        ((b"abc",), ("abc",)),
        ((b"",), ("",)),
        (('{"a": 1}',), ('{"a":1}',)),  # JSON text as stored, not as parsed
        (("é",), ("e\u0301",)),  # composed and decomposed: different text
        (("a", "b"), ("a, 'b'",)),  # a value's quotes never pass for a separator
        (("a", None), (None, "a")),
        (("x\x00",), ("x",)),
    ],
)
def test_the_checksum_tells_different_values_apart(one: tuple[Any, ...], other: tuple[Any, ...]) -> None:
    assert row_text(one) != row_text(other)
    first, second = Checksum(), Checksum()
    first.add([one])
    second.add([other])
    assert first.total != second.total


def test_the_checksum_reads_each_value_exactly_and_in_any_row_order() -> None:
    rows = [
        (1, 0.1, None, b"\x00\xff", "zoë 陈 \ud800 \x00"),
        (2, math.inf, "null", b"", "{}"),
        (3, 1e-300, "", None, ""),
    ]
    assert row_text(rows[0]) == repr(rows[0])
    assert float(row_text((0.1 + 0.2,))[1:-2]) == 0.1 + 0.2  # the digits read back as the same double
    assert row_text(rows[0]).encode()  # a lone surrogate is escaped: every row can be hashed
    forwards, backwards = Checksum(), Checksum()
    forwards.add(rows)
    backwards.add(reversed(rows))
    assert (forwards.rows, forwards.hex) == (backwards.rows, backwards.hex) == (3, forwards.hex)
    repeated, swapped = Checksum(), Checksum()
    repeated.add([*rows, rows[0]])
    swapped.add([(1, 0.1, None, b"", "{}"), (2, math.inf, "null", b"\x00\xff", "zoë 陈 \ud800 \x00"), rows[2]])
    assert repeated.total != forwards.total and swapped.total != forwards.total
    assert len(forwards.hex) == 32


# --- a realistic state, copied --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sent_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite state made through the commands: the example applied, four contacts imported (custom fields with
    floats, names beyond ASCII), a campaign sent to the outbox, an unsubscribe, a suppression; then events (with a
    revenue) and opens and clicks recorded through the state functions, as the web service records them."""
    root = tmp_path_factory.mktemp("sent")
    for folder in EXAMPLE_FOLDERS:
        shutil.copytree(REPO / folder, root / folder)
    (root / "people.csv").write_text(PEOPLE, encoding="utf-8")
    steps = [
        ("contacts", "import", "people.csv", "--list", "newsletter", "--list", "offers", "--preconfirmed"),
        ("contacts", "unsubscribe", "bob@example.com", "--list", "offers"),
        ("contacts", "suppress", "nobody@example.org", "--reason", "bounced"),
    ]
    for step in steps:
        done = reconciler(*step, cwd=root)
        assert done.returncode == 0, done.stderr
    campaign = root / "campaigns" / "guji-harvest-2030.yaml"
    goal = "status: scheduled\ngoal: {event: purchase, within: 7d, value: revenue}"
    campaign.write_text(campaign.read_text().replace("status: draft", goal))
    sent = reconciler("tick", "--now", NOW, cwd=root)
    assert "Campaign guji-harvest-2030: finished" in sent.stdout, sent.stdout + sent.stderr
    db = open_db(root / ".state" / "reconciler.db")
    try:
        purchase = ("ann@example.com", "purchase", BOUGHT, {"revenue": 19.99, "items": ["Guji"]}, "o-1")
        insert_events(db, [purchase], at=BOUGHT)
        ledger = [row_id for (row_id,) in db.execute("SELECT id FROM ledger ORDER BY id")]
        with write(db):
            record(db, [Engagement(ledger[0], "opened", NOW, country="PL"), Engagement(ledger[0], "clicked", NOW)])
    finally:
        db.close()
    return root


@pytest.fixture
def state_file(sent_state: Path, tmp_path: Path) -> Path:
    """A copy of the sent state's file, for one test."""
    copied = tmp_path / "reconciler.db"
    shutil.copy(sent_state / ".state" / "reconciler.db", copied)
    return copied


def _tables(db: Any) -> list[str]:
    if isinstance(db, PostgresDatabase):
        query = "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
    else:
        query = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1"
    return [str(name) for (name,) in db.execute(query)]


def _contents(db: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, in one order (sorted by their text)."""
    found = {}
    for table in _tables(db):
        rows = db.execute(f'SELECT * FROM "{table}"').fetchall()  # noqa: S608 - the names come from the catalog
        found[table] = sorted(rows, key=repr)
    return found


def _migrate(state: Path, url: str) -> Any:
    return reconciler("--state", str(state), "state", "migrate", "--to", url, cwd=state.parent)


@pytest.mark.postgresql
def test_a_sqlite_state_is_copied_verified_and_ready_for_new_rows(state_file: Path, postgres_url: str) -> None:
    migrated = _migrate(state_file, postgres_url)
    assert migrated.returncode == 0, migrated.stderr
    source, target = sqlite3.connect(state_file), open_postgres(postgres_url)
    try:
        expected, found = _contents(source), _contents(target)
        typed = {table: found.pop(table) for table in TYPED_TABLES}  # PostgreSQL's alone: filled, not copied
        assert sorted(found) == sorted(expected)
        for table, rows in expected.items():
            assert len(found[table]) == len(rows), table
            assert f"  {table} " in migrated.stdout and "verified" in migrated.stdout
        assert found == expected  # every value of every row, floats, JSON text and NULLs included
        for table in ("contacts", "ledger", "events", "engagement", "report_counts", "consent", "suppressions"):
            assert found[table], f"the state made for the test has no {table}"
        for table, values, document in (
            ("contacts", "contact_values", "fields"),
            ("events", "event_values", "properties"),
        ):
            (present,) = target.execute(
                f"SELECT count(*) FROM {table} t, jsonb_each(CAST(t.{document} AS jsonb)) AS j "  # noqa: S608
                "WHERE jsonb_typeof(j.value) <> 'null'"
            ).fetchone()
            assert len(typed[values]) == present > 0, values  # every non-null field and property, typed
        assert "Zoë" in {row[3] for row in found["contacts"]}
        assert {row[4] for row in found["report_counts"]} & {19.99}  # the revenue counted, as REAL, exactly
        _new_rows_get_new_ids(target)
    finally:
        source.close()
        target.close()
    assert f"{len(expected)} tables, " in migrated.stdout
    assert "every table's rows and checksum match" in migrated.stdout


def _new_rows_get_new_ids(db: PostgresDatabase) -> None:
    """Every identity's next value is past the ids copied; an import through the state functions adds a contact."""
    (largest,) = db.execute("SELECT max(id) FROM contacts").fetchone()
    import_id = start_import(db, file="later.csv", at=NOW)
    rows = [ContactRow.build("dora@example.com", {"first_name": "Dora"}, ["new"], {"total_spend": 0.5})]
    assert import_batch(db, rows, import_id=import_id, at=NOW, source="import:later.csv", consent_text=None).created
    (dora,) = db.execute("SELECT id FROM contacts WHERE email = 'dora@example.com'").fetchone()
    assert dora == largest + 1
    typed = db.execute("SELECT field, kind, number FROM contact_values WHERE contact_id = ?", (dora,)).fetchall()
    assert [(field, kind, float(number)) for field, kind, number in typed] == [("total_spend", "number", 0.5)]
    identities = db.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND is_identity = 'YES'"
    ).fetchall()
    assert len(identities) >= 10
    for table, column in identities:
        largest_id = f'SELECT coalesce(max("{column}"), 0) FROM "{table}"'  # noqa: S608 - catalog names
        (top,) = db.execute(largest_id).fetchone()
        (following,) = db.execute("SELECT nextval(pg_get_serial_sequence(?, ?))", (table, column)).fetchone()
        assert following > top, table


def _catalog(db: PostgresDatabase) -> dict[str, set[tuple[Any, ...]]]:
    """What a state's schema is made of on PostgreSQL beyond its columns: each constraint and index by its own
    definition, each trigger with whether it is enabled."""
    return {
        "constraints": set(
            db.execute(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE connamespace = current_schema()::regnamespace"
            ).fetchall()
        ),
        "indexes": set(db.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()")),
        "triggers": set(db.execute("SELECT tgname, tgenabled FROM pg_trigger WHERE NOT tgisinternal").fetchall()),
    }


@pytest.mark.postgresql
def test_the_copy_has_the_schema_a_new_state_has(
    state_file: Path, postgres_url: str, postgres_cluster: pg_cluster.Cluster
) -> None:
    """The indexes, keys, JSON and typed-value triggers set aside during the load are all back, as the migrations
    made them."""
    assert _migrate(state_file, postgres_url).returncode == 0
    fresh_url = postgres_cluster.database()
    try:
        copied, fresh = open_postgres(postgres_url), open_postgres(fresh_url)
        try:
            expected = _catalog(fresh)
            assert len(expected["indexes"]) >= 30 and len(expected["triggers"]) == 8  # JSON checks, typed values
            assert _catalog(copied) == expected
            with pytest.raises(Exception, match="not valid JSON"), write(copied):
                copied.execute("UPDATE contacts SET fields = 'not json' WHERE id = 1")
        finally:
            copied.close()
            fresh.close()
    finally:
        postgres_cluster.drop(fresh_url)


@pytest.mark.postgresql
def test_a_target_holding_anything_is_refused_and_left_as_it_was(
    state_file: Path, postgres_url: str, postgres_cluster: pg_cluster.Cluster
) -> None:
    assert _migrate(state_file, postgres_url).returncode == 0
    target = open_postgres(postgres_url)
    try:
        before = _contents(target)
        again = _migrate(state_file, postgres_url)
        assert again.returncode == 1
        assert "is not empty: it holds a state (" in again.stderr and "contacts" in again.stderr
        assert "nothing was changed" in again.stderr and "createdb" in again.stderr
        assert _contents(target) == before
    finally:
        target.close()
    other_url = postgres_cluster.database()  # another application's database: not a single table is added
    try:
        other = open_postgres(other_url, migrate=False)
        try:
            other.execute("CREATE TABLE users (id BIGINT)")
            refused = _migrate(state_file, other_url)
            assert refused.returncode == 1
            assert "tables that are not a reconciler state's (users)" in refused.stderr, refused.stderr
            assert _tables(other) == ["users"]
        finally:
            other.close()
    finally:
        postgres_cluster.drop(other_url)


@pytest.mark.postgresql
def test_the_source_must_be_sqlite_and_the_target_postgresql(state_file: Path, postgres_url: str) -> None:
    pg_state = "postgresql://mailer:hunter2@db.example/mail"
    wrong = reconciler("--state", pg_state, "state", "migrate", "--to", postgres_url, cwd=state_file.parent)
    assert wrong.returncode == 1, wrong.stderr
    assert "PostgreSQL already (postgresql://mailer@db.example/mail)" in wrong.stderr and "hunter2" not in wrong.stderr
    usage = _migrate(state_file, str(state_file.with_name("other.db")))
    assert usage.returncode == 2 and "not a PostgreSQL database" in usage.stderr
    secret = postgres_url.replace("?", "?password=hunter2&", 1)  # the trust cluster ignores it; it is never shown
    shown = _migrate(state_file, secret)
    assert shown.returncode == 0, shown.stderr
    assert "hunter2" not in shown.stdout + shown.stderr and "password" not in shown.stdout + shown.stderr


TAMPER = """
CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF {condition} THEN {action}; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tamper BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION tamper();
"""


@pytest.mark.postgresql
@pytest.mark.parametrize(
    ("table", "condition", "action", "said"),
    [
        ("contacts", "NEW.email = 'bob@example.com'", "NEW.first_name := 'Robert'", "contacts (as many rows, 4, but"),
        ("contacts", "NEW.email = 'bob@example.com'", "NEW.fields := '{}'", "contacts (as many rows, 4, but"),
        ("report_counts", "NEW.value = 19.99", "NEW.value := 19.990000000000002", "report_counts (as many rows"),
        ("audit", "NEW.id = 2", "RETURN NULL", "audit ({audit} rows in SQLite, {fewer} in PostgreSQL)"),
    ],
)
def test_a_copy_that_differs_is_rolled_back(
    state_file: Path, postgres_url: str, table: str, condition: str, action: str, said: str
) -> None:
    """A trigger in the target (left there by someone) changes or drops a row on its way in: the verification
    finds the table, and the target is left as empty as the migrations made it."""
    target = open_postgres(postgres_url)
    try:
        target.conn.run_script(TAMPER.format(table=table, condition=condition, action=action))
        fresh = _contents(target)
        failed = _migrate(state_file, postgres_url)
        assert failed.returncode == 1
        with sqlite3.connect(state_file) as source:
            (audit,) = source.execute("SELECT count(*) FROM audit").fetchone()
        said = said.format(audit=audit, fewer=audit - 1)
        assert said in failed.stderr and "rolled back" in failed.stderr, failed.stderr
        assert _contents(target) == fresh and not target.execute("SELECT 1 FROM contacts").fetchall()
        assert _catalog(target)["triggers"] >= {("contacts_json_insert", "O"), ("tamper", "O")}
        assert "verified" not in failed.stdout
    finally:
        target.close()


@pytest.mark.postgresql
def test_rows_postgresql_refuses_stop_the_copy_naming_them(state_file: Path, postgres_url: str) -> None:
    source = sqlite3.connect(state_file, isolation_level=None)
    (bob,) = source.execute("SELECT id FROM contacts WHERE email = 'bob@example.com'").fetchone()
    source.execute("UPDATE contacts SET fields = ? WHERE id = ?", ('{"note": "a\\u0000b"}', bob))  # SQLite: valid
    source.close()
    refused = _migrate(state_file, postgres_url)
    assert refused.returncode == 1
    assert f"table contacts: JSON that PostgreSQL does not read (rows {bob};" in refused.stderr, refused.stderr
    source = sqlite3.connect(state_file, isolation_level=None)
    source.execute("UPDATE contacts SET fields = '{}' WHERE id = ?", (bob,))
    source.execute("INSERT INTO workflow_steps(run_id, step, at, result) VALUES (999, 'x', ?, 'sent')", (NOW,))
    source.close()  # a row whose run is gone: SQLite did not check (foreign keys were off), PostgreSQL does
    broken = _migrate(state_file, postgres_url)
    assert broken.returncode == 1
    assert "break a constraint" in broken.stderr and "workflow_steps" in broken.stderr, broken.stderr
    target = open_postgres(postgres_url)
    try:
        assert target.execute(f"SELECT count(*) FROM {RECORD}").fetchone()[0] > 0  # noqa: S608 - migrated, no more
        assert all(not rows for table, rows in _contents(target).items() if table != RECORD)
    finally:
        target.close()
