"""The periodic sweep (runs in every worker's main process; safe to run in many at once).

- A queued job whose message was never sent (or was lost with Redis) is published again.
- A running/cancelling job whose lease expired lost its worker: cancelling -> cancelled; otherwise
  back to queued (resumes from its checkpoint) while attempts remain, else failed 'worker_lost'.
Rows are taken with FOR UPDATE SKIP LOCKED, so two sweeps never handle the same job.
"""

from __future__ import annotations

import json
import logging
import threading

import redis
from sqlalchemy import text

from api.db import session_scope
from api.settings import Settings
from worker.jobs_db import record_event
from worker.publish import send_job_message
from worker.streams import best_effort_status, redis_client

_log = logging.getLogger("hcd.worker.sweep")
_BATCH = 200
_QUEUE_SCAN_MAX = 10_000


def _ids_waiting_in_broker(settings: Settings) -> set[str] | None:
    """Task ids of the messages sitting in the Redis queue list; None when Redis cannot tell."""
    try:
        raw = redis_client(settings).lrange(settings.queue_name, 0, _QUEUE_SCAN_MAX - 1)
    except (redis.RedisError, OSError):
        return None
    ids = set()
    for item in raw:
        try:
            ids.add(json.loads(item)["headers"]["id"])
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def _expire_leases(settings: Settings) -> tuple[dict, list[str], list[tuple[str, str, int]]]:
    counts = {"requeued": 0, "failed": 0, "cancelled": 0}
    requeued: list[str] = []
    stream_updates: list[tuple[str, str, int]] = []
    with session_scope(settings.database_url) as session:
        rows = session.execute(text(
            "SELECT id, status, attempt, max_attempts FROM jobs "
            "WHERE status IN ('running', 'cancelling') AND lease_expires_at < now() "
            "ORDER BY lease_expires_at LIMIT :n FOR UPDATE SKIP LOCKED"
        ), {"n": _BATCH}).all()
        for job_id, status, attempt, max_attempts in rows:
            job_id = str(job_id)
            if status == "cancelling":
                session.execute(text(
                    "UPDATE jobs SET status='cancelled', finished_at=now(), lease_expires_at=NULL, "
                    "updated_at=now() WHERE id=:id"), {"id": job_id})
                record_event(session, job_id, attempt, "status", {"status": "cancelled", "reason": "lease_expired"})
                counts["cancelled"] += 1
                stream_updates.append((job_id, "cancelled", attempt))
            elif attempt < max_attempts:
                session.execute(text(
                    "UPDATE jobs SET status='queued', cancel_requested=false, worker_id=NULL, phase=NULL, "
                    "lease_expires_at=NULL, published_at=NULL, updated_at=now() WHERE id=:id"), {"id": job_id})
                record_event(session, job_id, attempt, "requeued",
                             {"status": "queued", "reason": "lease_expired", "attempts_used": attempt})
                counts["requeued"] += 1
                requeued.append(job_id)
                stream_updates.append((job_id, "queued", attempt))
            else:
                message = f"the worker stopped renewing its lease; {attempt} of {max_attempts} attempts used"
                session.execute(text(
                    "UPDATE jobs SET status='failed', error_code='worker_lost', error_message=:msg, "
                    "finished_at=now(), lease_expires_at=NULL, updated_at=now() WHERE id=:id"),
                    {"id": job_id, "msg": message})
                record_event(session, job_id, attempt, "status",
                             {"status": "failed", "error_code": "worker_lost", "error_message": message})
                counts["failed"] += 1
                stream_updates.append((job_id, "failed", attempt))
    return counts, requeued, stream_updates


def _claim_unpublished(settings: Settings) -> list[str]:
    """Queued jobs with no recent message, marked as published now (so other sweeps skip them)."""
    waiting = _ids_waiting_in_broker(settings)
    with session_scope(settings.database_url) as session:
        rows = session.execute(text(
            "SELECT id FROM jobs WHERE status = 'queued' AND ("
            " (published_at IS NULL AND created_at < now() - make_interval(secs => :grace))"
            " OR published_at < now() - make_interval(secs => :grace)) "
            "ORDER BY created_at LIMIT :n FOR UPDATE SKIP LOCKED"
        ), {"grace": float(settings.publish_grace_seconds), "n": _BATCH}).scalars().all()
        ids = [str(r) for r in rows]
        if waiting is not None:  # a message still waiting in Redis needs no twin
            ids = [i for i in ids if i not in waiting]
            in_queue = [str(r) for r in rows if str(r) in waiting]
            if in_queue:
                session.execute(text("UPDATE jobs SET published_at=now() WHERE id = ANY(CAST(:ids AS uuid[]))"),
                                {"ids": in_queue})
        if ids:
            session.execute(text("UPDATE jobs SET published_at=now() WHERE id = ANY(CAST(:ids AS uuid[]))"),
                            {"ids": ids})
    return ids


def sweep_once(settings: Settings) -> dict[str, int]:
    """One pass; returns counts {republished, requeued, failed, cancelled}."""
    counts, requeued, stream_updates = _expire_leases(settings)
    for job_id, status, attempt in stream_updates:
        best_effort_status(settings, job_id, status, None, attempt, terminal=status != "queued")
    republished = 0
    for job_id in requeued + _claim_unpublished(settings):
        if send_job_message(settings, job_id):
            republished += 1
            if job_id in requeued:
                with session_scope(settings.database_url) as session:
                    session.execute(text("UPDATE jobs SET published_at=now() WHERE id=:id"), {"id": job_id})
    counts["republished"] = republished
    if any(counts.values()):
        _log.info("sweep: %s", counts)
    return counts


class SweepThread(threading.Thread):
    """Runs sweep_once every settings.sweep_interval_seconds until stopped; errors are logged."""

    def __init__(self, settings: Settings):
        super().__init__(name="hcd-sweep", daemon=True)
        self.settings = settings
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.settings.sweep_interval_seconds):
            try:
                sweep_once(self.settings)
            except Exception as err:  # Postgres down for a moment: try again next round
                _log.warning("sweep failed: %s", err)

    def stop(self) -> None:
        self._halt.set()
