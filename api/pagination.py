"""Opaque cursors for keyset pagination: base64url of a small JSON list, validated on the way in."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from api.problems import ProblemError

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def encode_cursor(*values: Any) -> str:
    raw = json.dumps(list(values), separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str, types: tuple[type, ...]) -> list[Any]:
    """The cursor's values, each checked to be of `types`; a bad cursor is a 422, never a 500."""
    bad = ProblemError(
        422, "validation_error", "invalid cursor", errors=[{"loc": "query.after", "msg": "not a cursor from this API"}]
    )
    if len(cursor) > 512:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(values, list) or len(values) != len(types):
        raise bad
    if not all(isinstance(v, t) and not (t is int and isinstance(v, bool)) for v, t in zip(values, types, strict=True)):
        raise bad
    if any(isinstance(v, str) and ("\x00" in v or len(v) > 128) for v in values):
        raise bad
    if any(isinstance(v, int) and not -(2**63) <= v < 2**63 for v in values):
        raise bad
    return values
