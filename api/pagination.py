"""Opaque cursors for keyset pagination: base64url of a small JSON list, validated on the way in."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from api.problems import ProblemError

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def encode_cursor(*values: Any) -> str:
    raw = json.dumps(list(values), separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def bad_cursor() -> ProblemError:
    return ProblemError(422, "validation_error", "invalid cursor",
                        errors=[{"loc": "query.after", "msg": "not a cursor from this API"}])


def decode_cursor(cursor: str, types: tuple[type, ...]) -> list[Any]:
    """The cursor's values, each checked to be of `types`; a bad cursor is a 422, never a 500."""
    bad = bad_cursor()
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


def newest_first_page(rows: Sequence[Any], limit: int,
                      to_dict: Callable[[Any], dict[str, Any]] = dict) -> dict[str, Any]:
    """The page of a list ordered by (created_at, id) descending, from up to `limit + 1` rows (one more
    than the page says whether there are more); `to_dict` makes each row a document."""
    data = [to_dict(row) for row in rows[:limit]]
    has_more = len(rows) > limit
    cursor = encode_cursor(data[-1]["created_at"].isoformat(), str(data[-1]["id"])) if has_more else None
    return {"data": data, "has_more": has_more, "next_cursor": cursor}


def decode_newest_first(after: str | None) -> tuple[datetime, uuid.UUID] | None:
    """The (created_at, id) a newest-first page continues below; None for the first page."""
    if not after:
        return None
    created_iso, row_id = decode_cursor(after, (str, str))
    try:
        return datetime.fromisoformat(created_iso), uuid.UUID(row_id)
    except ValueError:
        raise bad_cursor() from None
