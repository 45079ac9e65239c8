"""The service while Postgres is down, hung, or away for several lease periods (real processes).

The API and the worker run as real processes against a Postgres of this module's own, which the tests
stop, restart, freeze (SIGSTOP) and thaw.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from api_helpers import PROBLEM, ce_spec
from pg_faults import FaultyPostgres
from sqlalchemy import select
from worker_fixtures import (
    HCD,
    get_job,
    insert_job,
    job_events,
    start_api,
    start_process,
    tiny_spec,
    wait_for_progress,
    wait_for_status,
    wait_until,
)

from jobs.db import database
from jobs.keys import create_key
from jobs.settings import Settings
from jobs.tables import MetricPoint

pytestmark = pytest.mark.slow
REQUEST_DEADLINE = 10.0  # every request must answer within this, whatever the database does


@pytest.fixture(scope="module")
def faulty_pg(tmp_path_factory):
    pg = FaultyPostgres.start_new(tmp_path_factory.mktemp("faulty-pg") / "pgdata")
    yield pg
    pg.close()


@pytest.fixture(scope="module")
def stack(faulty_pg, redis_url, tmp_path_factory):
    """A real `hcd api` on the faulty Postgres; yields (settings, env, base URL, API key)."""
    data_dir = tmp_path_factory.mktemp("faulty-data")
    settings = Settings(database_url=faulty_pg.url, redis_url=redis_url, data_dir=data_dir,
                        queue_name=f"hcd-faults-{uuid.uuid4().hex[:8]}", lease_seconds=6, sweep_interval_seconds=1.0,
                        publish_grace_seconds=2.0, metrics_min_interval_seconds=0.0, _env_file=None)
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("HCD_")}
    env.update(HCD_DATABASE_URL=settings.database_url, HCD_REDIS_URL=redis_url, HCD_DATA_DIR=str(data_dir),
               HCD_QUEUE_NAME=settings.queue_name, HCD_LEASE_SECONDS="6", HCD_SWEEP_INTERVAL_SECONDS="1",
               HCD_PUBLISH_GRACE_SECONDS="2", HCD_METRICS_MIN_INTERVAL_SECONDS="0")
    with database(settings).session() as session:
        key = create_key(session, "fault-tester")
    api, base = start_api("hcd api", env, tmp_path_factory.mktemp("faulty-api-logs"), workers=1, probe="/readyz")
    yield settings, env, base, key
    api.stop()


def _requests(base: str, job_id: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", "/jobs", None),
        ("GET", f"/jobs/{job_id}", None),
        ("POST", "/jobs", {"spec": ce_spec()}),
        ("GET", f"/jobs/{job_id}/events", None),
        ("GET", f"/jobs/{job_id}/metrics", None),
        ("GET", f"/jobs/{job_id}/artifacts", None),
        ("GET", "/models", None),
    ]


def _timed(client: httpx.Client, method: str, path: str, body: dict | None) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.request(method, path, json=body)
    return response, time.monotonic() - started


def _assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert elapsed < REQUEST_DEADLINE, f"{response.request.url} took {elapsed:.1f} s"
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["code"] == "database_unavailable" and int(response.headers["Retry-After"]) > 0, body


def _fresh_key(settings) -> str:
    with database(settings).session() as session:
        return create_key(session, f"uncached-{uuid.uuid4().hex[:6]}")


def _wait_recovered(client: httpx.Client, job_id: str, timeout: float = 30) -> None:
    wait_until(lambda: client.get(f"/jobs/{job_id}").status_code == 200, timeout, 0.5, "the API to recover")


def test_postgres_down_answers_503_then_recovers_by_itself(stack, faulty_pg):
    settings, _, base, key = stack
    uncached = _fresh_key(settings)  # never used before the outage: its lookup needs the database
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        job_id = client.post("/jobs", json={"spec": ce_spec()}).json()["id"]
        faulty_pg.stop()
        try:
            for method, path, body in _requests(base, job_id):
                _assert_unavailable(*_timed(client, method, path, body))
            response, elapsed = _timed(httpx.Client(base_url=base, timeout=30,
                                                    headers={"Authorization": f"Bearer {uncached}"}),
                                       "GET", f"/jobs/{job_id}", None)
            _assert_unavailable(response, elapsed)  # 503, not 401: the key may well be valid
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["postgres"].startswith("error")
        finally:
            faulty_pg.start()
        _wait_recovered(client, job_id)
        for method, path, body in _requests(base, job_id):
            assert client.request(method, path, json=body).status_code < 300, path
        assert client.get("/readyz").status_code == 200


def test_postgres_hung_every_request_answers_503_within_the_deadline(stack, faulty_pg):
    settings, _, base, key = stack
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        job_id = client.post("/jobs", json={"spec": ce_spec()}).json()["id"]
        faulty_pg.freeze()
        try:
            with ThreadPoolExecutor(8) as pool:
                timed = list(pool.map(lambda r: _timed(client, *r), _requests(base, job_id)))
            for response, elapsed in timed:
                _assert_unavailable(response, elapsed)
            response, elapsed = _timed(client, "GET", "/readyz", None)
            assert response.status_code == 503 and elapsed < REQUEST_DEADLINE
        finally:
            faulty_pg.thaw()
        _wait_recovered(client, job_id)
        assert client.get("/jobs").status_code == 200


def test_running_job_keeps_its_attempt_through_a_postgres_outage_of_several_leases(stack, faulty_pg, tmp_path):
    settings, env, _, _ = stack
    worker = start_process("worker", HCD + ["worker", "--log-level", "info"], {**env, "HCD_WORKER_DEVICE": "cpu"},
                           tmp_path)
    try:
        wait_until(lambda: "ready." in worker.log() or not worker.alive(), 60, 0.2, "the worker")
        spec = tiny_spec("ce", epochs=40, steps=10)
        job_id = insert_job(settings, spec)
        wait_for_progress(settings, job_id, min_epoch=2, timeout=90, workers=[worker])
        outage = 4 * settings.lease_seconds  # 24 s: about 4 leases without a renewal
        faulty_pg.stop()
        time.sleep(outage)
        faulty_pg.start()
        job = wait_for_status(settings, job_id, ("succeeded", "failed"), 180, [worker])
        assert job.status == "succeeded", (job.error_code, job.error_message, worker.log()[-3000:])
        assert job.attempt == 1  # the outage cost no attempt
        events = job_events(settings, job_id)
        assert not [e for e in events if e.type == "requeued"]
        restored = [e for e in events if e.type == "lease_restored"]
        assert restored and restored[0].data["outage_seconds"] >= outage - 2
        with database(settings).session() as session:
            steps = session.execute(select(MetricPoint.step).where(
                MetricPoint.job_id == uuid.UUID(job_id), MetricPoint.name == "loss")).scalars().all()
        assert sorted(steps) == list(range(1, 401))  # every point reached the history
    finally:
        worker.stop()
        if get_job(settings, job_id).status in ("queued", "running"):
            from sqlalchemy import text

            with database(settings).session() as session:
                session.execute(text("UPDATE jobs SET status='cancelled' WHERE id = :id"), {"id": job_id})
