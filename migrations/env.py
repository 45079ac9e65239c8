"""Alembic environment: the database URL comes from jobs.migrate (programmatic) or HCD_DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool, text

from jobs.db import normalize_database_url
from jobs.tables import Base

config = context.config
target_metadata = Base.metadata

# Serialises concurrent `upgrade` runs (several containers starting at once).
_MIGRATION_LOCK_ID = 0x4843_4430  # "HCD0"


def _database_url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("HCD_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set HCD_DATABASE_URL or pass one to jobs.migrate.upgrade")
    return normalize_database_url(url)


def run_migrations_offline() -> None:
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
            connection.commit()
            try:
                context.configure(connection=connection, target_metadata=target_metadata)
                with context.begin_transaction():
                    context.run_migrations()
                connection.commit()
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID})
                connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
