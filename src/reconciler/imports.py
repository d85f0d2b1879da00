"""Importing contacts from CSV or JSONL: normalise, validate, type, de-duplicate, and report every bad row.

A file is streamed in batches, each one transaction, so a million rows need neither a million rows of memory nor
one enormous transaction. Good rows are imported even when others are bad; each bad row is reported with its line.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from email_validator import EmailNotValidError, validate_email
from sqlite_utils import Database

from reconciler.audience import blocking_for
from reconciler.clock import iso
from reconciler.errors import ReconcilerError, did_you_mean
from reconciler.spec import DesiredState
from reconciler.spec.contact import BUILTIN_FIELDS
from reconciler.state.contacts import BatchResult, ContactRow, finish_import, import_batch, start_import

BATCH_ROWS = 10_000
PARALLEL_FROM_BYTES = 2_000_000
"""Files larger than this are parsed and validated by worker processes while this one writes."""
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}


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


def normalise_email(raw: str) -> str:
    """Trimmed, syntax-checked (no DNS) and lowercased: one address, one contact."""
    text = raw.strip()
    if not text:
        raise ValueError("empty")
    try:
        checked = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{text!r} is not a valid email address: {exc}") from None
    return checked.normalized.lower()


def convert(value: Any, type_: str, *, timezone: str) -> Any:
    """One cell as the Field type says; raises ValueError with a sentence a marketer understands."""
    text = value.strip() if isinstance(value, str) else value
    if type_ == "string":
        return str(text)
    if type_ in ("number", "integer"):
        if isinstance(text, bool):
            raise ValueError(f"{value!r} is not a {type_}")
        try:
            number = float(str(text).replace(",", "")) if type_ == "number" else _integer(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a{'n' if type_ == 'integer' else ''} {type_}") from None
        if (type_ == "number" and number != number) or number in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} is not a finite number")
        return number
    if type_ == "boolean":
        if isinstance(text, bool):
            return text
        if str(text).lower() in _TRUE:
            return True
        if str(text).lower() in _FALSE:
            return False
        raise ValueError(f"{value!r} is not true or false")
    if type_ == "date":
        try:
            return date.fromisoformat(str(text)).isoformat()
        except ValueError:
            raise ValueError(f"{value!r} is not a date (write 2026-11-27)") from None
    if type_ == "datetime":
        try:
            moment = datetime.fromisoformat(str(text).replace("z", "Z"))
        except ValueError:
            raise ValueError(f"{value!r} is not a date-time (write 2026-11-27T09:00:00+01:00)") from None
        if moment.tzinfo is None:  # a naive time means the workspace's time zone
            moment = moment.replace(tzinfo=ZoneInfo(timezone))
        return iso(moment.astimezone(UTC))
    if type_ == "list":
        items = text if isinstance(text, list) else str(text).split(";")
        return [str(item).strip() for item in items if str(item).strip()]
    raise ValueError(f"unknown field type {type_}")


def _integer(text: Any) -> int:
    if isinstance(text, int):
        return text
    if isinstance(text, float) and text.is_integer():
        return int(text)
    return int(str(text).replace(",", ""))


@lru_cache(maxsize=1024)
def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ValueError, KeyError):
        return False
    return True


def _builtin(name: str, value: Any) -> str:
    text = str(value).strip()
    if name == "timezone":
        if not _known_zone(text):
            raise ValueError(f"{text!r} is not a time zone (write e.g. Europe/Warsaw)")
    elif name == "country":
        text = text.upper()
        if not _COUNTRY.match(text):
            raise ValueError(f"{value!r} is not a two-letter country code (write e.g. PL)")
    elif name == "locale" and not _LOCALE.match(text):
        raise ValueError(f"{value!r} is not a locale (write e.g. en-GB)")
    return text


class RowParser:
    """Turns one raw row (a mapping of column to value) into a ContactRow, per the workspace's fields."""

    def __init__(self, fields: Mapping[str, str], *, timezone: str) -> None:
        """`fields`: the custom fields and their types (the API passes what was last applied)."""
        self.fields = {**BUILTIN_FIELDS, **fields}
        self.custom = set(fields)
        self.timezone = timezone

    @classmethod
    def for_workspace(cls, desired: DesiredState) -> RowParser:
        return cls(
            {name: f.type for name, f in desired.fields.items()},
            timezone=desired.timezone,
        )

    def check_columns(self, columns: list[str], file: str) -> None:
        unknown = [c for c in columns if c not in self.fields]
        if unknown:
            hints = [f"{c!r} ({did_you_mean(c, self.fields, otherwise='not a field')})" for c in unknown]
            raise ImportFileError(
                f"{file}: unknown column{'s' * (len(unknown) > 1)} {', '.join(hints)}; columns are field names: "
                f"{', '.join(sorted(self.fields))} (declare a custom one as a Field in spec/)"
            )
        if "email" not in columns:
            raise ImportFileError(f"{file}: no email column (the first row must name the columns, one of them email)")

    def parse(self, raw: Mapping[str, Any]) -> ContactRow:
        try:
            email = normalise_email(str(raw.get("email") or ""))
        except ValueError as exc:
            raise ValueError(f"email: {exc}") from None
        builtins: dict[str, str] = {}
        fields: dict[str, Any] = {}
        tags: list[str] = []
        created_at = None
        for column, value in raw.items():
            if column not in self.fields:
                raise ValueError(
                    f"unknown field {column!r} ({did_you_mean(column, self.fields, otherwise='not a field')})"
                )
            if column == "email" or value is None or value == "" or value == []:
                continue
            try:
                if column == "tags":
                    tags = convert(value, "list", timezone=self.timezone)
                elif column == "created_at":
                    created_at = convert(value, "datetime", timezone=self.timezone)
                elif column in self.custom:
                    fields[column] = convert(value, self.fields[column], timezone=self.timezone)
                else:
                    builtins[column] = _builtin(column, value)
            except ValueError as exc:
                raise ValueError(f"{column}: {exc}") from None
        return ContactRow.build(email, builtins, tags, fields, created_at)


@contextmanager
def open_rows(path: Path) -> Iterator[tuple[list[str] | None, Iterator[tuple[int, dict[str, Any] | str]]]]:
    """(CSV header, rows as (line, mapping)) or for JSONL (None, rows); a row that cannot be read is a message."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            yield None, _jsonl(handle)
            return
        reader = csv.reader(handle)
        try:
            header = [column.strip().lower() for column in next(reader)]
        except StopIteration:
            raise ImportFileError(f"{path}: the file is empty") from None
        yield header, _csv_rows(reader, header)


def _csv_rows(reader: Any, header: list[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    line = reader.line_num + 1
    for cells in reader:
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
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, f"not JSON: {exc.msg} at column {exc.colno}"
            continue
        if not isinstance(value, dict):
            yield number, 'not a JSON object (each line holds one contact: {"email": ...})'
            continue
        yield number, {str(key).strip().lower(): item for key, item in value.items()}


def import_file(
    db: Database,
    desired: DesiredState,
    path: Path,
    *,
    lists: list[str],
    consent_text: str | None,
    now: datetime,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import every good row of `path`; report each bad one with its line."""
    unknown = [name for name in lists if name not in desired.lists]
    if unknown:
        raise ImportFileError(
            f"unknown list {unknown[0]!r} ({did_you_mean(unknown[0], desired.lists, otherwise='declare it in spec/')})"
        )
    parser = RowParser.for_workspace(desired)
    if not path.is_file():
        raise ImportFileError(f"{path}: no such file")
    with open_rows(path) as (header, rows):
        if header is not None:
            parser.check_columns(header, str(path))
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
