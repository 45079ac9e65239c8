"""Housekeeping against real Postgres and Redis: the outbox relay, expired leases, attempt fencing."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text
from worker_fixtures import claim, get_job, insert_job, job_events, tiny_spec, wait_for_status

from jobs.db import database
from jobs.errors import FenceLost
from jobs.outbox import Housekeeper
from jobs.repository import JobRepository
from jobs.settings import Settings
from jobs.status import JobPhase, JobStatus
from worker.celery_app import CeleryQueue


def _expire_lease(settings, job_id: str) -> None:
    with database(settings).session() as session:
        session.execute(text("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = :id"),
                        {"id": job_id})


def _cancel(settings, job_id: str) -> None:
    """Leave no runnable job behind for the workers of later tests."""
    with database(settings).session() as session:
        session.execute(text("UPDATE jobs SET status='cancelled', finished_at=now() WHERE id=:id"), {"id": job_id})


@pytest.fixture
def repo(service_settings) -> JobRepository:
    return JobRepository(database(service_settings))


@pytest.fixture
def housekeeper(service_settings, repo) -> Housekeeper:
    keeper = Housekeeper(service_settings, repo, CeleryQueue(service_settings))
    keeper._healthy_since = time.monotonic() - service_settings.lease_seconds  # as if up for a lease already
    return keeper


def _messages_for(settings, job_id: str) -> int:
    import json

    from jobs.streams import redis_client

    messages = redis_client(settings).lrange(settings.queue_name, 0, -1)
    return sum(json.loads(m)["headers"]["id"] == job_id for m in messages)


def test_relay_publishes_once_and_resends_only_a_lost_message(service_settings, housekeeper):
    job_id = insert_job(service_settings, tiny_spec())  # no worker runs: nobody heard its NOTIFY
    try:
        assert get_job(service_settings, job_id).published_at is None
        assert housekeeper.relay() >= 1
        assert get_job(service_settings, job_id).published_at is not None
        assert _messages_for(service_settings, job_id) == 1
        housekeeper.relay()
        housekeeper.resend_lost()  # within the publish grace: nothing to resend
        assert _messages_for(service_settings, job_id) == 1
        time.sleep(service_settings.publish_grace_seconds + 0.2)
        housekeeper.resend_lost()  # its message still waits in the broker queue: no twin
        assert _messages_for(service_settings, job_id) == 1
        from jobs.streams import redis_client

        redis_client(service_settings).delete(service_settings.queue_name)  # Redis lost it
        time.sleep(service_settings.publish_grace_seconds + 0.2)
        housekeeper.resend_lost()
        assert _messages_for(service_settings, job_id) == 1
    finally:
        _cancel(service_settings, job_id)


def test_expired_lease_requeues_then_fails_with_worker_lost(service_settings, repo, housekeeper):
    job_id = insert_job(service_settings, tiny_spec(), max_attempts=2, published=True)
    try:
        first = claim(service_settings, job_id, "dead-worker-1")
        assert first == 1
        assert claim(service_settings, job_id, "other") is None  # the CAS admits one claimer
        _expire_lease(service_settings, job_id)
        counts = housekeeper.sweep()
        assert counts[JobStatus.QUEUED] == 1 and counts["published"] >= 1
        job = get_job(service_settings, job_id)
        assert job.status == "queued" and job.worker_id is None and job.published_at is not None

        # The stale attempt is fenced out of every write.
        with pytest.raises(FenceLost):
            repo.set_phase(job_id, first, JobPhase.TRAINING)
        assert repo.renew_lease(job_id, first, 30) is None

        second = claim(service_settings, job_id, "dead-worker-2")
        assert second == 2
        with pytest.raises(FenceLost):
            repo.set_phase(job_id, first, JobPhase.TRAINING)
        repo.set_phase(job_id, second, JobPhase.TRAINING)
        assert not repo.is_owner(job_id, first) and repo.is_owner(job_id, second)
        _expire_lease(service_settings, job_id)
        assert housekeeper.sweep()[JobStatus.FAILED] == 1
        job = get_job(service_settings, job_id)
        assert job.status == "failed" and job.error_code == "worker_lost" and job.finished_at is not None
        types = [(e.type, e.attempt, e.data.get("status")) for e in job_events(service_settings, job_id)]
        assert ("requeued", 1, "queued") in types and types[-1] == ("status", 2, "failed")
        assert housekeeper.sweep()[JobStatus.FAILED] == 0  # terminal states never change
    finally:
        if get_job(service_settings, job_id).status == "queued":
            _cancel(service_settings, job_id)


def test_expired_lease_of_cancelling_job_ends_cancelled(service_settings, repo, housekeeper):
    job_id = insert_job(service_settings, tiny_spec(), published=True)
    assert claim(service_settings, job_id, "dead-worker") == 1
    with database(service_settings).session() as session:
        session.execute(text("UPDATE jobs SET status='cancelling', cancel_requested=true WHERE id=:id"),
                        {"id": job_id})
    _expire_lease(service_settings, job_id)
    assert housekeeper.sweep()[JobStatus.CANCELLED] == 1
    assert get_job(service_settings, job_id).status == "cancelled"


def test_no_lease_is_declared_lost_until_the_database_was_seen_healthy_for_a_lease(service_settings, repo):
    """After a database outage a live attempt gets a whole lease period to renew before the sweep acts."""
    settings = Settings(**{**service_settings.model_dump(), "lease_seconds": 3})
    keeper = Housekeeper(settings, repo, CeleryQueue(settings))
    job_id = insert_job(settings, tiny_spec(), published=True)
    try:
        assert claim(settings, job_id, "slow-worker") == 1
        _expire_lease(settings, job_id)
        keeper._database_ok()  # the database just came back
        assert keeper.sweep()[JobStatus.QUEUED] == 0
        assert get_job(settings, job_id).status == "running"
        time.sleep(settings.lease_seconds + 0.1)
        assert keeper.sweep()[JobStatus.QUEUED] == 1
    finally:
        _cancel(settings, job_id)


def test_worker_relay_publishes_a_job_committed_while_no_worker_ran(service_settings, start_worker):
    job_id = insert_job(service_settings, tiny_spec("ce", epochs=1, steps=2))  # its NOTIFY reached nobody
    worker = start_worker()
    job = wait_for_status(service_settings, job_id, ("succeeded", "failed"), 90, [worker])
    assert job.status == "succeeded" and job.attempt == 1 and job.published_at is not None


def test_a_stale_attempt_cannot_replace_the_checkpoint_of_a_newer_one(service_settings, repo):
    """The ownership check sits between writing the temporary file and the rename (item 12)."""
    import uuid

    import torch

    from hcd_core.checkpoint import save_checkpoint
    from jobs.storage import LocalStore
    from worker.runner import Attempt

    job_id = insert_job(service_settings, tiny_spec(), published=True)
    try:
        assert claim(service_settings, job_id, "frozen-worker") == 1
        stale = Attempt(service_settings, repo.load_attempt(uuid.UUID(job_id)))
        # Attempt 1 froze; its lease was given up and attempt 2 took the job and checkpointed.
        assert repo.hand_back(job_id, 1, reason="lease_expired") is not None
        assert claim(service_settings, job_id, "new-worker") == 2
        current = Attempt(service_settings, repo.load_attempt(uuid.UUID(job_id)))
        folder = LocalStore(service_settings.data_dir).checkpoint_dir(job_id)
        folder.mkdir(parents=True)
        path = folder / "checkpoint.pt"
        path.write_bytes(b"attempt 2's checkpoint")

        with pytest.raises(FenceLost):
            save_checkpoint(path, {"weights": torch.zeros(3)}, before_replace=stale.checkpoint_guard)
        assert path.read_bytes() == b"attempt 2's checkpoint"
        assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt"]  # no temporary file left

        save_checkpoint(path, {"weights": torch.ones(3)}, before_replace=current.checkpoint_guard)
        assert torch.load(path, weights_only=True)["weights"].sum() == 3
    finally:
        _cancel(service_settings, job_id)
