"""A PostgreSQL state database behind the part of sqlite-utils' `Database` the state code uses.

`PostgresDatabase` has `execute(sql, params)`, `query(sql, params)` (rows as dicts) and a `.conn` with `execute`,
`executemany`, `in_transaction`, `close` and `interrupt`, like `sqlite_utils.Database` over a
`sqlite3.Connection`, so a function of `state/` can be given either. It holds one psycopg connection in autocommit
mode: as on SQLite (opened with ``isolation_level=None``), a statement outside ``BEGIN … COMMIT`` commits on its
own, and `state.db.write()`'s explicit ``BEGIN IMMEDIATE`` starts a transaction (with the writers' advisory lock:
`dialect.to_postgres`).

Each statement's text goes through `dialect.to_postgres` (cached per distinct text); parameters are passed as
SQLite's module takes them (a sequence for `?`, a mapping for `:name`), `True`/`False` as 1/0 as SQLite stores
them. A cursor answers `fetchone`, `fetchall`, `rowcount` and iteration as sqlite3's does, including after a
statement that returns no rows (None, []).

psycopg is imported when a connection is made, not before: SQLite users do not pay for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlite_utils import Database

from reconciler.jsonsql import TEXT_ARRAY
from reconciler.state.dialect import to_postgres
from reconciler.state.location import URL_SCHEMES, StateLocation, parse

if TYPE_CHECKING:
    import psycopg

Params = Sequence[Any] | Mapping[str, Any]
CONNECT_TIMEOUT = 10
"""Seconds a connection attempt may take when the location does not say (`connect_timeout`): libpq would wait for
an unreachable host as long as the system lets it, psycopg 130 s."""


def _adapted(params: Params | None) -> Sequence[Any] | Mapping[str, Any]:
    """Booleans as the integers SQLite stores them as; no parameters as an empty tuple (so that psycopg always
    reads `%%` as the literal `%` the translation made of `%`)."""
    if params is None:
        return ()
    if isinstance(params, Mapping):
        return {key: int(value) if isinstance(value, bool) else value for key, value in params.items()}
    return tuple(int(value) if isinstance(value, bool) else value for value in params)


@contextlib.contextmanager
def _ctrl_c_kept() -> Iterator[None]:
    """Ctrl-C as KeyboardInterrupt even when it lands while psycopg ends a pipeline (executemany sends its rows in
    one): psycopg then raises "cannot exit pipeline mode while busy" in its place, and an interrupted import would
    say "unexpected OperationalError" instead of what it saved."""
    import psycopg

    try:
        yield
    except psycopg.Error as error:
        if isinstance(error.__context__, KeyboardInterrupt):
            raise error.__context__ from None
        raise


class PostgresCursor:
    """What a statement returned, read as a sqlite3 cursor is."""

    def __init__(self, cursor: psycopg.Cursor[Any] | None) -> None:
        self._cursor = cursor
        """None: a statement that did not run (a ROLLBACK on a lost connection)."""

    @property
    def rowcount(self) -> int:
        return -1 if self._cursor is None else self._cursor.rowcount

    @property
    def description(self) -> Any:
        return None if self._cursor is None else self._cursor.description

    def fetchone(self) -> Any:
        return self._cursor.fetchone() if self._cursor is not None and self._cursor.description is not None else None

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall() if self._cursor is not None and self._cursor.description is not None else []

    def __iter__(self) -> Iterator[Any]:
        if self._cursor is not None and self._cursor.description is not None:
            yield from self._cursor


def _prepared(statement: str) -> bool | None:
    """psycopg prepares a statement run five times on a connection (None: as it decides), and PostgreSQL may then
    plan it once for any parameters. A statement that reads a list through `json_text_array` is planned with its
    values each time (False): its plan depends on which lists (`jsonsql.PostgresDialect.among`), and a plan made
    for any would call the function once per row."""
    return False if f"{TEXT_ARRAY}(" in statement else None


class PostgresConnection:
    """One psycopg connection, autocommit, answering as the sqlite3 connection the state code holds."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.raw = conn

    def execute(self, sql: str, params: Params | None = None) -> PostgresCursor:
        statements = to_postgres(sql)
        if statements[0].strip().upper() == "ROLLBACK" and (self.raw.closed or self.mid_statement):
            self.raw.close()  # a statement cut off takes no ROLLBACK: the server ends the transaction as it goes
            return PostgresCursor(None)  # the connection was lost, and its transaction with it: nothing to undo
        with _ctrl_c_kept():
            return self._execute(statements, params)

    def _execute(self, statements: tuple[str, ...], params: Params | None) -> PostgresCursor:
        cursor = self.raw.cursor()
        if len(statements) > 1:  # BEGIN IMMEDIATE: BEGIN, then the writers' lock, which may time out
            cursor.execute(statements[0])
            try:
                for statement in statements[1:]:
                    cursor.execute(statement, _adapted(params), prepare=_prepared(statement))
            except BaseException:
                if not self.raw.closed:
                    self.raw.execute("ROLLBACK")  # no half-begun transaction is left behind
                raise
            return PostgresCursor(cursor)
        cursor.execute(statements[0], _adapted(params), prepare=_prepared(statements[0]))
        return PostgresCursor(cursor)

    def executemany(self, sql: str, rows: Iterable[Params]) -> PostgresCursor:
        (statement,) = to_postgres(sql)
        cursor = self.raw.cursor()
        with _ctrl_c_kept():
            cursor.executemany(statement, [_adapted(row) for row in rows])
        return PostgresCursor(cursor)

    def run_script(self, script: str) -> None:
        """PostgreSQL's own SQL, run as it is (no translation, no parameters; several statements may follow each
        other): a function body in dollar quotes, what only PostgreSQL has."""
        self.raw.execute(script)  # without parameters, psycopg reads no placeholders in it

    @property
    def in_transaction(self) -> bool:
        """In a transaction (not on a lost connection: the server ended its transaction when it went)."""
        from psycopg.pq import TransactionStatus

        status = self.raw.info.transaction_status
        return status in (TransactionStatus.ACTIVE, TransactionStatus.INTRANS, TransactionStatus.INERROR)

    @property
    def mid_statement(self) -> bool:
        """A statement sent and its answer not read (a signal cut it off inside psycopg, which cancels only a
        statement it is waiting on), or executemany's pipeline left open by it: the connection refuses any other
        command ("another command is already in progress", "not allowed in pipeline mode")."""
        from psycopg.pq import PipelineStatus, TransactionStatus

        if self.raw.closed:
            return False
        in_pipeline = self.raw.pgconn.pipeline_status != PipelineStatus.OFF  # executemany's, left by the signal
        return in_pipeline or self.raw.info.transaction_status == TransactionStatus.ACTIVE

    def interrupt(self) -> None:
        """Cancel the statement running (a wait for the writers' lock), from another thread."""
        if self.raw.closed:
            return
        cancel = getattr(self.raw, "cancel_safe", None) or self.raw.cancel  # cancel_safe: psycopg 3.2 and later
        with contextlib.suppress(Exception):  # a connection lost meanwhile has nothing running to cancel
            cancel()

    def close(self) -> None:
        self.raw.close()


class PostgresDatabase:
    """The state on PostgreSQL, answering as `sqlite_utils.Database` does for what the state code uses.
    `reopen` makes a new connection like this one: `reconnect` uses it after the server closed the connection (a
    restart, a failover, a network cut), which only the daemon's loops ask for, between passes."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        reopen: Callable[[], psycopg.Connection[Any]] | None = None,
        *,
        place: StateLocation | None = None,
    ) -> None:
        self.conn = PostgresConnection(conn)
        self.reopen = reopen
        self.place = place
        """Where the database is, for messages (shown without its password)."""

    @property
    def lost(self) -> bool:
        """The connection is closed: the server ended it, or it broke."""
        return bool(self.conn.raw.closed)

    def reconnect(self) -> None:
        """A new connection in place of a lost one (psycopg's error when the server cannot be reached)."""
        if self.reopen is None:
            raise RuntimeError("this connection cannot be made again (it belongs to a pool)")
        self.conn.raw = self.reopen()

    def execute(self, sql: str, params: Params | None = None) -> PostgresCursor:
        return self.conn.execute(sql, params)

    def query(self, sql: str, params: Params | None = None) -> Iterator[dict[str, Any]]:
        """The rows of a statement as dicts by column name, as sqlite-utils' `Database.query` gives them: the
        statement runs at once, the rows are read as they are iterated."""
        cursor = self.conn.execute(sql, params)
        names = [column.name for column in cursor.description or ()]
        return (dict(zip(names, row, strict=True)) for row in cursor)

    def close(self) -> None:
        self.conn.close()


StateDatabase = Database | PostgresDatabase
"""A state database on either engine: what the migrations, and in time every function of `state/`, are given."""


def connect(conninfo: str, *, lock_timeout_ms: int) -> PostgresDatabase:
    """A connection to `conninfo` (a libpq URL or key=value string), autocommit; a wait for a lock (the writers'
    advisory lock included) fails after `lock_timeout_ms`, as SQLite's busy timeout does."""

    def reopen() -> psycopg.Connection[Any]:
        return raw_connect(conninfo, lock_timeout_ms=lock_timeout_ms)

    return PostgresDatabase(reopen(), reopen, place=located(conninfo))


def located(conninfo: str) -> StateLocation:
    """The location of a libpq URL or key=value string (as `--state` would name it)."""
    return parse(conninfo if conninfo.startswith(URL_SCHEMES) else "postgresql:" + conninfo)


def connection_options(conninfo: str) -> dict[str, Any]:
    """What every connection of the state is given besides `conninfo` (which overrides none of what it says):
    autocommit, the application name `pg_stat_activity` shows, a connect timeout when `conninfo` names none."""
    from psycopg.conninfo import conninfo_to_dict

    options: dict[str, Any] = {"autocommit": True, "fallback_application_name": "reconciler"}
    if "connect_timeout" not in conninfo_to_dict(conninfo):
        options["connect_timeout"] = CONNECT_TIMEOUT
    return options


def raw_connect(conninfo: str, *, lock_timeout_ms: int) -> psycopg.Connection[Any]:
    """One psycopg connection as the state uses it (`connection_options`, and `lock_timeout`)."""
    import psycopg

    conn = psycopg.connect(conninfo, **connection_options(conninfo))
    conn.execute(f"SET lock_timeout = {int(lock_timeout_ms)}")
    return conn
