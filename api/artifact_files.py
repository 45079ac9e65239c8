"""Serving stored files: strong ETag (the sha256), If-None-Match, single byte ranges, streamed."""

from __future__ import annotations

import enum
import os
import re
from pathlib import Path
from typing import Iterator

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from api.problems import problem_response

CHUNK_BYTES = 256 * 1024
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


def _etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags


class Unsatisfiable(enum.Enum):
    """parse_range's answer for a range outside the file (a 416): a sentinel, not a string to unpack."""

    RANGE = "unsatisfiable"


UNSATISFIABLE = Unsatisfiable.RANGE


def parse_range(header: str, size: int) -> tuple[int, int] | None | Unsatisfiable:
    """(first, last) inclusive; None = serve the whole file (no/ignored range); UNSATISFIABLE."""
    match = _RANGE.match(header)
    if match is None:
        return None  # malformed or several ranges: RFC 9110 lets us ignore the header
    start_s, end_s = match.groups()
    if not start_s and not end_s:
        return None
    if not start_s:  # suffix: the last n bytes
        n = int(end_s)
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - n), size - 1
    start = int(start_s)
    end = int(end_s) if end_s else size - 1
    if end_s and end < start:
        return None  # invalid range spec: ignore
    if start >= size:
        return UNSATISFIABLE
    return start, min(end, size - 1)


def _read_chunks(path: Path, start: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        handle.seek(start)
        remaining = length
        while remaining > 0:
            chunk = handle.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk


def file_response(request: Request, path: Path, *, sha256: str, media_type: str, filename: str) -> Response:
    size = os.stat(path).st_size
    etag = f'"{sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, max-age=0, must-revalidate",
        "Content-Disposition": f'attachment; filename="{filename}"',
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers={k: headers[k] for k in ("ETag", "Cache-Control")})
    byte_range: tuple[int, int] | None | Unsatisfiable = None
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if range_header is not None and (if_range is None or if_range.strip() == etag):
        byte_range = parse_range(range_header, size)
    if byte_range is UNSATISFIABLE:
        return problem_response(
            416, "range_not_satisfiable", f"the requested range is outside the file ({size} bytes)",
            headers={"Content-Range": f"bytes */{size}", "ETag": etag}, instance=request.url.path,
        )
    if byte_range is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(_read_chunks(path, 0, size), media_type=media_type, headers=headers)
    first, last = byte_range
    length = last - first + 1
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(length)
    return StreamingResponse(_read_chunks(path, first, length), status_code=206, media_type=media_type, headers=headers)
