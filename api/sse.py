"""Server-Sent Events from a job's Redis stream (written by the worker), resumable by entry id.

Stream f"hcd:job:{job_id}:events", entries {"type": ..., "data": <json>}. Each entry becomes an SSE
event with id = entry id, so a client reconnecting with Last-Event-ID continues after it. The
stream closes after the "end" entry, or when Postgres says the job is over and the stream has
nothing more (Redis may have lost the stream); comments keep idle connections alive.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import AsyncIterator, Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from jobs.status import TERMINAL, JobStatus
from jobs.streams import stream_key

ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def format_event(data: str, *, event: str | None = None, event_id: str | None = None) -> str:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in (data.splitlines() or [""]))
    return "\n".join(lines) + "\n\n"


def _stream_entries(reply: object) -> list[tuple[str, dict[str, str]]]:
    """(entry id, fields) of an XREAD reply, in order, as the API's async client returns it: strings
    (decode_responses=True) in RESP2's shape [[key, [(entry id, {field: value}), ...]], ...]."""
    if not isinstance(reply, list):
        raise TypeError(f"unexpected XREAD reply {type(reply).__name__}: expected RESP2's list of [key, entries]")
    out: list[tuple[str, dict[str, str]]] = []
    for _key, entries in reply:
        for entry_id, fields in entries:
            out.append((entry_id, fields))
    return out


async def job_event_stream(
    client: aioredis.Redis,
    job_id: uuid.UUID,
    last_id: str,
    job_status: Callable[[], Awaitable[JobStatus | None]],
    *,
    block_ms: int = 1000,
    keepalive_seconds: float = 15.0,
    idle_checks_before_end: int = 1,
) -> AsyncIterator[str]:
    """SSE text chunks until the job's end. `job_status` reads the status from Postgres."""
    key = stream_key(job_id)
    yield "retry: 1000\n\n"
    last_sent = time.monotonic()
    while True:
        try:
            reply: object = await client.xread({key: last_id}, count=200, block=block_ms)
        except (RedisError, OSError):
            reply = None  # Redis down: keep the connection, retry; Postgres still says when it ends
            await asyncio.sleep(min(1.0, block_ms / 1000))
        if reply:
            chunks = []
            for entry_id, fields in _stream_entries(reply):
                last_id = entry_id
                kind = fields.get("type", "message")
                chunks.append(format_event(fields.get("data", "{}"), event=kind, event_id=entry_id))
                if kind == "end":
                    yield "".join(chunks)
                    return
            yield "".join(chunks)
            last_sent = time.monotonic()
            continue
        try:
            status = await job_status()
            ended = status is None or status in TERMINAL
        except Exception:  # noqa: BLE001 - the database is unavailable: keep the stream open, ask again
            status, ended = None, False
        if ended:
            # Nothing more in the stream and the job is over (or gone): say so and close.
            yield format_event(f'{{"status": "{status or "deleted"}", "source": "database"}}',
                               event="end")
            return
        if time.monotonic() - last_sent >= keepalive_seconds:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
