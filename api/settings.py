"""Service settings from `HCD_*` environment variables (pydantic-settings)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HCD_", extra="ignore")

    # None = start embedded servers in data_dir (`hcd up` only; api/worker need them set).
    database_url: str | None = None  # e.g. postgresql+psycopg://hcd@127.0.0.1:5432/hcd
    redis_url: str | None = None  # e.g. redis://127.0.0.1:6379/0
    data_dir: Path = Path("./hcd-data")  # artifacts/, checkpoints/, uploads/, datasets/, embedded/
    bootstrap_api_key: str | None = None  # when set: a key with this value exists for owner "admin"

    host: str = "127.0.0.1"
    port: int = 8000
    # uvicorn worker processes of `hcd up` / `hcd api` (one process uses at most one core: the GIL)
    api_workers: int = Field(default_factory=lambda: min(4, os.cpu_count() or 1), ge=1, le=64)

    # Queue and workers
    queue_name: str = "hcd-gpu"
    lease_seconds: int = Field(30, ge=3)  # a running job's lease; heartbeat every lease/3
    sweep_interval_seconds: float = Field(10.0, gt=0)
    publish_grace_seconds: float = Field(10.0, ge=0)  # unpublished this long -> re-published
    max_attempts: int = Field(3, ge=1, le=20)
    job_runtime_limit_seconds: int = Field(7 * 24 * 3600, ge=10)
    worker_device: str = "auto"  # auto | cpu | cuda | cuda:N

    # Limits
    max_active_jobs_per_owner: int = Field(4, ge=1)
    max_request_bytes: int = Field(1_000_000, ge=1024)
    max_upload_bytes: int = Field(2 * 1024**3, ge=1024)

    # Metrics
    metrics_min_interval_seconds: float = Field(0.5, ge=0)  # per-step points streamed at most this often
    metrics_stream_maxlen: int = Field(10_000, ge=100)
    metrics_stream_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"  # exported student files, per job

    @property
    def checkpoints_dir(self) -> Path:
        return self.data_dir / "checkpoints"  # internal training state, per job

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"  # uploaded teacher models

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"  # dataset roots in specs are confined under here


@lru_cache
def get_settings() -> Settings:
    return Settings()
