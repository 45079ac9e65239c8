"""Request and response documents of the API (also what /docs shows)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hcd_core.spec import JobSpec
from jobs.status import JobPhase, JobStatus


class SubmitJobRequest(BaseModel):
    """Body of `POST /jobs`: the engine's spec document under `spec`, plus optional user metadata."""

    model_config = ConfigDict(extra="forbid")
    spec: JobSpec
    metadata: dict[str, str] = Field(
        default_factory=dict, description="Free-form string labels (at most 32 keys, 64/512 chars)."
    )


class JobError(BaseModel):
    code: str
    message: str | None = None


class JobOut(BaseModel):
    id: uuid.UUID
    object: Literal["job"] = "job"
    status: JobStatus
    phase: JobPhase | None = Field(None, description="What a running attempt is doing; null once the job ended.")
    attempt: int
    max_attempts: int
    cancel_requested: bool
    progress: dict[str, Any] = Field(description='{"epoch", "epochs", "step", "total_steps"}')
    latest_metrics: dict[str, Any] = Field(description="{name: value}; null for a value that is NaN or ±Infinity.")
    result: dict[str, Any] | None = None
    error: JobError | None = None
    metadata: dict[str, str]
    spec: dict[str, Any] = Field(description="The resolved spec (recipe defaults filled in).")
    runtime_limit_seconds: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Page(BaseModel):
    has_more: bool
    next_cursor: str | None = Field(None, description="Pass as `after` to get the next page.")


class JobList(Page):
    data: list[JobOut]


class EventOut(BaseModel):
    id: int
    ts: datetime
    type: str
    attempt: int
    data: dict[str, Any]


class EventList(Page):
    data: list[EventOut]


class MetricPointOut(BaseModel):
    name: str
    value: float | None = Field(description="null when the value is not a finite number (NaN or ±Infinity).")
    step: int
    epoch: int
    timestamp: datetime


class MetricList(Page):
    data: list[MetricPointOut]


class ArtifactOut(BaseModel):
    name: str
    size: int
    sha256: str
    media_type: str
    url: str
    created_at: datetime


class ArtifactList(BaseModel):
    data: list[ArtifactOut]


class ModelOut(BaseModel):
    id: uuid.UUID
    object: Literal["model"] = "model"
    arch: str
    num_classes: int
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    filename: str
    size: int
    sha256: str
    created_at: datetime


class ModelList(Page):
    data: list[ModelOut]


class Health(BaseModel):
    status: str
    checks: dict[str, str] | None = None
