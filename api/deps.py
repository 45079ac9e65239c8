"""Request dependencies: the database session and the authenticated owner."""

from __future__ import annotations

from typing import Iterator

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.auth import cached_owner, owner_for_key
from api.problems import ProblemError
from api.settings import Settings

_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="hcd"'}


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


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

        owner = await run_in_threadpool(lookup)
    if owner is None:
        raise ProblemError(401, "unauthorized", "invalid or revoked API key", headers=_UNAUTHORIZED_HEADERS)
    return owner
