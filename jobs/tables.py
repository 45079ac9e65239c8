"""Postgres schema (SQLAlchemy 2). Postgres is the source of truth for jobs; Celery only delivers.

Schema changes go through Alembic (migrations/); never `create_all` in production code. State changes
go through jobs.repository only.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from jobs.status import ACTIVE_PREDICATE, JobStatus, sql_in


class Base(DeclarativeBase):
    pass


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)  # sha256 hex
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)  # first chars, for display
    # The key of HCD_BOOTSTRAP_API_KEY: a new value revokes the previous bootstrap key.
    bootstrap: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default="false")
    created_at: Mapped[datetime] = _now()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(128), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=JobStatus.QUEUED.value)  # JobStatus
    phase: Mapped[str | None] = mapped_column(String(32))  # JobPhase while an attempt runs
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)  # bumped by each claim
    max_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=3)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)  # resolved spec (recipe filled in)
    # The teacher this job distils from, when it is a job or an uploaded model of the service:
    # neither can be deleted while this job is active.
    teacher_job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    teacher_model_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))  # an uploaded dataset it reads
    # A job of a sweep: the sweep and the index of its cell.
    sweep_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey("sweeps.id"))
    sweep_cell: Mapped[int | None] = mapped_column(Integer)
    job_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, nullable=False, default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)  # epoch, step, total_steps
    latest_metrics: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # final and best metrics
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    runtime_limit_seconds: Mapped[int] = mapped_column(Integer, nullable=False)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # outbox marker
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))  # sha256 of the submitted body
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_jobs_owner_created", "owner", "created_at", "id"),
        Index("ix_jobs_status", "status"),
        # The per-owner active-job cap counts these rows on every submit.
        Index("ix_jobs_owner_active", "owner", postgresql_where=ACTIVE_PREDICATE),
        Index("ix_jobs_teacher_job", "teacher_job_id", postgresql_where="teacher_job_id IS NOT NULL"),
        Index("ix_jobs_teacher_model", "teacher_model_id", postgresql_where="teacher_model_id IS NOT NULL"),
        Index("ix_jobs_dataset", "dataset_id", postgresql_where="dataset_id IS NOT NULL"),
        Index("ix_jobs_sweep", "sweep_id", "sweep_cell", postgresql_where="sweep_id IS NOT NULL"),
        # The fair claim scans the queued jobs, oldest first, and when each owner was last served.
        Index("ix_jobs_queued", "created_at", postgresql_where=sql_in([JobStatus.QUEUED])),
        Index("ix_jobs_owner_started", "owner", "started_at"),
        Index(
            "uq_jobs_owner_idempotency", "owner", "idempotency_key", unique=True,
            postgresql_where="idempotency_key IS NOT NULL",
        ),
    )


class Sweep(Base):
    """A grid of spec values x seeds; each run is an ordinary job (jobs.sweep_id). Its status is derived."""

    __tablename__ = "sweeps"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(128), nullable=False)
    base: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)  # the base spec as submitted
    grid: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)  # {dotted path: [values]}
    seeds: Mapped[list[int]] = mapped_column(JSONB, nullable=False)
    cells: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False)  # [{"index", "values"}]
    sweep_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, nullable=False, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _now()

    __table_args__ = (
        Index("ix_sweeps_owner_created", "owner", "created_at", "id"),
        Index("uq_sweeps_owner_idempotency", "owner", "idempotency_key", unique=True,
              postgresql_where="idempotency_key IS NOT NULL"),
    )


class JobEvent(Base):
    """Every state transition and notable event of a job (the events endpoint)."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    ts: Mapped[datetime] = _now()
    type: Mapped[str] = mapped_column(String(64), nullable=False)  # e.g. status, phase, requeued
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)


class MetricPoint(Base):
    """MLflow-style metric history; (job, name, step) is unique so re-sent batches are no-ops."""

    __tablename__ = "metric_points"
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    value: Mapped[float] = mapped_column(Double, nullable=False)
    epoch: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class Artifact(Base):
    __tablename__ = "artifacts"
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(128), primary_key=True)  # student.safetensors, ...
    path: Mapped[str] = mapped_column(Text, nullable=False)  # a key of the artifact store
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    media_type: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = _now()


class UploadedModel(Base):
    """A teacher uploaded as safetensors; usable as `{"source": "model", "model_id": ...}`."""

    __tablename__ = "uploaded_models"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    arch: Mapped[str] = mapped_column(String(128), nullable=False)
    num_classes: Mapped[int] = mapped_column(Integer, nullable=False)
    image_size: Mapped[int | None] = mapped_column(Integer)
    mean: Mapped[list[float] | None] = mapped_column(JSONB)
    std: Mapped[list[float] | None] = mapped_column(JSONB)
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False)  # a key of the artifact store
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = _now()


class UploadedDataset(Base):
    """An image-folder dataset uploaded as an archive (checked by `jobs.archives`); usable as
    `{"name": "imagefolder", "dataset_id": ...}`."""

    __tablename__ = "datasets"
    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    owner: Mapped[str] = mapped_column(String(128), nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    path: Mapped[str] = mapped_column(Text, nullable=False)  # a key of the artifact store (uploads area)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    classes: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    num_train: Mapped[int] = mapped_column(Integer, nullable=False)
    num_val: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = _now()

    __table_args__ = (Index("ix_datasets_owner_created", "owner", "created_at", "id"),)
