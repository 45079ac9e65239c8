"""`hcd datasets list|upload|delete`: image-folder datasets uploaded to the service.

`upload` takes a .zip / .tar.gz, or a folder holding `train/<class>/*` and `val/<class>/*` (packed
here as a .tar.gz first). A job reads an uploaded dataset with
`dataset: {name: imagefolder, dataset_id: ID}`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from pathlib import Path

from hcd_cli import exits
from hcd_cli.client_cmds import _guard

_UPLOAD_EPILOG = """\
example:
  hcd datasets upload ./flowers --name flowers      # flowers/train/<class>/*.jpg, flowers/val/<class>/*.jpg
  hcd submit spec.yaml --set dataset.name=imagefolder --set dataset.dataset_id=DATASET_ID"""


def cmd_list(args: argparse.Namespace) -> int:
    from hcd_cli.client_cmds import get_pages, make_client
    from hcd_cli.render import fmt_age, fmt_bytes, parse_time, table

    with make_client() as client:
        datasets = get_pages(client, "/datasets", limit=args.limit)
    if args.json:
        print(json.dumps(datasets, indent=2))
    elif not datasets:
        print("no datasets yet: upload one with `hcd datasets upload DIR|ARCHIVE --name NAME`", file=sys.stderr)
    else:
        rows = [[str(d.get("id")), str(d.get("name")), str(d.get("num_classes")), str(d.get("num_train")),
                 str(d.get("num_val")), fmt_bytes(d.get("size")), fmt_age(parse_time(d.get("created_at")))]
                for d in datasets]
        print(table(["ID", "NAME", "CLASSES", "TRAIN", "VAL", "SIZE", "AGE"], rows))
    return exits.OK


def pack_folder(folder: Path, target: Path) -> Path:
    """`folder`'s train/ and val/ as a .tar.gz (regular files only; links are not followed)."""
    from hcd_cli.client_cmds import ClientError

    missing = [split for split in ("train", "val") if not (folder / split).is_dir()]
    if missing:
        raise ClientError(f"{folder}: no {' or '.join(missing)}/ folder (expected train/<class>/* and "
                          "val/<class>/*)", exits.USAGE)
    with tarfile.open(target, "w:gz", compresslevel=1) as archive:  # images are compressed already
        for split in ("train", "val"):
            for path in sorted((folder / split).rglob("*")):
                if path.is_file() and not path.is_symlink():
                    archive.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return target


def cmd_upload(args: argparse.Namespace) -> int:
    from hcd_cli.client_cmds import ClientError, _json, make_client

    path = Path(args.path)
    if not path.exists():
        raise ClientError(f"{path}: no such file or folder", exits.USAGE)
    name = args.name or path.resolve().name.removesuffix(".gz").removesuffix(".tar").removesuffix(".zip")
    with tempfile.TemporaryDirectory(prefix="hcd-dataset-") as scratch:
        archive = pack_folder(path, Path(scratch) / f"{path.name}.tar.gz") if path.is_dir() else path
        with make_client(timeout=3600.0) as client, open(archive, "rb") as handle:
            dataset = _json(client.post("/datasets", data={"name": name},
                                        files={"file": (archive.name, handle, "application/octet-stream")}))
    if args.json:
        print(json.dumps(dataset, indent=2))
    else:
        print(dataset["id"])
        print(f"uploaded {path.name} as dataset {dataset.get('name')!r}, {dataset['id']} "
              f"({dataset.get('num_classes')} classes, {dataset.get('num_train')} train / "
              f"{dataset.get('num_val')} val images); use it with "
              f"--set dataset.name=imagefolder --set dataset.dataset_id={dataset['id']}", file=sys.stderr)
    return exits.OK


def cmd_delete(args: argparse.Namespace) -> int:
    from hcd_cli.client_cmds import delete_each

    return delete_each("datasets", args.dataset_ids, "dataset ")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    datasets = subparsers.add_parser("datasets", help="datasets uploaded to the service: list, upload, delete",
                                     description="Image-folder datasets uploaded to the service.")
    sub = datasets.add_subparsers(dest="datasets_command", required=True, metavar="{list,upload,delete}")

    listing = sub.add_parser("list", help="your datasets, newest first")
    listing.add_argument("--limit", "-n", type=int, default=100, help="at most this many (default 100)")
    listing.add_argument("--json", action="store_true", help="print the datasets' JSON documents")
    listing.set_defaults(func=_guard(cmd_list))

    upload = sub.add_parser("upload", help="upload a folder (train/, val/) or a .zip / .tar.gz of one",
                            epilog=_UPLOAD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    upload.add_argument("path", help="a folder with train/<class>/* and val/<class>/*, or an archive of one")
    upload.add_argument("--name", help="a name to know it by (default: the folder's or file's name)")
    upload.add_argument("--json", action="store_true", help="print the whole dataset object")
    upload.set_defaults(func=_guard(cmd_upload))

    delete = sub.add_parser("delete", help="delete datasets (refused while a job reads one)")
    delete.add_argument("dataset_ids", nargs="+", metavar="dataset_id")
    delete.set_defaults(func=_guard(cmd_delete))
