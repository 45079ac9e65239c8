"""Readable locations for pydantic errors of a submitted document (the spec, a sweep's cell)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["error_locations"]


def error_locations(
    errors: Iterable[Mapping[str, Any]], data: Any = None, prefix: tuple[str | int, ...] = ()
) -> list[dict[str, str]]:
    """[{"loc": "a.b", "msg": ..., "type": ...}] from pydantic's `err.errors()`.

    Discriminated unions put the tag in the location (('method', 'hcd', 'temperature')); with the
    submitted `data` at hand, path parts that are not keys of it (and not the last part, which may
    name a missing field) are such tags and are dropped, giving 'method.temperature'.
    """
    out: list[dict[str, str]] = []
    for err in errors:
        loc = list(err.get("loc", ()))
        clean: list[Any] = []
        node = data
        for i, part in enumerate(loc):
            last = i == len(loc) - 1
            if isinstance(node, dict):
                if part in node:
                    clean.append(part)
                    node = node[part]
                    continue
                if not last and data is not None:
                    continue  # a union tag or validator name, not a field
                clean.append(part)
                node = None
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                clean.append(part)
                node = node[part]
            else:
                if data is not None and not last and isinstance(part, str) and not isinstance(node, (dict, list)):
                    continue
                clean.append(part)
                node = None
        msg = str(err.get("msg", "invalid value"))
        out.append({"loc": ".".join(str(p) for p in (*prefix, *clean)), "msg": msg, "type": str(err.get("type", ""))})
    return out
