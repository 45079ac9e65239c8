"""Request dependencies: database calls off the event loop (bounded in time) and the authenticated owner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Request

from api.problems import DatabaseUnavailable, ProblemError
from jobs.keys import owner_for_key

T = TypeVar("T")
_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="hcd"'}


async def in_db_thread(request: Request, func: Callable[..., T], *args: Any, hot: bool = False) -> T:
    """Run a blocking database call in a thread; 503 when it does not finish within the request timeout.

    A database that hangs (a stopped process, a network black hole) never answers: the call is then
    abandoned (its thread finishes or fails on its own) and the client gets a 503 in bounded time.
    Hot routes share a small thread pool: a query takes well under a millisecond, and dozens of
    threads contending for the GIL with the event loop made tail latency ten times worse under load.
    """
    state = request.app.state
    limiter = state.db_limiter if hot else None
    try:
        with anyio.fail_after(state.settings.request_timeout_seconds):
            return await anyio.to_thread.run_sync(lambda: func(*args), abandon_on_cancel=True, limiter=limiter)
    except TimeoutError:
        raise DatabaseUnavailable() from None


async def require_owner(request: Request) -> str:
    """The owner of the request's bearer key; 401 problem otherwise.

    Async on purpose: a cached key costs no thread hop; only a cache miss queries Postgres.
    """
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise ProblemError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'",
                           headers=_UNAUTHORIZED_HEADERS)
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ProblemError(401, "unauthorized", "the Authorization header must be 'Bearer <key>'",
                           headers=_UNAUTHORIZED_HEADERS)
    state = request.app.state
    owner: str | None = state.key_cache.get(key)  # app.state is untyped: KeyCache.get's own return type
    if owner is None:
        def lookup() -> str | None:
            with state.db.session() as session:
                return owner_for_key(session, key)

        owner = await in_db_thread(request, lookup, hot=True)
        if owner is not None:
            state.key_cache.put(key, owner)
    if owner is None:
        raise ProblemError(401, "unauthorized", "invalid or revoked API key", headers=_UNAUTHORIZED_HEADERS)
    return owner
