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
    sweep_id: uuid.UUID | None = Field(None, description="The sweep this job is a run of, if any.")


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


class DatasetOut(BaseModel):
    id: uuid.UUID
    object: Literal["dataset"] = "dataset"
    name: str
    classes: list[str]
    num_classes: int
    num_train: int
    num_val: int
    filename: str
    size: int
    sha256: str
    created_at: datetime


class DatasetList(Page):
    data: list[DatasetOut]


class Health(BaseModel):
    status: str
    checks: dict[str, str] | None = None


class SubmitSweepRequest(BaseModel):
    """Body of `POST /sweeps`: a base spec, a grid of dotted spec paths to values, and seeds."""

    model_config = ConfigDict(extra="forbid")
    base: JobSpec
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description='{"method.temperature": [1, 4], "training.lr": [0.05, 0.1]}: the cells '
                                          "are the cartesian product, each run once per seed (at most 256 runs).")
    seeds: list[int] = Field(default_factory=lambda: [42], description="Default: the base spec's seed.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Labels given to every job of the sweep.")


class MetricSummary(BaseModel):
    mean: float | None
    std: float | None = Field(description="Sample standard deviation over the runs (0 for one run).")
    runs: int


class SweepCell(BaseModel):
    index: int
    values: dict[str, Any] = Field(description="The grid values of this cell, by dotted spec path.")
    job_ids: list[uuid.UUID]
    n: int
    succeeded: int
    val_top1: MetricSummary = Field(description="Final validation top-1 of the succeeded runs.")
    best_val_top1: MetricSummary


class SweepOut(BaseModel):
    id: uuid.UUID
    object: Literal["sweep"] = "sweep"
    status: JobStatus = Field(description="Derived from its jobs.")
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    seeds: list[int]
    metadata: dict[str, str]
    created_at: datetime
    runs: int
    counts: dict[str, int] = Field(description="Jobs by status.")
    cells: list[SweepCell] | None = Field(None, description="Per cell: its jobs and metrics (not in lists).")


class SweepList(Page):
    data: list[SweepOut]


class ProblemFieldError(BaseModel):
    loc: str = Field(description='The field at fault, dotted: "spec.method.temperature", "query.after".')
    msg: str
    type: str | None = Field(None, description="A machine code of the error kind, when known.")


class Problem(BaseModel):
    """An RFC 9457 problem document (`application/problem+json`): every error the API returns."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})
    type: str = Field(description="A URI naming the problem kind (one per `code`).")
    title: str = Field(description="The HTTP status' title.")
    status: int = Field(description="The HTTP status code.")
    code: str = Field(description="Stable machine code: `not_found`, `invalid_spec`, `database_unavailable`, ...")
    detail: str = Field(description="What went wrong, for a human.")
    instance: str | None = Field(None, description="The request path.")
    errors: list[ProblemFieldError] | None = Field(None, description="The fields at fault (validation problems).")
