"""Fast JSON responses for hot routes (no pydantic round trip) with the API's wire conventions.

Conventions (the same as the pydantic-serialised routes): datetimes ISO 8601 with `Z` for UTC,
UUIDs as strings. JSON has no NaN/Infinity: a non-finite float is sent as `null`.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime
from typing import Any

from starlette.responses import Response


def iso_datetime(value: datetime) -> str:
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_datetime(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _without_non_finite(node: Any) -> Any:
    if isinstance(node, float):
        return finite_or_none(node)
    if isinstance(node, dict):
        return {key: _without_non_finite(item) for key, item in node.items()}
    if isinstance(node, (list, tuple)):
        return [_without_non_finite(item) for item in node]
    return node


def dumps(body: Any) -> bytes:
    try:
        text = json.dumps(body, default=_default, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except ValueError:  # a NaN/inf somewhere (rare): walk the document once and retry
        text = json.dumps(_without_non_finite(body), default=_default, allow_nan=False, ensure_ascii=False,
                          separators=(",", ":"))
    return text.encode("utf-8")


def json_response(body: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status_code, headers=headers, media_type="application/json")
