"""Sweeps (a grid x seeds of ordinary jobs) and the index of the fair claim.

Revision ID: 0004_sweeps
Revises: 0003_job_domain
Create Date: 2026-11-27
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004_sweeps"
down_revision = "0003_job_domain"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", postgresql.UUID(as_uuid=True), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("base", postgresql.JSONB(), nullable=False),
        sa.Column("grid", postgresql.JSONB(), nullable=False),
        sa.Column("seeds", postgresql.JSONB(), nullable=False),
        sa.Column("cells", postgresql.JSONB(), nullable=False),
        sa.Column("metadata", postgresql.JSONB(), nullable=False),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("request_hash", sa.String(64)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_sweeps_owner_created", "sweeps", ["owner", "created_at", "id"])
    op.create_index("uq_sweeps_owner_idempotency", "sweeps", ["owner", "idempotency_key"], unique=True,
                    postgresql_where="idempotency_key IS NOT NULL")
    op.add_column("jobs", sa.Column("sweep_id", postgresql.UUID(as_uuid=True), sa.ForeignKey("sweeps.id")))
    op.add_column("jobs", sa.Column("sweep_cell", sa.Integer()))
    op.create_index("ix_jobs_sweep", "jobs", ["sweep_id", "sweep_cell"], postgresql_where="sweep_id IS NOT NULL")
    op.create_index("ix_jobs_queued", "jobs", ["created_at"], postgresql_where="status IN ('queued')")
    op.create_index("ix_jobs_owner_started", "jobs", ["owner", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_started", table_name="jobs")
    op.drop_index("ix_jobs_queued", table_name="jobs")
    op.drop_index("ix_jobs_sweep", table_name="jobs")
    op.drop_column("jobs", "sweep_cell")
    op.drop_column("jobs", "sweep_id")
    op.drop_index("uq_sweeps_owner_idempotency", table_name="sweeps")
    op.drop_index("ix_sweeps_owner_created", table_name="sweeps")
    op.drop_table("sweeps")
