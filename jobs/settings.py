"""Service settings from `HCD_*` environment variables (pydantic-settings); one class for every process."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

API_KEY_PREFIX = "hcd_"
# What `jobs.keys.generate_key` makes (token_urlsafe) and what a bootstrap key must look like.
API_KEY_PATTERN = re.compile(r"^hcd_[A-Za-z0-9_-]{16,250}$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HCD_", extra="ignore")

    # None = start embedded servers in data_dir (`hcd up` only; api/worker need them set).
    database_url: str | None = None  # e.g. postgresql+psycopg://hcd@127.0.0.1:5432/hcd
    redis_url: str | None = None  # e.g. redis://127.0.0.1:6379/0
    data_dir: Path = Path("./hcd-data")  # artifacts/, checkpoints/, uploads/, datasets/, embedded/
    # Object storage (docs/storage.md). None: artifacts, checkpoints and uploads live under data_dir
    # (one directory, shared by every host through a mount). "s3://bucket/prefix": an S3-compatible
    # store, configured by the standard AWS_* variables (AWS_ENDPOINT_URL for MinIO, Ceph, R2...).
    storage_url: str | None = None
    # With an object store: this host's own scratch (exports and checkpoints being written, the teacher
    # cache, uploads being received). Default: data_dir/work.
    work_dir: Path | None = None
    # Presigned download URLs (`?redirect=true`): their lifetime, and the endpoint clients reach the
    # store at when it differs from AWS_ENDPOINT_URL (e.g. http://localhost:9000 for compose's MinIO).
    presigned_url_seconds: int = Field(300, ge=10, le=7 * 24 * 3600)
    storage_public_endpoint_url: str | None = None
    # The worker's teacher cache (by sha256) is trimmed to this size, least recently used first.
    teacher_cache_max_gb: float = Field(20.0, gt=0)
    # When set: a key with this value exists for owner "admin" (a new value revokes the previous one).
    bootstrap_api_key: str | None = None

    host: str = "127.0.0.1"
    port: int = 8000
    # uvicorn worker processes of `hcd up` / `hcd api` (one process uses at most one core: the GIL)
    api_workers: int = Field(default_factory=lambda: min(4, os.cpu_count() or 1), ge=1, le=64)

    # Database: every request answers within request_timeout_seconds, also when Postgres hangs.
    db_connect_timeout_seconds: int = Field(3, ge=1, le=60)
    db_statement_timeout_ms: int = Field(5000, ge=100)
    db_pool_timeout_seconds: float = Field(3.0, gt=0)
    request_timeout_seconds: float = Field(9.0, gt=0)
    database_retry_after_seconds: int = Field(5, ge=1)  # Retry-After of a 503 database_unavailable

    # Queue and workers
    queue_name: str = "hcd-gpu"
    lease_seconds: int = Field(30, ge=3)  # a running job's lease; heartbeat every min(lease/3, 2 s)
    # A job keeps training while the database is unreachable for up to this long, then gives up.
    max_db_outage_seconds: float = Field(600.0, gt=0)
    sweep_interval_seconds: float = Field(10.0, gt=0)
    publish_grace_seconds: float = Field(10.0, ge=0)  # published this long ago, still queued, not in Redis: resend
    max_attempts: int = Field(3, ge=1, le=20)
    job_runtime_limit_seconds: int = Field(7 * 24 * 3600, ge=10)
    worker_device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Devices (GPUs; processes on the CPU) one job may use on this worker: it claims only jobs whose
    # training.devices is at most this (`hcd worker --gpus 0,1,2,3` sets 4).
    worker_devices: int = Field(1, ge=1, le=64)
    keep_checkpoints: bool = False  # keep training checkpoints after a job succeeds

    # Limits
    # Fair scheduling: an owner runs at most this many jobs at once (the rest wait their turn)...
    max_running_jobs_per_owner: int = Field(4, ge=1)
    # ...and may have at most this many waiting (submissions beyond it get 429).
    max_queued_jobs_per_owner: int = Field(1000, ge=1)
    max_request_bytes: int = Field(1_000_000, ge=1024)
    max_upload_bytes: int = Field(2 * 1024**3, ge=1024)
    # Uploaded datasets: the archive's size, its number of files and its size once unpacked.
    max_dataset_bytes: int = Field(10 * 1024**3, ge=1)
    max_dataset_files: int = Field(200_000, ge=1)
    max_dataset_unpacked_bytes: int = Field(20 * 1024**3, ge=1)
    body_idle_timeout_seconds: float = Field(15.0, gt=0)  # a request body silent this long is dropped
    max_job_memory_gb: float = Field(16.0, gt=0)  # host memory a job's data and batches may need (at least)

    # Metrics
    metrics_min_interval_seconds: float = Field(0.5, ge=0)  # per-step points streamed at most this often
    metrics_stream_maxlen: int = Field(10_000, ge=100)
    metrics_stream_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)

    # Observability
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line (jobs.logs)
    # `hcd worker` serves its own Prometheus metrics on this port (0: off); bind address below.
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    worker_metrics_host: str = "127.0.0.1"

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_log_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("storage_url", "storage_public_endpoint_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        scheme, sep, rest = value.partition("://")
        bucket = rest.split("/", 1)[0]
        if scheme.lower() != "s3" or not sep or not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise ValueError("HCD_STORAGE_URL must look like s3://bucket or s3://bucket/prefix (unset: HCD_DATA_DIR)")
        return value

    @field_validator("bootstrap_api_key")
    @classmethod
    def _check_bootstrap_key(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not API_KEY_PATTERN.match(value):
            raise ValueError(
                "HCD_BOOTSTRAP_API_KEY must start with 'hcd_' followed by 16-250 letters, digits, '_' or '-' "
                "(e.g. hcd_$(openssl rand -hex 24))"
            )
        return value

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"  # dataset roots in specs are confined under here

    @property
    def local_work_dir(self) -> Path:
        return self.work_dir if self.work_dir is not None else self.data_dir / "work"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def describe_settings_error(err: Exception) -> str:
    """One readable line per invalid HCD_* variable (for the commands that start the service)."""
    errors = getattr(err, "errors", None)
    if not callable(errors):
        return str(err)
    lines = []
    for item in errors():
        name = "HCD_" + "_".join(str(part) for part in item.get("loc", ())).upper()
        message = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        lines.append(f"{name}: {message}")
    return "; ".join(lines) or str(err)
