"""Request dependencies: the database session and the authenticated owner."""

from __future__ import annotations

from typing import Any, Callable, Iterator, TypeVar

import anyio.to_thread
from fastapi import Request
from sqlalchemy.orm import Session

from api.auth import cached_owner, owner_for_key
from api.problems import ProblemError
from api.settings import Settings

T = TypeVar("T")
_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="hcd"'}


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def in_db_thread(request: Request, func: Callable[..., T], *args: Any) -> T:
    """Run a blocking database call of a hot route in the app's small thread pool.

    Few threads on purpose: a query takes well under a millisecond, and dozens of threads
    contending for the GIL with the event loop made tail latency ten times worse under load.
    """
    return await anyio.to_thread.run_sync(func, *args, limiter=getattr(request.app.state, "db_limiter", None))


def get_session(request: Request) -> Iterator[Session]:
    session = request.app.state.sessionmaker()
    try:
        yield session
    finally:
        session.close()


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
    owner = cached_owner(key, state.key_cache)
    if owner is None:
        def lookup() -> str | None:
            with state.sessionmaker() as session:
                return owner_for_key(session, key, state.key_cache)

        owner = await in_db_thread(request, lookup)
    if owner is None:
        raise ProblemError(401, "unauthorized", "invalid or revoked API key", headers=_UNAUTHORIZED_HEADERS)
    return owner
