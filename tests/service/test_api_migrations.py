"""The Alembic revisions create exactly the schema of jobs/tables.py."""

from __future__ import annotations

from sqlalchemy import inspect

from jobs.db import database
from jobs.migrate import upgrade
from jobs.settings import Settings
from jobs.tables import Base


def test_migrated_schema_matches_models(pg_url):
    inspector = inspect(database(Settings(database_url=pg_url)).engine)
    tables = set(inspector.get_table_names()) - {"alembic_version"}
    assert tables == set(Base.metadata.tables)
    for name, table in Base.metadata.tables.items():
        columns = {c["name"]: c for c in inspector.get_columns(name)}
        assert set(columns) == {c.name for c in table.columns}, name
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, (name, column.name)
        db_indexes = {i["name"]: i for i in inspector.get_indexes(name)}
        for index in table.indexes:
            assert index.name in db_indexes, (name, index.name)
            assert db_indexes[index.name]["column_names"] == [c.name for c in index.columns]
            assert bool(db_indexes[index.name]["unique"]) == bool(index.unique)
        pk = inspector.get_pk_constraint(name)["constrained_columns"]
        assert pk == [c.name for c in table.primary_key.columns], name


def test_upgrade_is_idempotent(pg_url):
    upgrade(pg_url)  # already at head: a no-op, no error
