"""How the columns of an import become fields: the CSV delimiter, `--map SOURCE=FIELD`, the `status` column, and
the exports of the tools people move in from (Mailchimp, listmonk, Brevo), recognised by their headers.

People bring files saved by Excel in Germany (semicolons), by spreadsheet "Unicode text" (tabs) and by other email
tools, whose headers name no field of ours ("Email Address", "FIRSTNAME"). Rather than refuse them, the header
decides the delimiter, a recognised export maps its own columns (and says so), and `--map` covers the rest. A
column nobody maps is still refused before anything is written: a typo must never drop a field silently.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler import strictjson
from reconciler.errors import ReconcilerError, did_you_mean

DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}

STATUS = "status"
"""The column that says where a person stands in the tool they come from (unless a Field is named so)."""

STATUS_WORDS: dict[str, str | None] = {
    "": None,
    "subscribed": None,
    "enabled": None,
    "active": None,
    "confirmed": None,
    "pending": "held",
    "unconfirmed": "held",
    "disabled": "held",
    "archived": "held",
    "unsubscribed": "unsubscribed",
    "blocklisted": "blocklisted",
    "blacklisted": "blocklisted",
    "cleaned": "bounced",
    "bounced": "bounced",
    "complained": "complained",
    "spam": "complained",
}
"""A status cell (case-insensitive) -> what the import does: None subscribe as usual; `held` store, do not subscribe;
`unsubscribed` from the --list lists (from everything without --list); `blocklisted` from everything; `bounced`,
`complained` suppress."""


class ImportFileError(ReconcilerError):
    """The file as a whole cannot be imported (unknown columns, a --map that names nothing, no email column,
    unreadable); nothing of it is written."""


def column_key(cell: str) -> str:
    """A header cell as a field name would be written: `First Name` and `first-name` are `first_name`."""
    return re.sub(r"[\s\-]+", "_", cell.strip().lower())


def sniff_delimiter(first_line: str) -> str:
    """The delimiter the header row uses most, outside quotes; a comma when it uses none (a one-column file)."""
    counts = dict.fromkeys(DELIMITERS, 0)
    quoted = False
    for char in first_line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(counts, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","


# --- the exports of other tools ------------------------------------------------------------------------------

NAME_SPLIT = "@name"
"""listmonk's one `name`: the first word becomes first_name, the rest last_name."""
QUOTED_TAGS = "@tags"
"""Mailchimp's TAGS cell: `"Customer","VIP"`."""
ATTRIBUTES = "@attributes"
"""listmonk's attributes, a JSON object: its keys that name a Field are imported, others are not."""
BLACKLISTED = "@blacklisted"
"""Brevo's blacklist flag: a true cell means unsubscribed from everything."""
EVIDENCE = "@evidence"
"""What the tool knew of a person's consent (when and from where they opted in, confirmed or left): written into
the consent record the import makes for them, as proof that outlives the tool. A target `@evidence:LABEL`."""


@dataclass(frozen=True)
class Export:
    """One tool's export: how to recognise its header (normalised keys) and what each of its columns becomes
    (a field, `status`, a transform above, or "" for a column we keep nothing of)."""

    title: str
    required: frozenset[str]
    any_of: frozenset[str]
    columns: Mapping[str, str]
    implied: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """A column whose presence says every row's status: (status word, what the file holds)."""
    upper_case: bool = False
    """Its headers are written in capitals (Brevo), which tells it from a hand-made file."""


_MAILCHIMP_IGNORED = [
    "address",
    "phone_number",
    "birthday",
    "member_rating",
    "latitude",
    "longitude",
    "gmtoff",
    "dstoff",
    "region",
    "last_changed",
    "leid",
    "euid",
    "notes",
    "unsub_campaign_title",
    "unsub_campaign_id",
    "unsub_reason_other",
    "clean_time",
    "clean_campaign_title",
    "clean_campaign_id",
]
_BREVO_IGNORED = [
    "contact_id",
    "sms",
    "whatsapp",
    "landline_number",
    "ext_id",
    "added_time",
    "modified_time",
    "double_opt_in",
    "opt_in",
    "sms_blacklisted",
    "list_ids",
]

EXPORTS = (
    Export(
        "a Mailchimp audience export",
        required=frozenset({"email_address"}),
        any_of=frozenset({"member_rating", "optin_time", "leid", "euid", "last_changed"}),
        columns={
            "email_address": "email",
            "first_name": "first_name",
            "last_name": "last_name",
            "cc": "country",
            "timezone": "timezone",
            "tags": QUOTED_TAGS,
            "optin_time": EVIDENCE + ":opted in",
            "optin_ip": EVIDENCE + ":from",
            "confirm_time": EVIDENCE + ":confirmed",
            "confirm_ip": EVIDENCE + ":from",
            "unsub_time": EVIDENCE + ":unsubscribed",
            "unsub_reason": EVIDENCE + ":reason",
            **dict.fromkeys(_MAILCHIMP_IGNORED, ""),
        },
        implied={"unsub_time": ("unsubscribed", "unsubscribed members"), "clean_time": ("cleaned", "cleaned members")},
    ),
    Export(
        "a listmonk subscribers export",
        required=frozenset({"uuid", "email", "name", "attributes", "status"}),
        any_of=frozenset(),
        columns={
            "uuid": "",
            "email": "email",
            "name": NAME_SPLIT,
            "attributes": ATTRIBUTES,
            "status": STATUS,
            "created_at": "",
            "updated_at": "",
        },
    ),
    Export(
        "a Brevo contacts export",
        required=frozenset({"email"}),
        any_of=frozenset({"firstname", "lastname", "prenom", "nom", "vorname", "nachname", "sms", "added_time"}),
        columns={
            "email": "email",
            **dict.fromkeys(("firstname", "prenom", "vorname"), "first_name"),
            **dict.fromkeys(("lastname", "nom", "nachname"), "last_name"),
            **dict.fromkeys(("email_blacklisted", "blacklisted"), BLACKLISTED),
            **dict.fromkeys(_BREVO_IGNORED, ""),
        },
        upper_case=True,
    ),
)


def recognise(header: Sequence[str]) -> Export | None:
    """The export whose columns this header has, if any."""
    keys = {column_key(cell) for cell in header}
    for export in EXPORTS:
        if not export.required <= keys or (export.any_of and not export.any_of & keys):
            continue
        if export.upper_case and not any(cell.strip() == "EMAIL" for cell in header):
            continue
        return export
    return None


# --- the plan for one file -----------------------------------------------------------------------------------


def parse_maps(maps: Sequence[str], fields: Collection[str]) -> dict[str, str]:
    """`--map SOURCE=FIELD` options (`SOURCE=` skips the column) -> {column key: target}."""
    targets = {*fields, STATUS}
    parsed: dict[str, str] = {}
    for option in maps:
        source, equals, target = option.rpartition("=")
        target = target.strip()
        if not equals or not source.strip():
            raise ImportFileError(
                f"--map {option!r}: write COLUMN=FIELD (e.g. --map 'Email Address=email'), or COLUMN= to skip it"
            )
        if target and target not in targets:
            hint = did_you_mean(target, targets, otherwise="fields: " + ", ".join(sorted(fields)))
            raise ImportFileError(f"--map {option!r}: unknown field {target!r} ({hint})")
        parsed[column_key(source)] = target
    return parsed


@dataclass(frozen=True)
class Columns:
    """What each column of a file becomes; applied to every row (in the worker that parses it)."""

    targets: Mapping[str, str]
    """Column as written in the file -> a field, `status`, a transform, or "" (skipped). JSONL keys not named here
    are taken as field names."""
    fields: frozenset[str]
    export: Export | None = None
    implied_status: str | None = None
    notes: tuple[str, ...] = ()

    @classmethod
    def for_jsonl(cls, maps: Mapping[str, str], fields: Collection[str]) -> Columns:
        return cls(dict(maps), frozenset(fields))

    @classmethod
    def for_header(
        cls, header: Sequence[str], *, maps: Mapping[str, str], fields: Collection[str], file: str, delimiter: str
    ) -> Columns:
        """Map every header cell, or refuse the file naming each column nobody maps (nothing is written yet)."""
        known = {*fields, STATUS}
        export = recognise(header)
        keys = [column_key(cell) for cell in header]
        repeated = next((key for key in keys if keys.count(key) > 1), None)
        if repeated is not None:
            where = ", ".join(str(n) for n, key in enumerate(keys, start=1) if key == repeated)
            raise ImportFileError(
                f"{file}: repeated column {repeated!r} (columns {where}); keep one: the import would silently use "
                "the last"
            )
        unused = [source for source in maps if source not in keys]
        if unused:
            hint = did_you_mean(unused[0], keys, otherwise="its columns: " + ", ".join(h.strip() for h in header))
            raise ImportFileError(f"{file}: --map names {unused[0]!r}, which is no column of the file ({hint})")
        targets: dict[str, str] = {}
        unknown: list[str] = []
        for cell, key in zip(header, keys, strict=True):
            if key in maps:
                targets[cell] = maps[key]
            elif export is not None and key in export.columns:
                targets[cell] = export.columns[key]
            elif key in known:
                targets[cell] = key
            else:
                unknown.append(cell.strip())
        if unknown:
            hints = [f"{c!r} ({did_you_mean(c, fields, otherwise='not a field')})" for c in unknown]
            raise ImportFileError(
                f"{file}: unknown column{'s' * (len(unknown) > 1)} {', '.join(hints)}; columns are field names: "
                f"{', '.join(sorted(fields))} (declare a custom one as a Field in spec/, map a column with "
                f"--map '{unknown[0]}=FIELD' or skip it with --map '{unknown[0]}=')"
            )
        _check_targets(targets, file)
        implied = next(
            (export.implied[k] for k in keys if export is not None and k in export.implied and k not in maps), None
        )
        notes = _notes(file, delimiter, export, implied, targets)
        return cls(targets, frozenset(fields), export, implied[0] if implied else None, notes)

    def apply(self, raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """One row (column -> cell, or a JSONL object) as fields, with the problems of its transformed cells."""
        row: dict[str, Any] = {}
        problems: list[str] = []
        attributes: dict[str, Any] = {}
        evidence: list[str] = []
        if self.implied_status is not None:
            row[STATUS] = self.implied_status
        for column, value in raw.items():
            target = self.targets.get(column, column)
            if not target:
                continue
            if target == NAME_SPLIT:
                first, _, last = str(value).strip().partition(" ")
                row["first_name"], row["last_name"] = first, last.strip()
            elif target == QUOTED_TAGS:
                row["tags"] = _quoted_list(str(value))
            elif target == BLACKLISTED:
                flag = str(value).strip().lower()
                if flag in ("yes", "true", "1", "y", "oui", "ja", "si", "sí", "tak"):
                    row[STATUS] = "blocklisted"
                elif flag not in ("", "no", "false", "0", "n", "non", "nein", "nie"):
                    problems.append(f"{column}: {value!r} is neither yes nor no (whether Brevo blocklisted them)")
            elif target.startswith(EVIDENCE + ":"):
                label, cell = target.partition(":")[2], str(value).strip()
                if cell and label == "from" and evidence:
                    evidence[-1] += f" from {cell}"
                elif cell and label != "from":
                    evidence.append(f"{label} {cell}")
            elif target == ATTRIBUTES:
                try:
                    attributes = _attributes(value, self.fields)
                except ValueError as exc:
                    problems.append(f"{column}: {exc}")
            else:
                row[target] = value
        for name, value in attributes.items():
            row.setdefault(name, value)
        if evidence:
            row[EVIDENCE] = "; ".join(evidence)[:500]
        return row, problems


def _check_targets(targets: Mapping[str, str], file: str) -> None:
    """Two columns filling one field: the import would silently keep the last."""
    seen: dict[str, str] = {}
    for cell, target in targets.items():
        if not target:
            continue
        if target in seen:
            raise ImportFileError(
                f"{file}: columns {seen[target].strip()!r} and {cell.strip()!r} both fill {target!r}; keep one "
                f"(or skip one with --map '{cell.strip()}=')"
            )
        if not target.startswith(EVIDENCE):
            seen[target] = cell


def _notes(
    file: str, delimiter: str, export: Export | None, implied: tuple[str, str] | None, targets: Mapping[str, str]
) -> tuple[str, ...]:
    """What the user should know about how the file was read: nothing for a plain comma file of field names."""
    notes = []
    if delimiter != ",":
        notes.append(f"{file}: {DELIMITERS[delimiter]}-separated")
    if export is not None:
        what = f" of {implied[1]} (every row: {implied[0]})" if implied else ""
        mapped = [f"{c.strip()} → {_shown(t)}" for c, t in targets.items() if t and column_key(c) != t]
        skipped = [c.strip() for c, t in targets.items() if not t]
        text = f"{file}: recognised {export.title}{what}"
        if mapped:
            text += "; columns: " + ", ".join(mapped)
        if skipped:
            text += "; not imported: " + ", ".join(skipped)
        notes.append(text)
    return tuple(notes)


def _shown(target: str) -> str:
    return {
        NAME_SPLIT: "first_name + last_name",
        QUOTED_TAGS: "tags",
        ATTRIBUTES: "the fields its keys name",
        BLACKLISTED: "status (blocklisted)",
    }.get(target, "the consent record" if target.startswith(EVIDENCE) else target)


def _quoted_list(cell: str) -> list[str]:
    """`"Customer","VIP"` -> ["Customer", "VIP"] (a plain `a;b` cell works too)."""
    if '"' not in cell:
        return [part.strip() for part in re.split(r"[;,]", cell) if part.strip()]
    return [item.strip() for item in next(csv.reader(io.StringIO(cell)), []) if item.strip()]


def _attributes(value: Any, fields: Collection[str]) -> dict[str, Any]:
    if isinstance(value, dict):
        found = value
    elif not str(value).strip():
        return {}
    else:
        try:
            found = strictjson.loads(str(value))
        except strictjson.JsonInputError as exc:
            raise ValueError(f"not a JSON object we can store: {exc}") from None
    if not isinstance(found, dict):
        raise ValueError("not a JSON object")
    return {key.lower(): item for key, item in found.items() if isinstance(key, str) and key.lower() in fields}


def status_of(word: Any) -> str | None:
    """A status cell -> what the import does (`STATUS_WORDS`); raises ValueError naming the words it knows."""
    if not isinstance(word, str):
        raise ValueError(f"expected a word such as unsubscribed, found {type(word).__name__}")
    text = word.strip().lower()
    if text not in STATUS_WORDS:
        known = ", ".join(w for w in STATUS_WORDS if w)
        raise ValueError(
            f"{word!r} is not a status ({did_you_mean(text, STATUS_WORDS, otherwise='use one of: ' + known)})"
        )
    return STATUS_WORDS[text]


EMAIL_HEADERS = frozenset({"email", "e_mail", "email_address", "e_mail_address", "mail", "address", "emailaddress"})
"""What the email column of a list of addresses is called in the files people have (any case, spaces, hyphens)."""


def addresses_in(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of each address in a file of people who must not be mailed: one address per line (blank lines
    and `#` comments skipped), or the email column of a CSV such as another tool's export (other columns unused)."""
    if not path.is_file():
        raise ImportFileError(f"{path}: no such file")
    with path.open(newline="", encoding=file_encoding(path)) as handle:
        first = handle.readline()
        while first and (not first.strip() or first.lstrip().startswith("#")):
            first = handle.readline()
        handle.seek(0)
        if "@" in first:
            for number, text in enumerate(handle, start=1):
                if text.strip() and not text.lstrip().startswith("#"):
                    yield number, text.strip()
            return
        reader = csv.reader(handle, delimiter=sniff_delimiter(first))
        header = next(reader, [])
        export = recognise(header)
        index = next(
            (
                number
                for number, cell in enumerate(header)
                if (export.columns.get(column_key(cell)) if export else column_key(cell)) == "email"
                or column_key(cell) in EMAIL_HEADERS
            ),
            None,
        )
        if index is None:
            raise ImportFileError(
                f"{path}: its first row names no email column ({', '.join(header) or 'it is empty'}): write one "
                "address per line, or a CSV whose header names an email column"
            )
        for cells in reader:
            if any(cell.strip() for cell in cells):
                yield reader.line_num, cells[index] if index < len(cells) else ""


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
