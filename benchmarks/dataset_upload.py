"""How long the check of an uploaded dataset takes: what `POST /datasets` does before it answers 201
(unpack into a scratch folder, every member's name and kind checked, every image decoded) on a
10,000-image archive built from scikit-learn's digits (32x32 PNGs), as .zip and as .tar.gz.

    python benchmarks/dataset_upload.py [--images 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.archives import unpack_dataset  # noqa: E402


def images(count: int) -> dict[str, bytes]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    files = {}
    for i in range(count):
        j = i % len(digits.images)
        image = Image.fromarray((digits.images[j] * 16).clip(0, 255).astype("uint8")).resize((32, 32))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        split = "val" if i % 5 == 0 else "train"
        files[f"{split}/{digits.target[j]}/{i}.png"] = buffer.getvalue()
    return files


def build(folder: Path, files: dict[str, bytes]) -> dict[str, Path]:
    zipped = folder / "digits.zip"
    with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    tarred = folder / "digits.tar.gz"
    with tarfile.open(tarred, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return {"zip": zipped, "tar.gz": tarred}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        archives = build(folder, images(args.images))
        print(f"{args.images} images (32x32 PNG), median of {args.repeats} runs:")
        for kind, archive in archives.items():
            times = []
            for _ in range(args.repeats):
                dest = folder / "out"
                started = time.perf_counter()
                summary = unpack_dataset(archive, dest)
                times.append(time.perf_counter() - started)
                shutil.rmtree(dest)
            median = statistics.median(times)
            print(f"  {kind:7s} {archive.stat().st_size / 1e6:6.2f} MB: {median:.2f} s "
                  f"({args.images / median:,.0f} images/s; {summary.num_train} train, {summary.num_val} val, "
                  f"{len(summary.classes)} classes)")


if __name__ == "__main__":
    main()
