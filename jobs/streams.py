"""The per-job Redis stream: the live tail that SSE clients follow (Postgres keeps the history).

Stream `hcd:job:<id>:events`, entries {"type": "metrics" | "status" | "end", "data": <json>}; the "end"
entry follows a terminal status and the stream then expires. Redis may be down: writers here never
raise for it, since a job must not fail because its live tail is unavailable.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis

from jobs.jsonutil import dumps
from jobs.settings import Settings
from jobs.status import TERMINAL, JobStatus

_log = logging.getLogger("hcd.streams")


def stream_key(job_id: uuid.UUID | str) -> str:
    return f"hcd:job:{job_id}:events"


@lru_cache(maxsize=16)
def _client(url: str) -> redis.Redis:
    # Short timeouts: a dead Redis must cost a writer a second, not a minute.
    return redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0, health_check_interval=10,
                                retry_on_timeout=False)


def redis_client(settings: Settings) -> redis.Redis:
    if not settings.redis_url:
        raise RuntimeError("HCD_REDIS_URL is not set")
    return _client(settings.redis_url)


def xadd(settings: Settings, job_id: uuid.UUID | str, type_: str, data: dict[str, Any]) -> None:
    """Append one entry; raises redis errors (callers that must not fail use StatusStream)."""
    fields = {"type": type_, "data": dumps(data).decode()}
    redis_client(settings).xadd(stream_key(job_id), fields,  # type: ignore[arg-type]
                                maxlen=settings.metrics_stream_maxlen, approximate=True)


@dataclass(frozen=True)
class Transition:
    """A job's status (or phase) after a change committed by the repository."""

    job_id: str
    status: JobStatus
    attempt: int
    phase: str | None = None


class StatusStream:
    """Writes a "status" entry for each committed transition (and "end" for a terminal one)."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def __call__(self, change: Transition) -> None:
        key = stream_key(change.job_id)
        maxlen = self.settings.metrics_stream_maxlen
        try:
            pipe = redis_client(self.settings).pipeline(transaction=False)
            status = {"status": change.status.value, "phase": change.phase, "attempt": change.attempt}
            pipe.xadd(key, {"type": "status", "data": json.dumps(status)}, maxlen=maxlen, approximate=True)
            if change.status in TERMINAL:
                end = json.dumps({"status": change.status.value})
                pipe.xadd(key, {"type": "end", "data": end}, maxlen=maxlen, approximate=True)
                pipe.expire(key, self.settings.metrics_stream_ttl_seconds)
            pipe.execute()
        except (redis.RedisError, OSError) as err:
            _log.info("status of job %s not streamed (Redis unavailable: %s)", change.job_id, err)

    def forget(self, job_id: uuid.UUID | str) -> None:
        """Drop a deleted job's stream (it would expire on its own)."""
        try:
            redis_client(self.settings).delete(stream_key(job_id))
        except (redis.RedisError, OSError):
            pass
