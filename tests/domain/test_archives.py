"""Dataset archives: every malicious kind is refused with the reason, and nothing is written outside
the destination (which is removed on refusal)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from archive_builders import BOMB, GOOD, make_tar, make_zip, make_zip_with_link, png, special_member
from PIL import Image

from jobs.archives import ArchiveLimits, InvalidDataset, unpack_dataset


def refused(tmp_path: Path, archive: Path, match: str, limits: ArchiveLimits | None = None) -> None:
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(InvalidDataset, match=match) as info:
        unpack_dataset(archive, tmp_path / "out", limits)
    assert info.value.errors[0]["loc"] == "file" and info.value.code == "invalid_dataset"
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing left behind, nothing elsewhere
    assert str(tmp_path) not in str(info.value)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_valid_archive_unpacks_with_its_summary(tmp_path, kind):
    archive = (make_zip(tmp_path / "d.zip", GOOD, prefix="mydata/") if kind == "zip"
               else make_tar(tmp_path / "d.tar.gz", {"./" + k: v for k, v in GOOD.items()}))
    summary = unpack_dataset(archive, tmp_path / "out")
    assert (summary.classes, summary.num_train, summary.num_val) == (["cat", "dog"], 6, 4)
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png")) == sorted(GOOD)
    assert (tmp_path / "out" / "train" / "dog" / "2.png").read_bytes() == GOOD["train/dog/2.png"]


def test_archiver_litter_is_ignored(tmp_path):
    archive = make_zip(tmp_path / "d.zip", {**GOOD, "__MACOSX/train/._x.png": b"junk", "train/cat/.DS_Store": b"x"})
    assert unpack_dataset(archive, tmp_path / "out").num_train == 6


def test_not_an_archive(tmp_path):
    path = tmp_path / "d.zip"
    path.write_bytes(b"not a zip at all")
    refused(tmp_path, path, "not a .zip or .tar.gz")
    path.write_bytes(b"PK\x03\x04 truncated")
    refused(tmp_path, path, "damaged")


@pytest.mark.parametrize("name", ["/etc/passwd.png", "C:/x/y/z.png", "train/cat/../../../evil.png",
                                  "../train/cat/x.png", "train\\cat\\x.png"])
def test_absolute_and_escaping_names(tmp_path, name):
    refused(tmp_path, make_zip(tmp_path / "d.zip", {**GOOD, name: png()}), "not allowed")
    refused(tmp_path, make_tar(tmp_path / "d.tar.gz", {**GOOD, name: png()}), "not allowed")


def test_links_and_special_files(tmp_path):
    refused(tmp_path, make_zip_with_link(tmp_path / "link.zip"), "symbolic link")
    for kind, what in ((tarfile.SYMTYPE, "link"), (tarfile.LNKTYPE, "link"), (tarfile.CHRTYPE, "not a regular"),
                       (tarfile.BLKTYPE, "not a regular"), (tarfile.FIFOTYPE, "not a regular")):
        refused(tmp_path, make_tar(tmp_path / "s.tar.gz", GOOD, [special_member(kind)]), what)


def test_zip_bombs(tmp_path):
    refused(tmp_path, make_zip(tmp_path / "b.zip", BOMB), "zip bomb")
    refused(tmp_path, make_tar(tmp_path / "b.tar.gz", BOMB), "zip bomb")


def test_caps_on_files_and_bytes(tmp_path):
    refused(tmp_path, make_zip(tmp_path / "d.zip", GOOD), "more than 5 files", ArchiveLimits(max_files=5))
    refused(tmp_path, make_tar(tmp_path / "d.tar.gz", GOOD), "bytes unpacked", ArchiveLimits(max_bytes=500))


@pytest.mark.parametrize("files, match", [
    ({**GOOD, "train/cat/notes.png": b"just text"}, "not a decodable image"),
    ({**GOOD, "README.txt": b"hi"}, "is not train/<class>/<image>"),
    ({**GOOD, "train/cat/deeper/x.png": png()}, "is not train/<class>/<image>"),
    ({k: v for k, v in GOOD.items() if not k.startswith("val/dog")}, "same classes"),
    ({k: v for k, v in GOOD.items() if k.startswith("train/")}, "both train"),
    ({k: v for k, v in GOOD.items() if "/dog/" not in k}, "at least 2 classes"),
])
def test_bad_layouts_and_files(tmp_path, files, match):
    refused(tmp_path, make_zip(tmp_path / "d.zip", files), match)


def test_a_name_twice_and_a_member_longer_than_declared(tmp_path):
    with tarfile.open(tmp_path / "twice.tar.gz", "w:gz") as archive:
        for name, data in [*GOOD.items(), ("train/cat/0.png", png())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    refused(tmp_path, tmp_path / "twice.tar.gz", "appears twice")


def test_an_image_bomb_is_refused(tmp_path):
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")  # 100 Mpx, a few kB
    refused(tmp_path, make_zip(tmp_path / "d.zip", {**GOOD, "train/cat/huge.png": buffer.getvalue()}),
            "too large an image")
