"""Serving stored files: strong ETag (the sha256), If-None-Match, single byte ranges, streamed from the
store (a local file or an object: `jobs.storage.Blob`); the store's blocking calls run in a thread."""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from fastapi import Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.problems import ProblemError, problem_response
from jobs.storage import Blob, LocalBlob, StorageError

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")
T = TypeVar("T")
STORAGE_RETRY_AFTER_SECONDS = 5


async def in_store_thread(func: Callable[..., T], *args: object, **kwargs: object) -> T:
    """A blocking store call (an object store's requests) off the event loop; a failing store is a 503."""
    try:
        return await run_in_threadpool(func, *args, **kwargs)
    except StorageError as err:
        raise ProblemError(503, err.code, "the artifact store is unavailable; retry shortly",
                           headers={"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)}) from err


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


def file_response(request: Request, path: Path, *, sha256: str, media_type: str, filename: str) -> Response:
    return blob_response(request, LocalBlob(path, path.stat().st_size), sha256=sha256, media_type=media_type,
                         filename=filename)


def redirect_response(url: str, *, sha256: str) -> Response:
    """307 to a presigned URL of the store (it expires: never cache the redirect)."""
    return Response(status_code=307, headers={"Location": url, "ETag": f'"{sha256}"', "Cache-Control": "no-store"})


def blob_response(request: Request, blob: Blob, *, sha256: str, media_type: str, filename: str) -> Response:
    size = blob.size
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
        return StreamingResponse(blob.iter_range(0, size), media_type=media_type, headers=headers)
    first, last = byte_range
    length = last - first + 1
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(length)
    return StreamingResponse(blob.iter_range(first, length), status_code=206, media_type=media_type, headers=headers)
