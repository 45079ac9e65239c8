"""Dataset archives for the tests (tests/domain and tests/service): good ones, and the malicious kinds."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image


def png(value: int = 0, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), value).save(buffer, format="PNG")
    return buffer.getvalue()


GOOD = {f"{split}/{label}/{i}.png": png(i * 20) for split in ("train", "val") for label in ("cat", "dog")
        for i in range(3 if split == "train" else 2)}


def make_zip(path: Path, files: dict[str, bytes], prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(prefix + name, data)
    return path


def make_tar(path: Path, files: dict[str, bytes], extra: Sequence[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra:
            archive.addfile(info)
    return path


def make_zip_with_link(path: Path, name: str = "train/cat/link.png", target: str = "/etc/passwd") -> Path:
    """GOOD plus a symbolic link (zip keeps the mode in external_attr)."""
    import stat

    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    make_zip(path, GOOD)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(info, target)
    return path


def special_member(kind: bytes, name: str = "train/cat/special.png") -> tarfile.TarInfo:
    """A tar member that is not a regular file: tarfile.SYMTYPE, LNKTYPE, CHRTYPE, BLKTYPE, FIFOTYPE."""
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, "/etc/passwd"
    return member


BOMB = {**GOOD, "train/cat/bomb.png": b"\0" * (20 * 1024 * 1024)}  # ~1000:1 when deflated
