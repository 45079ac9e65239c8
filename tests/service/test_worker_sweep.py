"""The sweep against real Postgres and Redis: lost publishes, expired leases, attempt fencing."""

from __future__ import annotations

import time

from sqlalchemy import text

from api.db import session_scope
from worker.jobs_db import fenced_update
from worker.sweep import sweep_once
from worker.tasks import claim_job
from worker_fixtures import get_job, insert_job, job_events, tiny_spec, wait_for_status


def _expire_lease(settings, job_id: str) -> None:
    with session_scope(settings.database_url) as session:
        session.execute(text("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = :id"),
                        {"id": job_id})


def _cancel(settings, job_id: str) -> None:
    """Leave no runnable job behind for the workers of later tests."""
    with session_scope(settings.database_url) as session:
        session.execute(text("UPDATE jobs SET status='cancelled', finished_at=now() WHERE id=:id"), {"id": job_id})


def test_unpublished_job_is_republished_once_while_its_message_waits(service_settings):
    job_id = insert_job(service_settings, tiny_spec())
    try:
        assert sweep_once(service_settings)["republished"] == 0  # still within the publish grace
        time.sleep(service_settings.publish_grace_seconds + 0.2)
        assert sweep_once(service_settings)["republished"] == 1
        assert get_job(service_settings, job_id).published_at is not None
        time.sleep(service_settings.publish_grace_seconds + 0.2)
        # Its message is still waiting in the broker queue: no twin is sent.
        assert sweep_once(service_settings)["republished"] == 0
    finally:
        _cancel(service_settings, job_id)


def test_expired_lease_requeues_then_fails_with_worker_lost(service_settings):
    job_id = insert_job(service_settings, tiny_spec(), max_attempts=2, published=True)
    try:
        first = claim_job(service_settings, job_id, "dead-worker-1")
        assert first == 1
        assert claim_job(service_settings, job_id, "other") is None  # the CAS admits one claimer
        _expire_lease(service_settings, job_id)
        counts = sweep_once(service_settings)
        assert counts["requeued"] == 1 and counts["republished"] >= 1
        job = get_job(service_settings, job_id)
        assert job.status == "queued" and job.worker_id is None and job.published_at is not None

        # The stale attempt is fenced out of every write.
        with session_scope(service_settings.database_url) as session:
            assert fenced_update(session, job_id, first, {"phase": "training"}) is None

        second = claim_job(service_settings, job_id, "dead-worker-2")
        assert second == 2
        with session_scope(service_settings.database_url) as session:
            assert fenced_update(session, job_id, first, {"phase": "training"}) is None
            assert fenced_update(session, job_id, second, {"phase": "training"}) is not None
        _expire_lease(service_settings, job_id)
        assert sweep_once(service_settings)["failed"] == 1
        job = get_job(service_settings, job_id)
        assert job.status == "failed" and job.error_code == "worker_lost" and job.finished_at is not None
        types = [(e.type, e.attempt, e.data.get("status")) for e in job_events(service_settings, job_id)]
        assert ("requeued", 1, "queued") in types and types[-1] == ("status", 2, "failed")
        assert sweep_once(service_settings)["failed"] == 0  # terminal states never change
    finally:
        if get_job(service_settings, job_id).status == "queued":
            _cancel(service_settings, job_id)


def test_expired_lease_of_cancelling_job_ends_cancelled(service_settings):
    job_id = insert_job(service_settings, tiny_spec(), published=True)
    assert claim_job(service_settings, job_id, "dead-worker") == 1
    with session_scope(service_settings.database_url) as session:
        session.execute(text("UPDATE jobs SET status='cancelling', cancel_requested=true WHERE id=:id"),
                        {"id": job_id})
    _expire_lease(service_settings, job_id)
    assert sweep_once(service_settings)["cancelled"] == 1
    assert get_job(service_settings, job_id).status == "cancelled"


def test_worker_sweep_publishes_a_job_whose_publish_was_lost(service_settings, start_worker):
    worker = start_worker()
    job_id = insert_job(service_settings, tiny_spec("ce", epochs=1, steps=2))  # committed, never published
    job = wait_for_status(service_settings, job_id, ("succeeded", "failed"), 90, [worker])
    assert job.status == "succeeded" and job.attempt == 1 and job.published_at is not None
