"""Partial index on the owner's active jobs: the submit-time cap check stays cheap as history grows.

Revision ID: 0002_owner_active_index
Revises: 0001_initial
Create Date: 2026-11-26
"""
from __future__ import annotations

from alembic import op

revision = "0002_owner_active_index"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_owner_active", "jobs", ["owner"],
        postgresql_where="status IN ('queued', 'running', 'cancelling')",
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_active", table_name="jobs")
