"""A real `hcd worker` runs jobs end to end against real Postgres and Redis (no API involved)."""

from __future__ import annotations

import hashlib
import json
import re

from sqlalchemy import select, text
from worker_fixtures import get_job, insert_job, job_events, tiny_spec, wait_for_status, wait_until

from jobs.db import database
from jobs.storage import LocalStore
from jobs.streams import redis_client, stream_key
from jobs.tables import Artifact, MetricPoint
from worker.celery_app import CeleryQueue


def test_committed_job_runs_to_success_with_metrics_and_artifacts(service_settings, start_worker):
    worker = start_worker()
    job_id = insert_job(service_settings, tiny_spec("ce", epochs=2, steps=5))  # the worker's relay publishes it

    job = wait_for_status(service_settings, job_id, ("succeeded", "failed"), 90, [worker])
    assert job.status == "succeeded", (job.error_code, job.error_message)
    assert job.attempt == 1 and job.finished_at is not None and job.lease_expires_at is None
    assert job.published_at is not None
    # A finished job shows no phase and its whole progress.
    assert job.phase is None
    assert job.progress == {"epoch": 2, "epochs": 2, "step": 10, "total_steps": 10}
    # Its checkpoint is gone (HCD_KEEP_CHECKPOINTS is off): only the exported files stay.
    assert not (LocalStore(service_settings.data_dir).checkpoints / job_id).exists()
    assert set(job.result) >= {"final_metrics", "best_metrics"}
    assert "val_top1" in job.result["final_metrics"] and "val_top1" in job.latest_metrics

    with database(service_settings).session() as session:
        points = session.execute(select(MetricPoint).where(MetricPoint.job_id == job.id)).scalars().all()
        artifacts = {a.name: a for a in session.execute(select(Artifact).where(Artifact.job_id == job.id)).scalars()}
    loss_steps = sorted(p.step for p in points if p.name == "loss")
    assert loss_steps == list(range(1, 11)) or loss_steps == list(range(0, 10))
    assert {p.epoch for p in points if p.name == "val_top1"} == {0, 1}

    assert {"student.safetensors", "model_card.json"} <= set(artifacts)
    for art in artifacts.values():
        data = (LocalStore(service_settings.data_dir).artifacts / art.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == art.sha256 and len(data) == art.size
    card = json.loads((LocalStore(service_settings.data_dir).artifacts / artifacts["model_card.json"].path).read_text())
    assert card["student_sha256"] == artifacts["student.safetensors"].sha256

    kinds = [(e.type, e.data.get("status") or e.data.get("phase")) for e in job_events(service_settings, job_id)]
    assert kinds[0] == ("status", "queued") and ("status", "running") in kinds
    assert ("phase", "training") in kinds and kinds[-1] == ("status", "succeeded")

    entries = redis_client(service_settings).xrange(stream_key(job_id))
    types = [fields[b"type"].decode() for _, fields in entries]
    assert types[-1] == "end" and "metrics" in types and "status" in types
    assert json.loads(entries[-1][1][b"data"]) == {"status": "succeeded"}
    assert redis_client(service_settings).ttl(stream_key(job_id)) > 0


def test_duplicate_delivery_is_a_no_op(service_settings, start_worker):
    worker = start_worker()
    job_id = insert_job(service_settings, tiny_spec("ce", epochs=1, steps=2))  # published by the relay
    CeleryQueue(service_settings).send(job_id)  # and once more: a duplicate delivery
    job = wait_for_status(service_settings, job_id, ("succeeded", "failed"), 90, [worker])
    assert job.status == "succeeded"
    # The second message is taken once the first attempt's child has exited; its claim must fail.
    wait_until(lambda: "not queued any more" in worker.log(), 30, 0.2, "the duplicate delivery")
    job = get_job(service_settings, job_id)
    assert job.attempt == 1 and job.status == "succeeded"


def test_busy_worker_does_not_hoard_the_next_job(service_settings, start_worker):
    """Prefetch 1 + one job per worker: a second job goes to the idle worker, not behind the first."""
    from worker_fixtures import get_job

    workers = [start_worker("worker-1"), start_worker("worker-2")]
    first = insert_job(service_settings, tiny_spec("ce", epochs=30, steps=10))
    wait_until(lambda: get_job(service_settings, first).status == "running", 30, 0.1, "the first job to start")
    second = insert_job(service_settings, tiny_spec("ce", epochs=1, steps=2))
    # Well within the publish grace: the relay's publish on commit, not a resend, starts it.
    wait_until(lambda: get_job(service_settings, second).status != "queued", 1.5, 0.05, "the idle worker")
    assert get_job(service_settings, first).status == "running"
    assert get_job(service_settings, first).worker_id != get_job(service_settings, second).worker_id
    with database(service_settings).session() as session:
        from sqlalchemy import text

        session.execute(text("UPDATE jobs SET status='cancelling', cancel_requested=true WHERE id=:id"), {"id": first})
    assert wait_for_status(service_settings, first, ("cancelled",), 30, workers).status == "cancelled"
    assert wait_for_status(service_settings, second, ("succeeded",), 60, workers).status == "succeeded"


def test_runtime_cap_and_bad_teacher_end_failed_with_stable_codes(service_settings, start_worker):
    import uuid as _uuid

    worker = start_worker()
    capped = insert_job(service_settings, tiny_spec("ce", epochs=200, steps=10), runtime_limit=3)
    teacher = {"arch": "test_resnet", "weights": {"source": "job", "job_id": str(_uuid.uuid4())}}
    missing_teacher = insert_job(service_settings, tiny_spec("hcd", arch="test_vit", teacher=teacher))

    job = wait_for_status(service_settings, capped, ("succeeded", "failed", "cancelled"), 60, [worker])
    assert (job.status, job.error_code) == ("failed", "runtime_limit"), job.error_message
    assert job.progress["step"] < 2000
    assert (LocalStore(service_settings.data_dir).checkpoints / capped / "checkpoint.pt").is_file()

    job = wait_for_status(service_settings, missing_teacher, ("succeeded", "failed"), 60, [worker])
    assert (job.status, job.error_code) == ("failed", "invalid_teacher")
    assert job.error_message == "teacher.weights.job_id: no such job of yours"
    last = job_events(service_settings, missing_teacher)[-1]
    assert last.data["status"] == "failed" and last.data["error_code"] == "invalid_teacher"


def test_unwritable_store_is_a_storage_error_retried_like_a_lost_worker(service_settings, start_worker):
    worker = start_worker()
    spec = tiny_spec("ce", epochs=1, steps=2)
    job_id = insert_job(service_settings, spec, max_attempts=2, published=True)  # the relay must not race us
    blocker = LocalStore(service_settings.data_dir).artifacts / job_id
    blocker.write_bytes(b"not a directory")  # every write into the job's folder fails
    try:
        with database(service_settings).session() as session:  # now let the relay publish it
            session.execute(text("UPDATE jobs SET published_at = NULL WHERE id = :id"), {"id": job_id})
        job = wait_for_status(service_settings, job_id, ("succeeded", "failed"), 90, [worker])
    finally:
        blocker.unlink()
    assert (job.status, job.error_code) == ("failed", "storage_error"), job.error_message
    assert job.attempt == 2  # handed back and retried once, like a lost worker
    assert "/" not in job.error_message and str(service_settings.data_dir) not in job.error_message
    requeued = [e for e in job_events(service_settings, job_id) if e.type == "requeued"]
    assert [e.data["reason"] for e in requeued] == ["storage_error"]


def test_missing_dataset_error_names_no_server_path(service_settings, start_worker):
    worker = start_worker()
    spec = tiny_spec("ce", epochs=1, steps=2)
    spec["dataset"] = {"name": "imagefolder", "root": "no-such-set", "image_size": 16}
    job_id = insert_job(service_settings, spec)
    job = wait_for_status(service_settings, job_id, ("succeeded", "failed"), 90, [worker])
    assert (job.status, job.error_code) == ("failed", "dataset_error")
    assert "no-such-set" in job.error_message  # the root as the user wrote it
    data_dir = str(service_settings.data_dir.resolve())
    assert data_dir not in job.error_message and not re.search(r"(^|\s)/\w", job.error_message), job.error_message
