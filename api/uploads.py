"""Teacher uploads: a streamed multipart parser (size-capped, hashed while written) and a
safetensors check that never unpickles anything.

The file is checked in two steps: the raw header (8-byte little-endian length + JSON, with caps) and
then safetensors' own parser, comparing every tensor's name and shape with the state dict of the
allow-listed timm model (built on the meta device: no memory, no weights).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, AsyncIterator, TypeVar

import anyio
from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from api.artifact_files import in_store_thread
from api.deps import in_db_thread
from api.problems import ProblemError

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # defined for type checkers only

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
MAX_FIELD_BYTES = 4096
MAX_PARTS = 16
_DTYPES = {"BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64",
           "F8_E4M3", "F8_E5M2"}


def invalid_upload(detail: str, loc: str = "file") -> ProblemError:
    return ProblemError(422, "invalid_upload", detail, errors=[{"loc": loc, "msg": detail}])


@dataclass
class ParsedUpload:
    fields: dict[str, str] = field(default_factory=dict)
    file_path: Path | None = None
    filename: str | None = None
    size: int = 0
    sha256: str = ""


class _Collector:
    """python-multipart callbacks: form fields into memory (capped), the file part onto disk."""

    def __init__(self, tmp_path: Path, max_file_bytes: int) -> None:
        self.tmp_path, self.max_file_bytes = tmp_path, max_file_bytes
        self.result = ParsedUpload()
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._handle: IO[bytes] | None = None
        self._parts = 0

    def on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise invalid_upload("too many form parts", "body")
        self._headers, self._header_field, self._header_value = {}, b"", b""
        self._buffer = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        self._name = name.decode("utf-8", "replace") if name is not None else None
        self._is_file = self._name == "file"
        if self._is_file:
            if self._handle is not None:
                raise invalid_upload("send exactly one 'file' part")
            filename = options.get(b"filename", b"upload.safetensors").decode("utf-8", "replace")
            filename = "".join(ch for ch in os.path.basename(filename.replace("\\", "/")) if ch.isprintable())
            self.result.filename = filename[:255] or "upload.safetensors"
            self._handle = open(self.tmp_path, "wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._is_file:
            self.result.size += len(chunk)
            if self.result.size > self.max_file_bytes:
                raise ProblemError(413, "payload_too_large",
                                   f"the uploaded file exceeds the limit of {self.max_file_bytes} bytes")
            self._hash.update(chunk)
            assert self._handle is not None  # opened by on_headers_finished whenever it sets _is_file
            self._handle.write(chunk)
        else:
            self._buffer += chunk
            if len(self._buffer) > MAX_FIELD_BYTES:
                raise ProblemError(413, "payload_too_large", f"form field {self._name!r} is too long")

    def on_part_end(self) -> None:
        if self._is_file:
            assert self._handle is not None  # opened by on_headers_finished whenever it sets _is_file
            self._handle.close()
            self.result.file_path = self.tmp_path
            self.result.sha256 = self._hash.hexdigest()
        elif self._name:
            self.result.fields[self._name] = bytes(self._buffer).decode("utf-8", "replace").strip()
        self._is_file = False

    def close(self) -> None:
        if self._handle is not None and not self._handle.closed:
            self._handle.close()


async def receive_upload(
    content_type: str, body: AsyncIterator[bytes], tmp_dir: Path, max_file_bytes: int
) -> ParsedUpload:
    """Parse a multipart/form-data body as it arrives; the 'file' part goes to a temporary file."""
    media, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if media != b"multipart/form-data" or not boundary:
        raise ProblemError(415, "unsupported_media_type", "send multipart/form-data with a 'file' part")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp_path = tmp_dir / f".upload-{uuid.uuid4().hex}.part"
    collector = _Collector(tmp_path, max_file_bytes)
    callbacks: MultipartCallbacks = {
        "on_part_begin": collector.on_part_begin, "on_part_data": collector.on_part_data,
        "on_part_end": collector.on_part_end, "on_header_field": collector.on_header_field,
        "on_header_value": collector.on_header_value, "on_header_end": collector.on_header_end,
        "on_headers_finished": collector.on_headers_finished,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    except ProblemError:
        collector.close()
        tmp_path.unlink(missing_ok=True)
        raise
    except Exception as err:  # noqa: BLE001 - python-multipart raises several types on bad input
        collector.close()
        tmp_path.unlink(missing_ok=True)
        raise invalid_upload(f"malformed multipart body: {err}"[:300], "body") from None
    collector.close()
    if collector.result.file_path is None:
        tmp_path.unlink(missing_ok=True)
        raise invalid_upload("the form has no 'file' part", "file")
    return collector.result


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Tensor entries of a safetensors file, checked for structure without trusting anything in it."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise invalid_upload("not a safetensors file: shorter than its 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len < 2 or header_len > MAX_HEADER_BYTES or header_len + 8 > size:
            raise invalid_upload("not a safetensors file: bad header length (pickled .pt/.pth files are not accepted)")
        raw = handle.read(header_len)
    if not raw.lstrip().startswith(b"{"):
        raise invalid_upload("not a safetensors file: the header is not a JSON object")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise invalid_upload("not a safetensors file: the header is not valid JSON") from None
    if not isinstance(header, dict):
        raise invalid_upload("not a safetensors file: the header is not a JSON object")
    data_bytes = size - 8 - header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in _DTYPES:
            raise invalid_upload(f"tensor {name[:100]!r}: missing or unknown dtype")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise invalid_upload(f"tensor {name[:100]!r}: bad shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise invalid_upload(f"tensor {name[:100]!r}: data offsets outside the file")
        tensors[name] = entry
    if not tensors:
        raise invalid_upload("the safetensors file holds no tensors")
    return tensors


def check_fits_model(path: Path, arch: str, num_classes: int, image_size: int | None) -> None:
    """The file's tensors must be exactly the timm model's state dict (names and shapes)."""
    import torch
    from safetensors import safe_open

    from hcd_core.models import create_timm_model

    header = read_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt") as handle:  # safetensors' own validation
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except Exception as err:  # noqa: BLE001 - SafetensorError and friends
        raise invalid_upload(f"not a valid safetensors file: {err}"[:300]) from None
    if set(shapes) != set(header):
        raise invalid_upload("the safetensors header is inconsistent")
    with torch.device("meta"):
        model = create_timm_model(arch, num_classes, image_size or 224)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(n for n in set(expected) & set(shapes) if expected[n] != shapes[n])
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    for name in wrong[:5]:
        problems.append(f"tensor {name!r} has shape {list(shapes[name])}, {arch} with {num_classes} classes "
                        f"expects {list(expected[name])}")
    if problems:
        hint = "" if image_size else " (for ViT-like models pass the image_size it was trained at)"
        raise invalid_upload(f"the weights do not fit {arch} with {num_classes} classes: " + "; ".join(problems) + hint)


Row = TypeVar("Row")


async def keep_upload(
    request: Request, staged: Path, upload_id: uuid.UUID, suffix: str, record: Callable[[str], Row]
) -> Row:
    """Move a checked upload into the store, then record it in the database with `record(key)`;
    when the record fails (or the client goes away meanwhile) the stored file is removed again."""
    store = request.app.state.store
    key = await in_store_thread(store.store_upload, staged, upload_id, suffix)
    try:
        return await in_db_thread(request, record, key)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await in_store_thread(store.delete_upload, key)
        raise
