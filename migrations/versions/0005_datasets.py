"""Uploaded datasets, and the dataset a job reads.

Revision ID: 0005_datasets
Revises: 0004_sweeps
Create Date: 2026-11-27
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_datasets"
down_revision = "0004_sweeps"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("classes", postgresql.JSONB(), nullable=False),
        sa.Column("num_train", sa.Integer(), nullable=False),
        sa.Column("num_val", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_datasets_owner_created", "datasets", ["owner", "created_at", "id"])
    op.add_column("jobs", sa.Column("dataset_id", postgresql.UUID(as_uuid=True)))
    op.create_index("ix_jobs_dataset", "jobs", ["dataset_id"], postgresql_where="dataset_id IS NOT NULL")


def downgrade() -> None:
    op.drop_index("ix_jobs_dataset", table_name="jobs")
    op.drop_column("jobs", "dataset_id")
    op.drop_index("ix_datasets_owner_created", table_name="datasets")
    op.drop_table("datasets")
