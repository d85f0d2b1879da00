"""Importing contacts from CSV or JSONL: normalise, validate, type, de-duplicate, and report every bad row.

A file is streamed in batches, each one transaction, so a million rows need neither a million rows of memory nor
one enormous transaction. Good rows are imported even when others are bad; each bad row is reported with its line.
"""

from __future__ import annotations

import codecs
import csv
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from reconciler import strictjson
from reconciler.audience import blocking_for
from reconciler.clock import iso
from reconciler.errors import ReconcilerError, did_you_mean
from reconciler.rows import RowParser
from reconciler.spec import DesiredState
from reconciler.state.contacts import BatchResult, ContactRow, finish_import, import_batch, start_import

BATCH_ROWS = 10_000
PARALLEL_FROM_BYTES = 2_000_000
"""Files larger than this are parsed and validated by worker processes while this one writes."""


class ImportFileError(ReconcilerError):
    """The file as a whole cannot be imported (unknown columns, no email column, unreadable)."""


@dataclass(frozen=True)
class BadRow:
    line: int
    message: str


@dataclass
class ImportReport(BatchResult):
    """The batches' totals, with the rows read and the rows refused."""

    file: str = ""
    rows: int = 0
    bad: list[BadRow] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.rows} rows", f"{self.created} new", f"{self.updated} updated"]
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicates merged")
        parts.append(f"{len(self.bad)} rejected")
        if self.subscribed or self.kept_out:
            parts.append(f"{self.subscribed} subscriptions added")
        kept = ", ".join(f"{reason} {count}" for reason, count in sorted(self.kept_out.items()))
        if kept:
            parts.append(f"not resubscribed: {kept}")
        if self.skipped_erased:
            parts.append(f"{self.skipped_erased} erased on request (not stored)")
        return f"{self.file}: " + ", ".join(parts)


def check_columns(parser: RowParser, columns: list[str], file: str) -> None:
    """A CSV header names known fields, each once, one of them email."""
    unknown = [c for c in columns if c not in parser.fields]
    if unknown:
        hints = [f"{c!r} ({did_you_mean(c, parser.fields, otherwise='not a field')})" for c in unknown]
        raise ImportFileError(
            f"{file}: unknown column{'s' * (len(unknown) > 1)} {', '.join(hints)}; columns are field names: "
            f"{', '.join(sorted(parser.fields))} (declare a custom one as a Field in spec/)"
        )
    repeated = next((c for c in columns if columns.count(c) > 1), None)
    if repeated is not None:
        where = ", ".join(str(n) for n, c in enumerate(columns, start=1) if c == repeated)
        raise ImportFileError(
            f"{file}: repeated column {repeated!r} (columns {where}); keep one: the import would silently use the last"
        )
    if "email" not in columns:
        raise ImportFileError(f"{file}: no email column (the first row must name the columns, one of them email)")


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def file_encoding(path: Path) -> str:
    """The encoding its byte order mark names (UTF-8, UTF-16 or UTF-32), else UTF-8 once every byte was checked:
    a file that is not is refused, naming its first bad line, before anything is written."""
    with path.open("rb") as handle:
        head = handle.read(4)
        encoding = next((name for bom, name in _BOMS if head.startswith(bom)), "utf-8")
        if encoding == "utf-8" and b"\0" in head[:2]:
            raise ImportFileError(f"{path}: looks like UTF-16 without a byte order mark: save the file as UTF-8")
        handle.seek(0)
        decoder, lines = codecs.getincrementaldecoder(encoding)(), 1
        while True:
            chunk = handle.read(1 << 20)
            try:
                lines += decoder.decode(chunk, final=not chunk).count("\n")
            except UnicodeDecodeError:
                if encoding == "utf-8":
                    lines = _first_bad_line(path)
                    raise ImportFileError(
                        f"{path}: line {lines} is not UTF-8 (saved as Latin-1?): save the file as UTF-8"
                    ) from None
                raise ImportFileError(f"{path}: not valid {encoding.upper()} after line {lines}") from None
            if not chunk:
                return encoding


def _first_bad_line(path: Path) -> int:
    """No byte of a multi-byte UTF-8 character is a line feed, so each line can be checked on its own."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


@contextmanager
def open_rows(path: Path) -> Iterator[tuple[list[str] | None, Iterator[tuple[int, dict[str, Any] | str]]]]:
    """(CSV header, rows as (line, mapping)) or for JSONL (None, rows); a row that cannot be read is a message."""
    with path.open(newline="", encoding=file_encoding(path)) as handle:
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            yield None, _jsonl(handle)
            return
        reader = csv.reader(handle)
        try:
            header = [column.strip().lower() for column in next(reader)]
        except StopIteration:
            raise ImportFileError(f"{path}: the file is empty") from None
        except csv.Error as exc:
            raise ImportFileError(f"{path}: the first row is not a CSV header: {_csv_problem(exc)}") from None
        yield header, _csv_rows(reader, header)


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
        row = {str(key).strip().lower(): item for key, item in value.items()}
        if len(row) < len(value):
            yield number, "a key is repeated (keys are field names, whatever their case)"
            continue
        yield number, row


def import_file(
    db: Database,
    desired: DesiredState,
    path: Path,
    *,
    lists: list[str],
    consent_text: str | None,
    now: datetime,
    preconfirmed: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import every good row of `path`; report each bad one with its line. Subscribing to a double opt-in list
    needs `preconfirmed`: the people confirmed elsewhere (each consent record says so); an import never mails
    confirmation requests."""
    unknown = [name for name in lists if name not in desired.lists]
    if unknown:
        raise ImportFileError(
            f"unknown list {unknown[0]!r} ({did_you_mean(unknown[0], desired.lists, otherwise='declare it in spec/')})"
        )
    double = [name for name in lists if desired.lists[name].opt_in == "double"]
    if double and not preconfirmed:
        raise ImportFileError(
            f"{', '.join(double)} {'is a double opt-in list' if len(double) == 1 else 'are double opt-in lists'}: "
            "an import does not send confirmation requests, so it subscribes only people who confirmed elsewhere; "
            "if they did, add --preconfirmed (each consent record says so), otherwise let them subscribe through "
            "the form or the API"
        )
    parser = RowParser.for_workspace(desired)
    if not path.is_file():
        raise ImportFileError(f"{path}: no such file")
    with open_rows(path) as (header, rows):
        if header is not None:
            check_columns(parser, header, str(path))
        report = ImportReport(file=path.name)
        at = iso(now)
        import_id = start_import(db, file=path.name, at=at)
        targets = [(name, blocking_for(desired.lists, [name])) for name in lists]
        batch: list[ContactRow] = []

        def flush() -> None:
            report.add(
                import_batch(
                    db,
                    batch,
                    import_id=import_id,
                    at=at,
                    lists=targets,
                    source=f"import:{path.name}",
                    consent_text=consent_text,
                    preconfirmed=double,
                )
            )
            batch.clear()
            if progress:
                progress(report.rows)

        for parsed, bad in _parsed_chunks(parser, rows, parallel=path.stat().st_size > PARALLEL_FROM_BYTES):
            report.bad += bad
            report.rows += len(parsed) + len(bad)
            batch += parsed
            if len(batch) >= BATCH_ROWS:
                flush()
        if batch:
            flush()
    finish_import(
        db,
        import_id,
        at=at,
        rows=report.rows,
        created=report.created,
        updated=report.updated,
        rejected=len(report.bad),
        file=path.name,
    )
    return report


def _parse_chunk(
    parser: RowParser, chunk: list[tuple[int, dict[str, Any] | str]]
) -> tuple[list[ContactRow], list[BadRow]]:
    parsed: list[ContactRow] = []
    bad: list[BadRow] = []
    for line, raw in chunk:
        if isinstance(raw, str):
            bad.append(BadRow(line, raw))
            continue
        try:
            parsed.append(parser.parse(raw))
        except ValueError as exc:
            bad.append(BadRow(line, str(exc)))
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
    parser: RowParser, rows: Iterator[tuple[int, dict[str, Any] | str]], *, parallel: bool
) -> Iterator[tuple[list[ContactRow], list[BadRow]]]:
    """Parsed rows in file order; a large file is parsed by worker processes (validation is the CPU-bound part)."""
    workers = min(2, os.cpu_count() or 1)
    if not parallel or workers < 2:
        for chunk in _chunks(rows):
            yield _parse_chunk(parser, chunk)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        pending: list[Future[tuple[list[ContactRow], list[BadRow]]]] = []
        for chunk in _chunks(rows):
            pending.append(pool.submit(_parse_chunk, parser, chunk))
            if len(pending) > 2 * workers:  # a bounded window keeps memory flat on any file size
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()
