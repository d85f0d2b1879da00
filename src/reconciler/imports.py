"""Importing contacts from CSV or JSONL: normalise, validate, type, de-duplicate, and report every bad row.

A file is streamed in batches, each one transaction, so a million rows need neither a million rows of memory nor
one enormous transaction. Good rows are imported even when others are bad; each bad row is reported with its line.
"""

from __future__ import annotations

import csv
import os
import signal
import threading
from collections.abc import Callable, Collection, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from reconciler import strictjson
from reconciler.audience import blocking_for
from reconciler.clock import iso
from reconciler.errors import ReconcilerError, did_you_mean
from reconciler.import_columns import (
    EVIDENCE,
    STATUS,
    STATUS_WORDS,
    Columns,
    ImportFileError,
    column_key,
    file_encoding,
    parse_maps,
    sniff_delimiter,
    status_of,
)
from reconciler.rows import RowParser, RowProblems
from reconciler.spec import DesiredState
from reconciler.spec.documents import marketing_lists
from reconciler.state.contacts import (
    BatchResult,
    ContactRow,
    contacts_of_import,
    finish_import,
    import_batch,
    start_import,
)
from reconciler.state.db import roll_back_cut_off
from reconciler.state.postgres import StateDatabase
from reconciler.words import count

__all__ = ["BATCH_ROWS", "ImportFileError", "ImportInterrupted", "ImportReport", "import_file"]

BATCH_ROWS = 10_000
PARALLEL_FROM_BYTES = 2_000_000
"""Files larger than this are parsed and validated by worker processes while this one writes."""


@dataclass(frozen=True)
class BadRow:
    """A row that was not imported: its line, and every problem it has (`field: what is wrong`)."""

    line: int
    problems: tuple[str, ...]

    @property
    def message(self) -> str:
        return "; ".join(self.problems)


@dataclass
class ImportReport(BatchResult):
    """The batches' totals, with the rows read and the rows refused."""

    file: str = ""
    rows: int = 0
    bad: list[BadRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """How the file was read: its delimiter when not a comma, the export recognised and what its columns became."""

    def summary(self) -> str:
        parts = [count(self.rows, "row"), f"{self.created:,} new", f"{self.updated:,} updated"]
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicates merged")
        parts.append(f"{len(self.bad)} rejected")
        if self.subscribed or self.kept_out:
            parts.append(f"{count(self.subscribed, 'subscription')} added")
        kept = ", ".join(f"{reason} {count}" for reason, count in sorted(self.kept_out.items()))
        if kept:
            parts.append(f"not resubscribed: {kept}")
        statuses = ", ".join(f"{status} {count}" for status, count in sorted(self.statuses.items()))
        if statuses:
            parts.append(f"by status: {statuses}")
        if self.skipped_erased:
            parts.append(f"{self.skipped_erased} erased on request (not stored)")
        return f"{self.file}: " + ", ".join(parts)


@contextmanager
def open_rows(
    path: Path, *, fields: Collection[str], maps: Mapping[str, str]
) -> Iterator[tuple[Columns, Iterator[tuple[int, dict[str, Any] | str]]]]:
    """(how the columns map to fields, rows as (line, mapping)); a row that cannot be read is a message. A CSV's
    delimiter is the one its header uses (comma, semicolon, tab or pipe)."""
    with path.open(newline="", encoding=file_encoding(path)) as handle:
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            yield Columns.for_jsonl(maps, fields), _jsonl(handle)
            return
        delimiter = sniff_delimiter(handle.readline())
        handle.seek(0)
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = [column.strip() for column in next(reader)]
        except StopIteration:
            raise ImportFileError(f"{path}: the file is empty") from None
        except csv.Error as exc:
            raise ImportFileError(f"{path}: the first row is not a CSV header: {_csv_problem(exc)}") from None
        columns = Columns.for_header(header, maps=maps, fields=fields, file=str(path), delimiter=delimiter)
        if "email" not in columns.targets.values():
            raise ImportFileError(
                f"{path}: no email column (the first row must name the columns, one of them email; "
                "--map 'COLUMN=email' names another)"
            )
        yield columns, _csv_rows(reader, header)


def _csv_problem(exc: csv.Error) -> str:
    text = str(exc)
    if "field limit" in text:
        return f"a cell is longer than {csv.field_size_limit():,} characters"
    if "NUL" in text:
        return "contains a NUL byte (is the file UTF-16 without a byte order mark? save it as UTF-8)"
    return f"not readable as CSV: {text}"


def _csv_rows(reader: Any, header: list[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    line = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield line, _csv_problem(exc)
            line = reader.line_num + 1
            continue
        if cells and any(cell.strip() for cell in cells):
            if len(cells) != len(header):
                yield line, f"{len(cells)} cells where the header has {len(header)} columns"
            else:
                yield line, dict(zip(header, cells, strict=True))
        line = reader.line_num + 1


def _jsonl(handle: Any) -> Iterator[tuple[int, dict[str, Any] | str]]:
    for number, text in enumerate(handle, start=1):
        if not text.strip():
            continue
        try:
            value = strictjson.loads(text)
        except strictjson.JsonInputError as exc:
            yield number, str(exc)
            continue
        if not isinstance(value, dict):
            yield number, 'not a JSON object (each line holds one contact: {"email": ...})'
            continue
        row = {column_key(str(key)): item for key, item in value.items()}
        if len(row) < len(value):
            yield number, "a key is repeated (keys are field names, whatever their case)"
            continue
        yield number, row


class ImportInterrupted(ReconcilerError):
    """Ctrl-C stopped an import: the message says what was saved and that running it again is safe."""


def import_file(
    db: StateDatabase,
    desired: DesiredState,
    path: Path,
    *,
    lists: list[str],
    consent_text: str | None,
    now: datetime,
    preconfirmed: bool = False,
    maps: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import every good row of `path`; report each bad one with its line. Subscribing to a double opt-in list
    needs `preconfirmed`: the people confirmed elsewhere (each consent record says so); an import never mails
    confirmation requests. `maps`: `--map SOURCE=FIELD` options. Ctrl-C raises ImportInterrupted once the batch
    being written is rolled back."""
    unknown = [name for name in lists if name not in desired.lists]
    if unknown:
        raise ImportFileError(
            f"unknown list {unknown[0]!r} ({did_you_mean(unknown[0], desired.lists, otherwise='declare it in spec/')})"
        )
    double = [name for name in lists if desired.lists[name].opt_in == "double"]
    parser = RowParser.for_workspace(desired)
    mapped = parse_maps(maps, parser.fields)
    if not path.is_file():
        raise ImportFileError(f"{path}: no such file")
    report = ImportReport(file=path.name)
    at = iso(now)
    import_id: int | None = None
    chunks: Generator[tuple[list[ContactRow], list[BadRow]]] | None = None
    try:
        with _interrupts_noted() as noted, open_rows(path, fields=parser.fields, maps=mapped) as (columns, rows):
            if double and not preconfirmed and STATUS_WORDS.get(columns.implied_status or "") is None:
                raise _unconfirmed(double)
            report.notes = list(columns.notes)
            import_id = start_import(db, file=path.name, at=at)
            chunks = _parsed_chunks(parser, columns, rows, parallel=path.stat().st_size > PARALLEL_FROM_BYTES)
            _import_rows(
                db,
                report,
                chunks,
                import_id=import_id,
                at=at,
                lists=[(name, blocking_for(desired.lists, [name])) for name in lists],
                marketing=marketing_lists(desired.lists),
                consent_text=consent_text,
                preconfirmed=double,
                progress=progress,
                noted=noted,
            )
    except KeyboardInterrupt:
        _ignore_further_interrupts()  # an impatient second Ctrl-C must not cut the cleanup short
        if chunks is not None:
            chunks.close()  # its worker processes stop now, not at exit
        raise ImportInterrupted(_interrupted(db, report, import_id, at=at)) from None
    _finish(db, report, import_id, at=at)
    return report


def _finish(db: StateDatabase, report: ImportReport, import_id: int, *, at: str, interrupted: bool = False) -> None:
    """The import's record, with its figures (an interrupted one: what was saved)."""
    finish_import(
        db,
        import_id,
        at=at,
        rows=report.rows,
        created=report.created,
        updated=report.updated,
        rejected=len(report.bad),
        file=report.file,
        interrupted=interrupted,
    )


def _unconfirmed(double: list[str]) -> ImportFileError:
    """Subscribing to a double opt-in list by import (a file whose rows may subscribe) needs --preconfirmed."""
    return ImportFileError(
        f"{', '.join(double)} {'is a double opt-in list' if len(double) == 1 else 'are double opt-in lists'}: "
        "an import does not send confirmation requests, so it subscribes only people who confirmed elsewhere; "
        "if they did, add --preconfirmed (each consent record says so), otherwise let them subscribe through "
        "the form or the API"
    )


def _import_rows(
    db: StateDatabase,
    report: ImportReport,
    chunks: Iterator[tuple[list[ContactRow], list[BadRow]]],
    *,
    import_id: int,
    at: str,
    lists: list[tuple[str, tuple[str, ...]]],
    marketing: list[str],
    consent_text: str | None,
    preconfirmed: list[str],
    progress: Callable[[int], None] | None,
    noted: list[int],
) -> None:
    """Write the parsed rows in batches of BATCH_ROWS, each one transaction. A Ctrl-C that `noted` holds but that
    raised nothing here (Python drops an exception raised in a finalizer) stops the import after the batch."""
    batch: list[ContactRow] = []

    def flush() -> None:
        report.add(
            import_batch(
                db,
                batch,
                import_id=import_id,
                at=at,
                lists=lists,
                source=f"import:{report.file}",
                consent_text=consent_text,
                preconfirmed=preconfirmed,
                marketing=marketing,
            )
        )
        batch.clear()
        if progress:
            progress(report.rows)
        if noted:
            raise KeyboardInterrupt

    try:
        for parsed, bad in chunks:
            report.bad += bad
            report.rows += len(parsed) + len(bad)
            batch += parsed
            if len(batch) >= BATCH_ROWS:
                flush()
        if batch:
            flush()
    finally:
        if isinstance(chunks, Generator):
            chunks.close()  # stops the worker processes at once when this ends early


def _interrupted(db: StateDatabase, report: ImportReport, import_id: int | None, *, at: str) -> str:
    """What an interrupted import saved, said so that the person knows what to do next."""
    roll_back_cut_off(db)  # Ctrl-C between BEGIN and the batch's own rollback
    if import_id is None:
        return f"{report.file}: interrupted before anything was written; run the same command to import it"
    saved = contacts_of_import(db, import_id)
    _finish(db, report, import_id, at=at, interrupted=True)
    return (
        f"{report.file}: interrupted; {saved:,} contacts of it were saved, in whole batches of {BATCH_ROWS:,} rows, "
        "and nothing of the rows after them (a batch cut off while being written is rolled back). Running the same "
        "command again is safe: rows already imported are updated, not duplicated, and nobody is subscribed twice"
    )


@contextmanager
def _interrupts_noted() -> Iterator[list[int]]:
    """Ctrl-C raises KeyboardInterrupt wherever the main thread is, as by default, and is also noted in the list
    yielded: when it lands in a finalizer (a connection's or a pipe's `__del__`), Python prints the exception and
    drops it, and the import would go on to the end as if nobody had asked it to stop."""
    noted: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return

    def note(signum: int, frame: Any) -> None:
        noted.append(signum)
        if len(noted) == 1:  # an impatient second Ctrl-C must not cut the cleanup short
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, note)
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN if noted else previous)


def _ignore_further_interrupts() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ignore_sigint() -> None:
    """In a worker: Ctrl-C on a terminal reaches every process of the group; only the importing one answers it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """While a worker process starts (it inherits this), so that it never sees Ctrl-C before it ignores it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _parse_chunk(
    parser: RowParser, columns: Columns, chunk: list[tuple[int, dict[str, Any] | str]]
) -> tuple[list[ContactRow], list[BadRow]]:
    """Every row of a chunk as a ContactRow, or as a BadRow naming every problem it has."""
    parsed: list[ContactRow] = []
    bad: list[BadRow] = []
    status_column = STATUS not in parser.fields
    for line, raw in chunk:
        if isinstance(raw, str):
            bad.append(BadRow(line, (raw,)))
            continue
        row, problems = columns.apply(raw)
        evidence = row.pop(EVIDENCE, None)
        status = None
        if status_column and STATUS in row:
            try:
                status = status_of(row.pop(STATUS))
            except ValueError as exc:
                problems.append(f"status: {exc}")
        try:
            contact = parser.parse(row, status=status, evidence=evidence)
        except RowProblems as exc:
            problems[:0] = exc.problems
        if problems:
            bad.append(BadRow(line, tuple(problems)))
        else:
            parsed.append(contact)
    return parsed, bad


def _chunks(rows: Iterator[tuple[int, dict[str, Any] | str]]) -> Iterator[list[tuple[int, dict[str, Any] | str]]]:
    chunk: list[tuple[int, dict[str, Any] | str]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= BATCH_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _parsed_chunks(
    parser: RowParser, columns: Columns, rows: Iterator[tuple[int, dict[str, Any] | str]], *, parallel: bool
) -> Generator[tuple[list[ContactRow], list[BadRow]]]:
    """Parsed rows in file order; a large file is parsed by worker processes (validation is the CPU-bound part)."""
    workers = min(2, os.cpu_count() or 1)
    if not parallel or workers < 2:
        for chunk in _chunks(rows):
            yield _parse_chunk(parser, columns, chunk)
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_ignore_sigint)
    try:
        pending: list[Future[tuple[list[ContactRow], list[BadRow]]]] = []
        for number, chunk in enumerate(_chunks(rows)):
            if number < workers:  # each of the first submits may start a worker process
                with _sigint_ignored():
                    pending.append(pool.submit(_parse_chunk, parser, columns, chunk))
            else:
                pending.append(pool.submit(_parse_chunk, parser, columns, chunk))
            if len(pending) > 2 * workers:  # a bounded window keeps memory flat on any file size
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
