"""The Alembic initial revision creates exactly the schema of api/tables.py."""

from __future__ import annotations

from sqlalchemy import inspect

from api.db import get_engine
from api.migrate import upgrade
from api.tables import Base


def test_migrated_schema_matches_models(pg_url):
    inspector = inspect(get_engine(pg_url))
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
