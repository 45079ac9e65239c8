"""Teacher references on jobs (a teacher in use cannot be deleted) and rotating bootstrap keys.

Revision ID: 0003_job_domain
Revises: 0002_owner_active_index
Create Date: 2026-11-27
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003_job_domain"
down_revision = "0002_owner_active_index"
branch_labels = None
depends_on = None

_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("teacher_job_id", postgresql.UUID(as_uuid=True)))
    op.add_column("jobs", sa.Column("teacher_model_id", postgresql.UUID(as_uuid=True)))
    for source, column in (("job", "teacher_job_id"), ("model", "teacher_model_id")):
        op.execute(
            f"UPDATE jobs SET {column} = CAST(spec->'teacher'->'weights'->>'{source}_id' AS uuid) "
            f"WHERE spec->'teacher'->'weights'->>'source' = '{source}' "
            f"AND spec->'teacher'->'weights'->>'{source}_id' ~ '^{_UUID}$'"
        )
    op.create_index("ix_jobs_teacher_job", "jobs", ["teacher_job_id"],
                    postgresql_where="teacher_job_id IS NOT NULL")
    op.create_index("ix_jobs_teacher_model", "jobs", ["teacher_model_id"],
                    postgresql_where="teacher_model_id IS NOT NULL")
    op.add_column("api_keys", sa.Column("bootstrap", sa.Boolean(), nullable=False, server_default="false"))


def downgrade() -> None:
    op.drop_column("api_keys", "bootstrap")
    op.drop_index("ix_jobs_teacher_model", table_name="jobs")
    op.drop_index("ix_jobs_teacher_job", table_name="jobs")
    op.drop_column("jobs", "teacher_model_id")
    op.drop_column("jobs", "teacher_job_id")
