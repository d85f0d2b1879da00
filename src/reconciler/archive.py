"""A workspace as a tar archive: what `reconciler plan --remote` sends and the daemon's plan endpoint unpacks.

Packing takes exactly the files `load` reads (`workspace_files`), gzip-compressed, with fixed owners, modes and
times, so the same files always pack to the same bytes. Unpacking trusts nothing it receives: the stream is
decompressed with a bound, and every member is checked before a single file is written — regular files and
folders only (no links, devices or FIFOs), relative paths that stay inside the folder, at most MAX_MEMBERS of them
and MAX_UNPACKED bytes in all. Members outside the workspace folders are left out, not written. Python's
`data` extraction filter then checks each member again as it is written.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from reconciler.errors import Problem, ReconcilerError
from reconciler.load import YAML_FOLDERS, files_under, within

MAX_PACKED = 1_000_000
"""Bytes an archive may have as sent (the web service's limit of a request body)."""
MAX_UNPACKED = 20_000_000
"""Bytes the tar stream may have once decompressed: a workspace of YAML and templates is far smaller."""
MAX_MEMBERS = 5_000
"""Files and folders an archive may hold."""
WORKSPACE_FOLDERS = (*YAML_FOLDERS, "templates")
"""The folders a workspace's files live in: nothing outside them is read."""


def workspace_files(root: Path) -> tuple[list[Path], list[Problem]]:
    """Every file `load_workspace` reads (YAML, templates with their text parts, pages), by the same rules: what
    `plan --remote` sends, so the daemon plans exactly what a local plan would. Links that lead outside the
    workspace are problems, as when loading."""
    problems: list[Problem] = []
    inside = root.resolve()
    found = files_under(root, YAML_FOLDERS, (".yaml", ".yml"), problems)
    for template in files_under(root, ("templates",), (".mjml",), problems):
        found.append(template)
        text = template.with_suffix(".txt")
        if text.is_file() and within(text, inside, problems):
            found.append(text)
    found += files_under(root, ("templates/pages",), (".html",), problems)
    return sorted(set(found)), problems


class ArchiveError(ReconcilerError):
    """An archive that is refused, and the HTTP status that says why (400 not an archive, 413 too large, 422 a
    member that may not be unpacked)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def pack(root: Path) -> tuple[bytes, list[Problem]]:
    """The workspace at `root` as a gzip-compressed tar, and the problems of files that were left out (links that
    lead outside the workspace)."""
    files, problems = workspace_files(root)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for file in files:
            data = file.read_bytes()  # a link inside the workspace is sent as the file it points to
            info = tarfile.TarInfo(file.relative_to(root).as_posix())
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), problems


def unpack(data: bytes, into: Path) -> int:
    """Write the workspace files of the archive `data` (a tar, gzip-compressed or not) under the empty folder
    `into`; the number of files written. Raises ArchiveError, having written nothing, for anything refused."""
    stream = _decompressed(data)
    try:
        with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tar:
            members = _checked(tar)
            tar.extractall(into, members=members, filter="data")
    except tarfile.FilterError as exc:
        raise ArchiveError(f"the archive is refused: {exc}", 422) from None
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError(
            f"the body is not a tar archive ({exc}); send `tar -cz spec campaigns templates`", 400
        ) from None
    except OSError as exc:  # a member that is both a file and the folder of another one
        raise ArchiveError(f"the archive cannot be unpacked: {exc.strerror}: {exc.filename}", 422) from None
    return sum(member.isreg() for member in members)


def _decompressed(data: bytes) -> bytes:
    if len(data) > MAX_PACKED:
        raise ArchiveError(f"the archive has {len(data):,} bytes; at most {MAX_PACKED:,} are taken", 413)
    if not data.startswith(b"\x1f\x8b"):  # a plain tar: no larger than MAX_PACKED, so within MAX_UNPACKED
        return data
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        stream = inflate.decompress(data, MAX_UNPACKED + 1)
    except zlib.error as exc:
        raise ArchiveError(f"the body is not a gzip-compressed tar archive ({exc})", 400) from None
    if len(stream) > MAX_UNPACKED or inflate.unconsumed_tail:
        raise ArchiveError(f"the archive unpacks to more than {MAX_UNPACKED:,} bytes", 413)
    if not inflate.eof:
        raise ArchiveError("the gzip stream ends early: the archive was cut off on its way", 400)
    return stream


_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
}


def _checked(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The members to write, once every member of the archive passed; an ArchiveError names the first that did
    not."""
    wanted: list[tarfile.TarInfo] = []
    total = 0
    for count, member in enumerate(tar, start=1):
        if count > MAX_MEMBERS:
            raise ArchiveError(f"the archive has more than {MAX_MEMBERS:,} members", 413)
        name = member.name
        if not (member.isreg() or member.isdir()):
            kind = _KINDS.get(member.type, f"of tar type {member.type!r}")
            raise ArchiveError(f"{name!r} is {kind}: only files and folders are unpacked", 422)
        path = PurePosixPath(name)
        if not name or "\x00" in name or "\\" in name or path.is_absolute():
            raise ArchiveError(f"{name!r}: member paths are relative to the workspace, e.g. spec/lists.yaml", 422)
        if ".." in path.parts:
            raise ArchiveError(f"{name!r}: a path that leaves the workspace (..) is refused", 422)
        total += member.size
        if total > MAX_UNPACKED:
            raise ArchiveError(f"the archive's files have more than {MAX_UNPACKED:,} bytes", 413)
        parts = [part for part in path.parts if part != "."]
        if parts and parts[0] in WORKSPACE_FOLDERS:
            wanted.append(member)
    return wanted
