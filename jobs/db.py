"""The database: one engine per process and settings, sessions, raw connections, and what counts as
"the database is unavailable" (which the API answers with 503 and the worker rides out).

Every connection is bounded in time: connecting (`connect_timeout`), waiting for a pooled connection
(`pool_timeout`) and each statement (`statement_timeout`, enforced by the server). A server that
hangs without answering at all is bounded by the API's request deadline (see api.app).
"""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from jobs.settings import Settings

# Pooled connections older than this are replaced (bounds the life of a connection a firewall or
# proxy may have dropped silently).
POOL_RECYCLE_SECONDS = 1800


def normalize_database_url(url: str) -> str:
    """Accept postgres:// and postgresql:// URLs; always use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def libpq_url(url: str) -> str:
    """The same URL for psycopg/libpq itself (no SQLAlchemy driver suffix)."""
    return normalize_database_url(url).replace("postgresql+psycopg://", "postgresql://", 1)


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


def database_unavailable(error: BaseException) -> bool:
    """True for failures of the database itself (down, restarting, hung, too slow), not of the query."""
    if isinstance(error, (exc.TimeoutError, exc.DisconnectionError)):  # pool checkout timed out
        return True
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated:
            return True
        error = error.orig if error.orig is not None else error
    # psycopg's OperationalError covers refused/lost connections, admin shutdown and statement timeouts.
    return isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError))


class Database:
    """An engine with bounded timeouts, its sessions and raw driver connections."""

    def __init__(self, url: str, *, connect_timeout: int, statement_timeout_ms: int, pool_timeout: float):
        self.url = normalize_database_url(url)
        self.engine: Engine = create_engine(
            self.url,
            # No pool_pre_ping (a SELECT 1 round trip per checkout, ~10% of a GET /jobs/{id}): the checkout
            # hook below drops connections the server closed, at the cost of a poll() on the socket.
            pool_pre_ping=False, pool_recycle=POOL_RECYCLE_SECONDS, pool_size=10, max_overflow=20,
            pool_timeout=pool_timeout,
            connect_args={
                "connect_timeout": connect_timeout,
                "options": f"-c statement_timeout={statement_timeout_ms} -c lock_timeout={statement_timeout_ms}",
                # TCP only (ignored on unix sockets): a silent network drops the connection in ~10 s.
                "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                "tcp_user_timeout": 10_000,
            },
        )

        @event.listens_for(self.engine, "checkout")
        def _discard_dead(
            dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
        ) -> None:
            if _idle_connection_is_dead(dbapi_connection):
                raise exc.DisconnectionError("the server closed this pooled connection")  # the pool retries

        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        session = self.sessionmaker()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def connection(self, *, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """A pooled psycopg connection for hot paths that skip the ORM (fewer round trips, less CPU).

        With autocommit a single SELECT is one round trip (no BEGIN/ROLLBACK). A transaction left open
        is rolled back; a connection that broke is discarded instead of going back to the pool.
        """
        fairy = self.engine.raw_connection()
        conn: psycopg.Connection[Any] = fairy.driver_connection  # type: ignore[assignment]
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

    def dispose(self) -> None:
        self.engine.dispose()


_DATABASES: dict[tuple[str, int, int, float], Database] = {}


def _database(url: str, connect_timeout: int, statement_timeout_ms: int, pool_timeout: float) -> Database:
    key = (url, connect_timeout, statement_timeout_ms, pool_timeout)
    if key not in _DATABASES:
        _DATABASES[key] = Database(url, connect_timeout=connect_timeout, statement_timeout_ms=statement_timeout_ms,
                                   pool_timeout=pool_timeout)
    return _DATABASES[key]


def database(settings: Settings) -> Database:
    """The process's Database for these settings (one engine and pool per URL and timeouts)."""
    if not settings.database_url:
        raise RuntimeError("HCD_DATABASE_URL is not set (or use `hcd up` for embedded servers)")
    return _database(settings.database_url, settings.db_connect_timeout_seconds,
                     settings.db_statement_timeout_ms, settings.db_pool_timeout_seconds)


def dispose_all() -> None:
    """Close every pooled connection of this process (tests, and before a database is dropped)."""
    for db in list(_DATABASES.values()):
        db.dispose()
