"""The per-job Redis stream (live tail for SSE). Redis may be down: callers decide whether to care."""

from __future__ import annotations

import json
import math
import uuid
from functools import lru_cache
from typing import Any

import redis

from api.settings import Settings


def stream_key(job_id: uuid.UUID | str) -> str:
    return f"hcd:job:{job_id}:events"


@lru_cache(maxsize=16)
def _client(url: str) -> redis.Redis:
    # Short timeouts: a dead Redis must cost the worker a second, not a minute.
    return redis.Redis.from_url(
        url, socket_connect_timeout=1.0, socket_timeout=2.0, health_check_interval=10,
        retry_on_timeout=False,
    )


def redis_client(settings: Settings) -> redis.Redis:
    if not settings.redis_url:
        raise RuntimeError("HCD_REDIS_URL is not set")
    return _client(settings.redis_url)


def json_safe(value: Any) -> Any:
    """JSON cannot carry NaN/inf: they become null (the Postgres history keeps the raw value)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def xadd(client: redis.Redis, settings: Settings, job_id: uuid.UUID | str, type_: str, data: dict) -> bytes:
    """Append one entry {type, data=json}; raises redis errors."""
    fields = {"type": type_, "data": json.dumps(json_safe(data), separators=(",", ":"))}
    return client.xadd(stream_key(job_id), fields, maxlen=settings.metrics_stream_maxlen, approximate=True)


def xadd_end(client: redis.Redis, settings: Settings, job_id: uuid.UUID | str, status: str) -> None:
    """The terminal entry, then the stream's expiry."""
    pipe = client.pipeline(transaction=False)
    fields = {"type": "end", "data": json.dumps({"status": status})}
    pipe.xadd(stream_key(job_id), fields, maxlen=settings.metrics_stream_maxlen, approximate=True)
    pipe.expire(stream_key(job_id), settings.metrics_stream_ttl_seconds)
    pipe.execute()


def best_effort_status(settings: Settings, job_id, status: str, phase: str | None, attempt: int,
                       terminal: bool = False) -> bool:
    """A "status" entry (and "end" for terminal states) when Redis answers; False otherwise."""
    try:
        client = redis_client(settings)
        xadd(client, settings, job_id, "status", {"status": status, "phase": phase, "attempt": attempt})
        if terminal:
            xadd_end(client, settings, job_id, status)
        return True
    except (redis.RedisError, OSError):
        return False
