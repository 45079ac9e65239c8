"""JSON on the wire, one set of rules for the API, the metric stream and stored documents.

Datetimes are ISO 8601 with `Z` for UTC, UUIDs are strings, and JSON has no NaN or Infinity: a
non-finite float is written as `null`. Strings Postgres cannot store (NUL, lone surrogates) are
recognised here too.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime
from typing import Any


def iso_datetime(value: datetime) -> str:
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def json_safe(node: Any) -> Any:
    """The document with every non-finite float replaced by None (tuples become lists)."""
    if isinstance(node, float):
        return finite_or_none(node)
    if isinstance(node, dict):
        return {key: json_safe(item) for key, item in node.items()}
    if isinstance(node, (list, tuple)):
        return [json_safe(item) for item in node]
    return node


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_datetime(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(body: Any) -> bytes:
    """Compact UTF-8 JSON by the rules above."""
    try:
        text = json.dumps(body, default=_default, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except ValueError:  # a NaN/inf somewhere (rare): walk the document once and retry
        text = json.dumps(json_safe(body), default=_default, allow_nan=False, ensure_ascii=False,
                          separators=(",", ":"))
    return text.encode("utf-8")


def storable_text(value: str) -> bool:
    """False for strings Postgres cannot store: NUL characters and lone UTF-16 surrogates."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def all_strings_storable(node: Any) -> bool:
    """storable_text for every key and string value of a JSON document."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not storable_text(item):
                return False
        elif isinstance(item, dict):
            for key, value in item.items():
                if not storable_text(key):
                    return False
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return True
