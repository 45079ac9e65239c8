"""Database engine and sessions shared by the API, the worker and the sweep."""

from __future__ import annotations

import select
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterator

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

# Pooled connections older than this are replaced (bounds the life of a connection a firewall or
# proxy may have dropped silently).
POOL_RECYCLE_SECONDS = 1800


def normalize_database_url(url: str) -> str:
    """Accept postgres:// and postgresql:// URLs; always use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _idle_connection_is_dead(dbapi_connection: Any) -> bool:
    """True when the server has closed this idle connection (restart, pg_terminate_backend, timeout).

    An idle connection has nothing to read: a readable socket means the server sent its FATAL
    goodbye and/or closed it. This costs a poll() instead of pre_ping's SELECT 1 round trip.
    """
    if getattr(dbapi_connection, "closed", False) or getattr(dbapi_connection, "broken", False):
        return True
    try:
        readable, _, _ = select.select([dbapi_connection.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    # No pool_pre_ping (a SELECT 1 round trip per checkout, ~10% of a GET /jobs/{id}): the checkout
    # hook below drops connections the server closed, at the cost of a poll() on the socket.
    engine = create_engine(
        normalize_database_url(url), pool_pre_ping=False, pool_recycle=POOL_RECYCLE_SECONDS,
        pool_size=10, max_overflow=20, future=True,
    )

    @event.listens_for(engine, "checkout")
    def _discard_dead(dbapi_connection, connection_record, connection_proxy):  # noqa: ARG001
        if _idle_connection_is_dead(dbapi_connection):
            raise DisconnectionError("the server closed this pooled connection")  # pool retries with a new one

    return engine


@lru_cache(maxsize=8)
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def driver_connection(engine: Engine, *, autocommit: bool = False) -> Iterator[Any]:
    """A pooled psycopg connection for hot paths that skip the ORM (fewer round trips, less CPU).

    With autocommit a single SELECT is one round trip (no BEGIN/ROLLBACK). A transaction left open
    is rolled back; a connection that broke is discarded instead of going back to the pool.
    """
    fairy = engine.raw_connection()
    conn = fairy.driver_connection
    try:
        if autocommit:
            conn.autocommit = True  # local flag, no round trip
        yield conn
    except BaseException:
        if conn.broken or conn.closed:
            fairy.invalidate()
        raise
    finally:
        if autocommit and fairy.is_valid and not conn.closed:
            conn.rollback()  # a no-op unless someone sent an explicit BEGIN
            conn.autocommit = False  # the pool's other users expect transactions
        fairy.close()
