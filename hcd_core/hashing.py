"""SHA-256 helpers shared by the engine and the service (torch-free)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["sha256_file", "sha256_file_and_size", "sha256_json"]

_CHUNK = 1 << 20


def sha256_file_and_size(path: str | Path) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file, read in chunks so large weights never sit in memory."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    return sha256_file_and_size(path)[0]


def sha256_json(doc: Any) -> str:
    """Hex sha256 of a JSON document in canonical form: sorted keys, no spaces, UTF-8, no NaN/inf."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
