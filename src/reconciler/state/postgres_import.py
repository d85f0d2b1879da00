"""An import batch's contacts written on PostgreSQL: a few statements for the whole batch instead of one upsert per
row, with the results the one-row upserts give (SQLite keeps them: there a statement per row costs no round trip).

The batch's rows go to the server as one JSON text, an array of arrays read by `jsonb_array_elements` (objects
read by `json_to_recordset` were slower): psycopg sends each statement of an `executemany` on its own (pipelined,
but each parsed, planned and run), which made the upsert of a 10,000-row batch 2-2.5 times slower than this, and
adapting Python lists to PostgreSQL arrays (`unnest`) took longer than the statement itself. Per batch: the rows'
ids taken from the contacts' sequence, one per row in file order (as the one-row upserts took them: a row that
updates burns one too, so ids are what they were), then one upsert per *round*, then the typed rows of the
contacts written (`typed_values.later`).

A round holds at most one row per address, because ON CONFLICT DO UPDATE may not touch a row twice in one
statement: the first round the first row of each address, the second round the second rows, and so on, run in that
order, so that each later row of an address merges over the earlier as it did row by row (text fields kept where
it gives none, tags united, fields merged). A file rarely repeats an address: one round, almost always.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

from reconciler.state import typed_values
from reconciler.state.postgres import PostgresDatabase

_TYPES = {"id": "bigint", "import_id": "bigint"}
"""The type of each column as it comes out of the JSON rows, where it is not text."""


def upsert_batch(
    db: PostgresDatabase,
    columns: Sequence[str],
    merge: str,
    values: Sequence[Sequence[Any]],
    existing: Collection[str],
) -> None:
    """Inside the import's write: the rows `values` (each the values of `columns`, in file order) inserted into
    `contacts`, or merged into the row of the same address as `merge` says (the SET list of ON CONFLICT (email)),
    and their typed rows written. `existing`: the addresses of the batch the state held before it."""
    if not values:
        return
    email = columns.index("email")
    rounds: list[list[list[Any]]] = []
    seen: dict[str, int] = {}
    for contact_id, row in zip(_ids(db, len(values)), values, strict=True):
        nth = seen[row[email]] = seen.get(row[email], -1) + 1
        if nth == len(rounds):
            rounds.append([])
        rounds[nth].append([contact_id, *row])
    names = ["id", *columns]
    read = ", ".join(f"CAST(r.a->>{n} AS {_TYPES.get(name, 'text')})" for n, name in enumerate(names))
    statement = (
        f"INSERT INTO contacts ({', '.join(names)}) SELECT {read} "  # noqa: S608 - our column names
        "FROM jsonb_array_elements(CAST(? AS jsonb)) AS r(a) ORDER BY 1 "
        f"ON CONFLICT (email) DO UPDATE SET {merge} RETURNING id, email"
    )
    with typed_values.later(db) as written:
        for rows in rounds:
            text = json.dumps(rows, separators=(",", ":"))
            for contact_id, address in db.conn.execute(statement, (text,)):
                (written.changed if address in existing else written.made).add(contact_id)


def _ids(db: PostgresDatabase, count: int) -> list[int]:
    """`count` ids from the contacts' sequence, in the order it gave them (a row that only updates burns its own, as
    a one-row upsert does: the ids a later import gives are those it gave before)."""
    taken = db.conn.execute(
        "SELECT nextval(pg_get_serial_sequence('contacts', 'id')) FROM generate_series(1, CAST(? AS integer))",
        (count,),
    ).fetchall()
    return sorted(int(value) for (value,) in taken)
