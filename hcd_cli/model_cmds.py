"""`hcd models list|upload|delete`: teachers uploaded to the service (safetensors only).

A job names an uploaded model as its teacher with
`teacher: {arch: ..., weights: {source: model, model_id: ID}}`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hcd_cli import exits
from hcd_cli.client_cmds import _guard

_UPLOAD_EPILOG = """\
example:
  hcd models upload teacher.safetensors --arch resnet50 --num-classes 100 --image-size 224
  hcd submit student.yaml --set teacher.arch=resnet50 --set teacher.weights.source=model \\
      --set teacher.weights.model_id=MODEL_ID"""


def cmd_list(args: argparse.Namespace) -> int:
    from hcd_cli.client_cmds import get_pages, make_client
    from hcd_cli.render import fmt_age, fmt_bytes, parse_time, table

    with make_client() as client:
        models = get_pages(client, "/models", limit=args.limit)
    if args.json:
        print(json.dumps(models, indent=2))
    elif not models:
        print("no models yet: upload one with `hcd models upload FILE --arch ARCH --num-classes N`", file=sys.stderr)
    else:
        rows = [[str(m.get("id")), str(m.get("arch")), str(m.get("num_classes")), str(m.get("image_size") or "-"),
                 str(m.get("filename")), fmt_bytes(m.get("size")), fmt_age(parse_time(m.get("created_at")))]
                for m in models]
        print(table(["ID", "ARCH", "CLASSES", "IMAGE SIZE", "FILE", "SIZE", "AGE"], rows))
    return exits.OK


def cmd_upload(args: argparse.Namespace) -> int:
    from hcd_cli.client_cmds import ClientError, _json, make_client

    path = Path(args.file)
    if not path.is_file():
        raise ClientError(f"{path}: {'is a folder' if path.is_dir() else 'no such file'}", exits.USAGE)
    fields: dict[str, Any] = {"arch": args.arch, "num_classes": str(args.num_classes)}
    for name in ("image_size", "mean", "std"):
        if getattr(args, name) is not None:
            fields[name] = str(getattr(args, name))
    with make_client(timeout=600.0) as client, open(path, "rb") as handle:
        model = _json(client.post("/models", data=fields,
                                  files={"file": (path.name, handle, "application/octet-stream")}))
    if args.json:
        print(json.dumps(model, indent=2))
    else:
        print(model["id"])
        print(f"uploaded {path.name} as model {model['id']} ({model.get('arch')}, {model.get('num_classes')} "
              f"classes); use it as a teacher with --set teacher.weights.source=model "
              f"--set teacher.weights.model_id={model['id']}", file=sys.stderr)
    return exits.OK


def cmd_delete(args: argparse.Namespace) -> int:
    from hcd_cli.client_cmds import delete_each

    return delete_each("models", args.model_ids, "model ")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = subparsers.add_parser("models", help="teacher models uploaded to the service: list, upload, delete",
                                   description="Teacher models uploaded to the service (safetensors only).")
    sub = models.add_subparsers(dest="models_command", required=True, metavar="{list,upload,delete}")

    listing = sub.add_parser("list", help="your uploaded models, newest first")
    listing.add_argument("--limit", "-n", type=int, default=100, help="at most this many (default 100)")
    listing.add_argument("--json", action="store_true", help="print the models' JSON documents")
    listing.set_defaults(func=_guard(cmd_list))

    upload = sub.add_parser("upload", help="upload a teacher's weights (a safetensors file)",
                            epilog=_UPLOAD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    upload.add_argument("file", help="a .safetensors file holding the model's state dict")
    upload.add_argument("--arch", required=True, help="its timm architecture (one the server allows)")
    upload.add_argument("--num-classes", type=int, required=True, help="its number of classes")
    upload.add_argument("--image-size", type=int, help="the input size it was trained at (ViT-like models need it)")
    upload.add_argument("--mean", help="its normalisation mean: three numbers, 'a,b,c'")
    upload.add_argument("--std", help="its normalisation std: three numbers, 'a,b,c'")
    upload.add_argument("--json", action="store_true", help="print the whole model object")
    upload.set_defaults(func=_guard(cmd_upload))

    delete = sub.add_parser("delete", help="delete uploaded models (refused while a job uses one)")
    delete.add_argument("model_ids", nargs="+", metavar="model_id")
    delete.set_defaults(func=_guard(cmd_delete))
