"""Workspace files -> DesiredState, with every mistake turned into a located Problem.

This is the only module that reads workspace files. It never stops at the first mistake: a file that fails to
parse is reported and the rest still load, so one `validate` run shows everything that needs fixing.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import typing
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from reconciler.errors import Problem, UsageError, closest, did_you_mean, field_path
from reconciler.spec import KINDS, DesiredState, PageFile, Source, TemplateFile
from reconciler.spec.types import Model
from reconciler.yamlnodes import Document, parse_documents

YAML_FOLDERS = ("spec", "campaigns")
SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "api_token",
        "private_key",
        "signing_key",
        "secret_key",
        "access_key",
        "client_secret",
        "key",
    }
)
_DECLARED_NAME = re.compile(r"^[ \t]*(?:-[ \t]*)?name:[ \t]*['\"]?([a-z0-9_-]+)", re.M)
_PEM = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def find_workspace(path: Path) -> Path:
    """The workspace a path belongs to: the nearest folder, upwards, holding spec/, campaigns/ or templates/."""
    start = path if path.is_dir() else path.parent
    for candidate in (start, *start.parents):
        if any((candidate / folder).is_dir() for folder in (*YAML_FOLDERS, "templates")):
            return candidate
    raise UsageError(
        f"{path} is not in a workspace: no spec/, campaigns/ or templates/ folder there or above "
        "(run reconciler in the workspace, or pass -C DIR)"
    )


def display_path(path: Path) -> str:
    """Paths relative to the current directory, as editors and CI annotations want them."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if relative.startswith("..") else relative


def load_workspace(root: Path) -> tuple[DesiredState, list[Problem]]:
    """Read every spec, campaign and template file under `root`."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder (pass the workspace folder with -C DIR)")
    problems: list[Problem] = []
    documents: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
    sources: dict[tuple[str, str], Source] = {}
    invalid: set[tuple[str, str]] = set()
    digest = hashlib.sha256()

    for file in files_under(root, YAML_FOLDERS, (".yaml", ".yml"), problems):
        shown = display_path(file)
        text = _read(file, shown, problems)
        digest.update(file.relative_to(root).as_posix().encode() + b"\0" + text.encode())
        parsed, node_errors = parse_documents(text)
        problems += [Problem(shown, e.line, e.column, "", "", "", e.message, e.hint) for e in node_errors]
        if node_errors:  # what the unreadable part declares is unknown: keep references to it from piling up
            invalid |= {("*", found) for found in _DECLARED_NAME.findall(text)}
        for document in parsed:
            _load_document(document, shown, documents, sources, problems, invalid)

    templates = _load_templates(root, problems, digest)
    pages = _load_pages(root, problems, digest)
    settings_found = list(documents["Settings"].values())
    return (
        DesiredState(
            root=display_path(root),
            settings=settings_found[0] if settings_found else None,
            lists=documents["List"],
            fields=documents["Field"],
            segments=documents["Segment"],
            campaigns=documents["Campaign"],
            workflows=documents["Workflow"],
            templates=templates,
            sources=sources,
            revision=digest.hexdigest()[:12],
            invalid=frozenset(invalid),
            workflow_tests=documents["WorkflowTest"],
            pages=pages,
        ),
        problems,
    )


def files_under(root: Path, folders: Iterable[str], suffixes: tuple[str, ...], problems: list[Problem]) -> list[Path]:
    """The files with `suffixes` under `folders`. A symbolic link (file or folder) that resolves outside the
    workspace is a problem and is not read: review sees the workspace, and /etc/passwd must not become a partial."""
    found: list[Path] = []
    inside = root.resolve()
    for folder in folders:
        pending, seen = [root / folder], set()
        while pending:
            directory = pending.pop()
            real = directory.resolve()  # folders are few: each is checked, files only when they are links
            if not directory.is_dir() or real in seen or not within(directory, inside, problems):
                continue
            seen.add(real)
            for entry in directory.iterdir():
                if entry.is_dir():
                    pending.append(entry)
                elif entry.suffix not in suffixes or not entry.is_file():
                    continue
                elif not entry.is_symlink() or within(entry, inside, problems):
                    found.append(entry)
    return sorted(found)


def within(path: Path, inside: Path, problems: list[Problem]) -> bool:
    if path.resolve().is_relative_to(inside):
        return True
    problems.append(
        Problem(
            display_path(path),
            1,
            1,
            "",
            "",
            "",
            "a symbolic link that resolves outside the workspace: it is not read",
            "copy what it points to into the workspace; links may only point inside it, where review sees them",
        )
    )
    return False


def _read(file: Path, shown: str, problems: list[Problem]) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.append(Problem(shown, line, 1, "", "", "", "the file is not UTF-8 text", "save it as UTF-8"))
        return data.decode("utf-8", errors="replace")


def _load_templates(root: Path, problems: list[Problem], digest: Any) -> dict[str, TemplateFile]:
    base = root / "templates"
    templates: dict[str, TemplateFile] = {}
    for file in files_under(root, ("templates",), (".mjml",), problems):
        shown = display_path(file)
        name = file.relative_to(base).with_suffix("").as_posix()
        text = _read(file, shown, problems)
        text_file = file.with_suffix(".txt")
        readable = text_file.is_file() and within(text_file, root.resolve(), problems)
        text_part = _read(text_file, display_path(text_file), problems) if readable else None
        digest.update(name.encode() + b"\0" + text.encode() + b"\0" + (text_part or "").encode())
        templates[name] = TemplateFile(name=name, path=shown, text=text, text_part=text_part)
    return templates


def _load_pages(root: Path, problems: list[Problem], digest: Any) -> dict[str, PageFile]:
    """The workspace's own subscriber pages: templates/pages/*.html (a change to one is a new revision)."""
    pages: dict[str, PageFile] = {}
    for file in files_under(root, ("templates/pages",), (".html",), problems):
        shown = display_path(file)
        text = _read(file, shown, problems)
        name = file.relative_to(root / "templates" / "pages").as_posix()
        digest.update(b"pages/" + name.encode() + b"\0" + text.encode())
        pages[name] = PageFile(name=name, path=shown, text=text)
    return pages


def _load_document(
    document: Document,
    path: str,
    documents: dict[str, dict[str, Any]],
    sources: dict[tuple[str, str], Source],
    problems: list[Problem],
    invalid: set[tuple[str, str]],
) -> None:
    raw = document.value
    where = Source(path, document.line, document.column, document.positions)

    def problem(loc: tuple[str | int, ...], kind: str, name: str, field: str, message: str, hint: str) -> None:
        line, column = where.at(loc)
        problems.append(Problem(path, line, column, kind, name, field, message, hint))

    if not isinstance(raw, dict):
        problem((), "", "", "", "a document must be a mapping with kind and name", "start it with kind: ...")
        return
    kind, name = raw.get("kind"), raw.get("name")
    name = name if isinstance(name, str) else ""
    shown_kind = kind if isinstance(kind, str) and kind in KINDS else ""
    problems.extend(Problem(path, e.line, e.column, shown_kind, name, "", e.message, e.hint) for e in document.errors)
    if not isinstance(kind, str) or kind not in KINDS:
        hint = did_you_mean(str(kind), KINDS, otherwise="kinds: " + ", ".join(KINDS))
        message = "missing kind" if kind is None else f"unknown kind {kind!r}"
        problem(("kind",), "", "", "kind", message, hint)
        return
    secret_locs = _scan_secrets(raw, (), lambda loc, msg, hint: problem(loc, kind, name, field_path(loc), msg, hint))
    model = KINDS[kind]
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        for error in exc.errors():
            loc = _loc(error)
            if loc in secret_locs or _is_covered_by_typo(error, loc, raw):
                continue
            message, hint = describe_validation_error(error, model, _mapping_at(raw, loc[:-1]))
            problem(loc, kind, name, field_path(loc), message, hint)
        recovered = _recovered(model, raw, exc.errors())
        if recovered is None:
            invalid.add((kind, name))
            return
        parsed = recovered
    key = getattr(parsed, "name", name)
    if kind == "Settings" and documents["Settings"]:
        first = next(iter(sources[("Settings", n)] for n in documents["Settings"]))
        problem(
            (),
            kind,
            key,
            "",
            f"a second Settings document (the first is at {first.path}:{first.line})",
            "a workspace has exactly one Settings document; merge them",
        )
        return
    if key in documents[kind]:
        first = sources[(kind, key)]
        problem(
            ("name",),
            kind,
            key,
            "name",
            f"duplicate {kind} name {key!r} (first defined at {first.path}:{first.line})",
            "give each document of a kind its own name",
        )
        return
    documents[kind][key] = parsed
    sources[(kind, key)] = where


NOT_SECRETS = {("trigger", "key")}
"""Keys named like secrets that are not: a workflow's event trigger names the property that keys its runs."""


def _scan_secrets(value: Any, loc: tuple[str | int, ...], report: Any) -> set[tuple[str | int, ...]]:
    """Secrets belong in environment variables; a literal one in git is reported without echoing it."""
    found: set[tuple[str | int, ...]] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            here = (*loc, key)
            if key.lower() in SECRET_KEYS and item not in (None, "") and here not in NOT_SECRETS:
                report(
                    here,
                    f"a secret written into the spec ({key})",
                    "remove it from git, rotate it, and name the environment variable that holds it "
                    f"instead: {key}_env: VARIABLE_NAME",
                )
                found.add(here)
            else:
                found |= _scan_secrets(item, here, report)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found |= _scan_secrets(item, (*loc, index), report)
    elif isinstance(value, str) and _PEM.search(value):
        hint = "remove it from git, rotate it, and put it in the environment variable that private_key_env names"
        report(loc, "a private key written into the spec", hint)
        found.add(loc)
    return found


@cache
def _model_keys() -> list[frozenset[str]]:
    """The keys of every spec model, for "did you mean" hints on typos."""
    found: list[frozenset[str]] = []
    models: list[type[BaseModel]] = [Model]
    while models:
        model = models.pop()
        models += model.__subclasses__()
        found.append(frozenset(info.alias or name for name, info in model.model_fields.items()))
    return found


def _loc(error: ErrorDetails) -> tuple[str | int, ...]:
    """The error's location in the document, without pydantic's union tags (which we spell <tag>)."""
    return tuple(part for part in error["loc"] if not (isinstance(part, str) and part.startswith("<")))


def _recovered(model: type[Model], raw: dict[str, Any], errors: list[ErrorDetails]) -> Model | None:
    """The document as its author most likely meant it, when only misspelt or unknown keys are wrong.

    Like a compiler recovering after a typo: the typos are reported already, and recovering lets the same run
    check the document's references too, so one run still shows every mistake.
    """
    if any(error["type"] not in ("extra_forbidden", "missing") for error in errors):
        return None
    fixed = copy.deepcopy(raw)
    for error in errors:
        loc = _loc(error)
        if error["type"] != "extra_forbidden" or not loc:
            continue
        parent = _mapping_at(fixed, loc[:-1]) if len(loc) > 1 else fixed
        meant = _meant_key(str(loc[-1]), parent)
        value = parent.pop(str(loc[-1]), None)
        if meant and meant not in parent:
            parent[meant] = value
    try:
        return model.model_validate(fixed)
    except ValidationError:
        return None


def _is_covered_by_typo(error: ErrorDetails, loc: tuple[str | int, ...], raw: Any) -> bool:
    """A missing key whose misspelling sits in the same mapping is already explained by "did you mean"."""
    if error["type"] != "missing" or not loc or not isinstance(loc[-1], str):
        return False
    siblings = _mapping_at(raw, loc[:-1])
    return any(_meant_key(key, siblings) == loc[-1] for key in siblings)


def _mapping_at(raw: Any, loc: tuple[str | int, ...]) -> dict[str, Any]:
    for part in loc:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return {}
    return raw if isinstance(raw, dict) else {}


def _meant_key(key: str, siblings: dict[str, Any]) -> str | None:
    """The key an unknown `key` most likely misspells, among those the mapping's other keys allow."""
    return closest(key, _keys_like(siblings, key), cutoff=0.7)


def _keys_like(siblings: dict[str, Any], unknown: str) -> list[str]:
    """Keys of the models that accept every other key of this mapping: the candidates for a typo."""
    others = set(siblings) - {unknown}
    return sorted({key for keys in _model_keys() if others <= keys for key in keys})


def _keys_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> set[str]:
    """The keys the model allows at `loc` (a campaign's `audience` allows no `limit`, which a segment has): the
    candidates for a typo there; empty when the place cannot be followed (a union of shapes, a list)."""
    models: list[type[BaseModel]] = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        found: list[type[BaseModel]] = []
        for current in models:
            info = current.model_fields.get(str(part)) or next(
                (f for f in current.model_fields.values() if f.alias == part), None
            )
            if info is not None:
                found += _models_in(info.annotation)
        models = found
        if not models:
            return set()
    return {key for current in models for name, f in current.model_fields.items() for key in (name, f.alias) if key}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def describe_validation_error(error: ErrorDetails, model: type[BaseModel], siblings: dict[str, Any]) -> tuple[str, str]:
    """A pydantic error as a sentence a marketer can act on, and a hint."""
    kind, message, value = error["type"], error["msg"], error.get("input")
    message = message.removeprefix("Value error, ")
    field = next((p for p in reversed(error["loc"]) if isinstance(p, str) and not p.startswith("<")), "")
    if kind == "extra_forbidden":
        allowed = _keys_at(model, error["loc"][:-1])
        meant = closest(field, sorted(allowed), cutoff=0.7) if allowed else _meant_key(field, siblings)
        hint = (
            f"did you mean {meant!r}?" if meant else f"remove it; `reconciler schema` lists the keys of {_kind(model)}"
        )
        return f"unknown key {field!r}", hint
    if kind == "missing":
        return f"missing required key {field!r}", f"add {field}: ..."
    if kind == "string_type" and isinstance(value, bool | int | float):
        return (
            "expected text, found a number or true/false",
            f'put the value in quotes: "{_source_text(value)}"',
        )
    if kind == "bool_type":
        if isinstance(value, str):
            return (
                f"expected true or false, found {value!r}",
                "write true or false; yes, no, on and off are text",
            )
        return "expected true or false", "write true or false"
    if kind == "timezone_aware" or kind.startswith(("datetime_", "date_")):
        return _describe_moment(kind, field, value, message)
    if kind == "literal_error" and isinstance(value, str):
        expected = re.findall(r"'([^']*)'", message)
        return f"{value!r} is not one of {', '.join(expected)}", did_you_mean(value, expected)
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "expected a mapping of keys and values", "indent the keys below this one, or use {key: value}"
    if kind == "list_type":
        return "expected a list", "write [a, b] or one '- item' per line"
    if kind == "int_parsing" or kind == "int_type":
        return f"expected a whole number, found {value!r}", ""
    if kind in ("float_parsing", "float_type"):
        return f"expected a number, found {value!r}", ""
    if kind == "too_short":
        minimum = (error.get("ctx") or {}).get("min_length", 1)
        return f"needs at least {minimum} {'entry' if minimum == 1 else 'entries'}", ""
    return message, ""


_SEND_AT_FORMS = (
    "write now, an ISO 8601 date-time with a UTC offset (2026-11-27T09:00:00+01:00), "
    'or {local_time: "09:00", date: 2026-11-27} for each contact\'s own time zone'
)


def _describe_moment(kind: str, field: str, value: object, message: str) -> tuple[str, str]:
    """A date or date-time that is not one, or lacks its UTC offset; send_at's hint names all three forms it takes,
    and a day alone gets a time added to that very day."""
    text = str(value)
    if kind == "timezone_aware":
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return (
                f"a date alone is no moment to send (found {text})",
                f'add a time and a UTC offset: {text}T09:00:00+01:00, or write {{local_time: "09:00", date: {text}}} '
                "for 09:00 in each contact's own time zone",
            )
        return (
            "the date-time has no UTC offset",
            'add one, e.g. 2026-11-27T09:00:00+01:00, or use {local_time: "09:00", date: 2026-11-27} '
            "for each contact's own time zone",
        )
    detail = message.partition(", ")[2]
    why = f": {detail}" if "range" in detail else ""  # "day value is outside expected range": a 30 February
    if field == "send_at":
        return f"{value!r} is not a moment to send{why}", _SEND_AT_FORMS
    if kind.startswith("date_"):
        return f"{value!r} is not a date{why}", "use ISO 8601, e.g. 2026-11-27"
    return f"{value!r} is not a date-time{why}", "use ISO 8601 with a UTC offset, e.g. 2026-11-27T09:00:00+01:00"


def _source_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _kind(model: type[BaseModel]) -> str:
    return next((k for k, m in KINDS.items() if m is model), model.__name__)
