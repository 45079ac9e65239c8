"""Uploaded datasets: a `.zip` or `.tar.gz` archive of `train/<class>/<image>` and `val/<class>/<image>`,
checked and unpacked in one pass that trusts nothing in the archive.

`unpack_dataset` is the only way an archive becomes files: the API runs it to validate an upload (into
a scratch folder it then removes) and the worker runs it again to unpack the stored archive into its
cache. What it refuses (an `InvalidDataset`, a 422 naming the `file` field):

- anything but a zip or gzip-compressed tar (recognised by content, not by name);
- absolute member names, drive letters, backslashes, `..`, NUL or control characters;
- links (symbolic or hard), devices, FIFOs: only regular files and folders are written;
- more members or more unpacked bytes than the limits, a member whose size exceeds what its header
  declared, and a compression ratio over `max_ratio` (a zip bomb: per member for zip, over the whole
  stream for tar.gz) -- counted on the bytes actually unpacked, never on the headers' word;
- a layout other than `train/<class>/<file>` and `val/<class>/<file>` (one enclosing folder is allowed,
  as `zip -r data.zip data/` makes), fewer than 2 classes, different classes in the two splits, an
  empty split, and any file that is not a decodable image (Pillow decodes it fully; decompression
  bombs in images are refused too).

Only folders created here are written to, by names checked first, with O_EXCL: nothing can land
outside `dest`.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from jobs.errors import InvalidInput

SPLITS = ("train", "val")
_SKIPPED = re.compile(r"(^|/)(__MACOSX|\.DS_Store|Thumbs\.db)(/|$)")  # what archivers add by themselves
_CLASS_NAME = re.compile(r"^[^\x00-\x1f/\\]{1,128}$")
_COPY_BLOCK = 1024 * 1024
_MAX_IMAGE_PIXELS = 50_000_000  # one image larger than this is refused (Pillow's own bomb check)


@dataclass(frozen=True)
class ArchiveLimits:
    max_files: int = 200_000
    max_bytes: int = 20 * 1024**3  # unpacked
    max_ratio: float = 100.0  # unpacked / compressed


@dataclass
class DatasetSummary:
    classes: list[str]
    num_train: int
    num_val: int
    unpacked_bytes: int


class InvalidDataset(InvalidInput):
    def __init__(self, reason: str):
        super().__init__(f"invalid dataset archive: {reason}", code="invalid_dataset",
                         errors=[{"loc": "file", "msg": reason}])


@dataclass
class _Member:
    name: str  # as written in the archive
    is_dir: bool
    size: int  # declared
    compressed: int | None  # zip only


@dataclass
class _Budget:
    limits: ArchiveLimits
    archive_bytes: int
    files: int = 0
    unpacked: int = 0
    per_split: dict[str, dict[str, int]] = field(default_factory=lambda: {s: {} for s in SPLITS})

    def add_file(self) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise InvalidDataset(f"more than {self.limits.max_files} files")

    def add_bytes(self, n: int) -> None:
        self.unpacked += n
        if self.unpacked > self.limits.max_bytes:
            raise InvalidDataset(f"more than {self.limits.max_bytes} bytes unpacked")
        if self.unpacked > max(self.archive_bytes, 1) * self.limits.max_ratio and self.unpacked > _COPY_BLOCK:
            raise InvalidDataset(f"it unpacks to more than {self.limits.max_ratio:g} times its size (a zip bomb?)")


def archive_kind(path: Path) -> str:
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic.startswith(b"PK\x03\x04") or magic.startswith(b"PK\x05\x06"):
        return "zip"
    if magic.startswith(b"\x1f\x8b"):
        return "tar.gz"
    raise InvalidDataset("not a .zip or .tar.gz archive")


def _safe_parts(name: str) -> tuple[str, ...]:
    if not name or "\\" in name or any(ord(ch) < 32 for ch in name):
        raise InvalidDataset(f"member {name[:100]!r}: backslashes and control characters are not allowed")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise InvalidDataset(f"member {name[:100]!r}: absolute paths are not allowed")
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if ".." in parts:
        raise InvalidDataset(f"member {name[:100]!r}: '..' is not allowed")
    return parts


def _zip_members(archive: zipfile.ZipFile) -> Iterator[tuple[_Member, IO[bytes] | None]]:
    for info in archive.infolist():
        mode = (info.external_attr >> 16) & 0xFFFF
        if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            raise InvalidDataset(f"member {info.filename[:100]!r} is {kind}")
        if info.flag_bits & 0x1:
            raise InvalidDataset("encrypted archives are not accepted")
        member = _Member(info.filename, info.is_dir(), info.file_size, info.compress_size)
        yield member, (None if info.is_dir() else archive.open(info))


def _tar_members(archive: tarfile.TarFile) -> Iterator[tuple[_Member, IO[bytes] | None]]:
    for info in archive:
        if info.issym() or info.islnk():
            raise InvalidDataset(f"member {info.name[:100]!r} is a link")
        if not (info.isreg() or info.isdir()):
            raise InvalidDataset(f"member {info.name[:100]!r} is not a regular file (device, FIFO...)")
        yield _Member(info.name, info.isdir(), info.size, None), (archive.extractfile(info) if info.isreg() else None)


@contextmanager
def _members(path: Path, kind: str) -> Iterator[Iterator[tuple[_Member, IO[bytes] | None]]]:
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                yield _zip_members(archive)
        else:
            with tarfile.open(path, mode="r|gz") as archive:  # a stream: read once, front to back
                yield _tar_members(archive)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zipfile.LargeZipFile) as err:
        raise InvalidDataset(f"the archive is damaged ({type(err).__name__})") from None


def _copy(source: IO[bytes], target: Path, member: _Member, budget: _Budget) -> None:
    written = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with os.fdopen(os.open(target, flags, 0o644), "wb") as out:
        while block := source.read(_COPY_BLOCK):
            written += len(block)
            if written > member.size:
                raise InvalidDataset(f"member {member.name[:100]!r} is larger than its header says")
            if member.compressed is not None and written > max(member.compressed, 1) * budget.limits.max_ratio \
                    and written > _COPY_BLOCK:
                raise InvalidDataset(f"member {member.name[:100]!r} unpacks to more than "
                                     f"{budget.limits.max_ratio:g} times its size (a zip bomb?)")
            budget.add_bytes(len(block))
            out.write(block)


def _check_image(path: Path, shown: str) -> None:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > _MAX_IMAGE_PIXELS:
                    raise InvalidDataset(f"{shown}: {image.width}x{image.height} pixels is too large an image")
                image.load()
    except InvalidDataset:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InvalidDataset(f"{shown}: too large an image (a decompression bomb?)") from None
    except Exception as err:  # noqa: BLE001 - Pillow raises many types on a bad file
        raise InvalidDataset(f"{shown} is not a decodable image ({type(err).__name__})") from None


def unpack_dataset(archive: Path, dest: Path, limits: ArchiveLimits | None = None) -> DatasetSummary:
    """Check `archive` and unpack it into `dest` (created here, must not exist) as `train/` and `val/`;
    on any refusal `dest` is removed and the error says why."""
    limits = limits or ArchiveLimits()
    kind = archive_kind(archive)
    dest.mkdir(parents=True)
    try:
        return _unpack(archive, kind, dest, _Budget(limits, archive.stat().st_size))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _unpack(archive: Path, kind: str, dest: Path, budget: _Budget) -> DatasetSummary:
    """One pass over the members (a tar.gz stream is read once): each name is checked, then written."""
    for split in SPLITS:
        (dest / split).mkdir()
    wrapper: tuple[str, ...] | None = None  # the enclosing folder, decided by the first file
    with _members(archive, kind) as members:
        for member, handle in members:
            parts = _safe_parts(member.name)
            if handle is None:
                continue  # folders are made from the files' names
            with handle:
                if _SKIPPED.search("/".join(parts)):
                    if member.compressed is None:  # tar: its bytes are read past all the same
                        budget.add_bytes(member.size)
                    continue
                budget.add_file()
                if wrapper is None:
                    wrapper = parts[:1] if len(parts) == 4 and parts[0] not in SPLITS else ()
                if parts[:len(wrapper)] != wrapper:
                    raise InvalidDataset(f"{'/'.join(parts)[:200]!r} is outside the archive's one enclosing folder")
                parts = parts[len(wrapper):]
                shown = "/".join(parts)[:200]
                if len(parts) != 3 or parts[0] not in SPLITS:
                    raise InvalidDataset(f"{shown!r} is not train/<class>/<image> or val/<class>/<image>")
                split, label, _ = parts
                if not _CLASS_NAME.match(label) or label.startswith("."):
                    raise InvalidDataset(f"{shown!r}: bad class folder name")
                folder = dest / split / label
                if label not in budget.per_split[split]:
                    folder.mkdir(exist_ok=True)
                    budget.per_split[split][label] = 0
                try:
                    _copy(handle, folder / parts[2], member, budget)
                except FileExistsError:
                    raise InvalidDataset(f"{shown!r} appears twice in the archive") from None
                _check_image(folder / parts[2], shown)
                budget.per_split[split][label] += 1
    train, val = budget.per_split["train"], budget.per_split["val"]
    if not train or not val:
        raise InvalidDataset("both train/<class>/ and val/<class>/ folders are required, with images")
    if set(train) != set(val):
        only = sorted(set(train) ^ set(val))[:5]
        raise InvalidDataset(f"train and val must have the same classes (only in one: {', '.join(only)})")
    if len(train) < 2:
        raise InvalidDataset("at least 2 classes are required")
    return DatasetSummary(classes=sorted(train), num_train=sum(train.values()), num_val=sum(val.values()),
                          unpacked_bytes=budget.unpacked)
