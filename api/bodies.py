"""Request bodies: size caps and an idle timeout, always answered with problem+json.

A body larger than its route allows is refused with 413: up front when Content-Length declares it
(`BodySizeLimit`), else as soon as the streamed bytes pass the cap (`body_chunks`). A client that
stops sending is dropped with 408 after `idle_seconds`, so a stalled upload holds neither a connection
nor a temporary file for long. (FastAPI's own `max_body_size` answers its 413 as plain text, which
would break the API's problem+json contract.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import ProblemError, problem_response


def _too_large(limit: int) -> ProblemError:
    return ProblemError(413, "payload_too_large", f"request body exceeds {limit} bytes")


class BodySizeLimit:
    """Refuses a declared Content-Length over the route's cap before any byte is read."""

    def __init__(self, app: ASGIApp, default: int, by_prefix: dict[str, int]):
        self.app, self.default, self.by_prefix = app, default, by_prefix

    def limit_for(self, path: str) -> int:
        return next((cap for prefix, cap in self.by_prefix.items() if path.startswith(prefix)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            limit = self.limit_for(scope["path"])
            scope.setdefault("state", {})["body_limit"] = limit
            for name, value in scope.get("headers", ()):
                if name == b"content-length":
                    if not value.isdigit() or int(value) > limit:
                        detail = f"request body exceeds {limit} bytes"
                        response = problem_response(413, "payload_too_large", detail, instance=scope["path"])
                        await response(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)


async def body_chunks(request: Request, idle_seconds: float) -> AsyncIterator[bytes]:
    """The body as it arrives, capped at the route's limit (413); 408 when nothing arrives for `idle_seconds`."""
    limit: int | None = getattr(request.state, "body_limit", None)
    stream = request.stream().__aiter__()
    total = 0
    while True:
        try:
            with anyio.fail_after(idle_seconds):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise ProblemError(408, "request_timeout",
                               f"the request body stalled: nothing arrived for {idle_seconds:g} s",
                               headers={"Connection": "close"}) from None
        total += len(chunk)
        if limit is not None and total > limit:
            raise _too_large(limit)
        yield chunk


async def read_body(request: Request, idle_seconds: float) -> bytes:
    return b"".join([chunk async for chunk in body_chunks(request, idle_seconds)])
