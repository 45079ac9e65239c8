"""A worker that owns several devices runs a job data-parallel: rank 0 in its job process (metrics,
stop, checkpoints, export), the other ranks in helper processes (gloo on the CPU here)."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import select, text
from worker_fixtures import get_job, insert_job, tiny_spec, wait_for_status, wait_until

from jobs.db import database
from jobs.repository import JobRepository
from jobs.storage import LocalStore
from jobs.tables import Artifact, MetricPoint

pytestmark = pytest.mark.slow


def _two_device_spec(**kwargs) -> dict:
    spec = tiny_spec("ce", **kwargs)
    spec["training"]["devices"] = 2
    return spec


def test_claim_skips_jobs_that_need_more_devices_than_the_worker_has(service_settings):
    job_id = insert_job(service_settings, _two_device_spec(), published=True)
    with database(service_settings).session() as session:  # nothing else queued in its way
        session.execute(text("UPDATE jobs SET status = 'cancelled', finished_at = now() "
                             "WHERE status = 'queued' AND id <> :id"), {"id": job_id})
    repo = JobRepository(database(service_settings))
    assert repo.claim_next("one-gpu", 30, 1_000_000, max_devices=1) is None
    claimed = repo.claim_next("two-gpus", 30, 1_000_000, max_devices=2)
    assert claimed is not None and str(claimed[0]) == job_id
    with database(service_settings).session() as session:
        session.execute(text("UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE id = :id"),
                        {"id": job_id})


def test_worker_with_two_devices_runs_a_two_process_job(service_settings, start_worker):
    worker = start_worker(HCD_WORKER_DEVICES="2")
    job_id = insert_job(service_settings, _two_device_spec(epochs=2, steps=4))
    job = wait_for_status(service_settings, job_id, ("succeeded", "failed"), 180, [worker])
    assert job.status == "succeeded", (job.error_code, job.error_message, worker.log()[-3000:])
    assert job.progress == {"epoch": 2, "epochs": 2, "step": 8, "total_steps": 8}
    with database(service_settings).session() as session:
        points = session.execute(select(MetricPoint).where(MetricPoint.job_id == job.id)).scalars().all()
        artifacts = {a.name: a for a in session.execute(select(Artifact).where(Artifact.job_id == job.id)).scalars()}
    # Rank 0 alone reports: one loss point per step (the mean over both ranks' halves of the batch).
    assert sorted(p.step for p in points if p.name == "loss") == list(range(1, 9))
    assert {p.epoch for p in points if p.name == "val_top1"} == {0, 1}
    card = json.loads((LocalStore(service_settings.data_dir).artifacts / artifacts["model_card.json"].path).read_text())
    assert card["spec"]["training"]["devices"] == 2


def test_cancelling_a_two_process_job_stops_every_rank(service_settings, start_worker):
    worker = start_worker(HCD_WORKER_DEVICES="2")
    job_id = insert_job(service_settings, _two_device_spec(epochs=50, steps=6))
    wait_until(lambda: (get_job(service_settings, job_id).progress or {}).get("step", 0) >= 3, 120, 0.2,
               "the job to train a few steps")
    with database(service_settings).session() as session:
        session.execute(text("UPDATE jobs SET status='cancelling', cancel_requested=true WHERE id=:id"),
                        {"id": uuid.UUID(job_id)})
    job = wait_for_status(service_settings, job_id, ("cancelled", "failed"), 60, [worker])
    assert job.status == "cancelled", (job.error_code, job.error_message)
    # The worker is free again: it takes and finishes the next job (no rank left behind holding it).
    nxt = insert_job(service_settings, tiny_spec("ce", epochs=1, steps=2))
    assert wait_for_status(service_settings, nxt, ("succeeded", "failed"), 90, [worker]).status == "succeeded"
