"""Submit (publish, idempotency, cap), list (cursor pagination), get, cancel, delete, events."""

from __future__ import annotations

import json
import threading
import uuid

import psycopg
import redis
from api_helpers import add_artifact, assert_problem, ce_spec, hcd_spec, insert_job
from fastapi.testclient import TestClient

from api.app import create_app
from jobs.db import database, libpq_url
from jobs.outbox import Housekeeper
from jobs.repository import QUEUED_CHANNEL, JobRepository
from jobs.storage import LocalStore
from jobs.tables import Job, JobEvent
from worker.celery_app import CeleryQueue


def _submit(client, headers, spec=None, **kw):
    return client.post("/jobs", json={"spec": spec or ce_spec(), **kw}, headers=headers)


def test_submit_commits_the_job_and_wakes_the_outbox_relay(api_client, auth_headers, service_settings):
    listener = psycopg.connect(libpq_url(service_settings.database_url), autocommit=True)
    listener.execute(f"LISTEN {QUEUED_CHANNEL}")
    r = _submit(api_client, auth_headers, metadata={"team": "vision"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["attempt"] == 0 and job["error"] is None
    assert job["metadata"] == {"team": "vision"}
    assert job["spec"]["training"]["optimizer"]  # resolved: recipe defaults filled in
    assert job["max_attempts"] == service_settings.max_attempts
    for key in ("phase", "progress", "latest_metrics", "result", "created_at", "updated_at",
                "started_at", "finished_at"):
        assert key in job
    assert api_client.get(f"/jobs/{job['id']}", headers=auth_headers).json() == job

    # The commit woke the relays (NOTIFY); the API itself sends nothing to the queue.
    assert list(listener.notifies(timeout=5, stop_after=1)), "no NOTIFY for the new job"
    listener.close()
    with database(service_settings).sessionmaker() as session:
        assert session.get(Job, uuid.UUID(job["id"])).published_at is None
    # A worker's relay publishes it: the Celery message lands in the queue (task id = job id).
    Housekeeper(service_settings, JobRepository(database(service_settings)), CeleryQueue(service_settings)).relay()
    client = redis.Redis.from_url(service_settings.redis_url)
    messages = [json.loads(m) for m in client.lrange(service_settings.queue_name, 0, -1)]
    assert job["id"] in {m["headers"]["id"] for m in messages}
    with database(service_settings).sessionmaker() as session:
        row = session.get(Job, uuid.UUID(job["id"]))
        assert row.published_at is not None
        events = session.query(JobEvent).filter_by(job_id=row.id).all()
        assert [(e.type, e.data["status"]) for e in events] == [("status", "queued")]


def test_idempotent_submit(api_client, auth_headers, other_auth_headers):
    key = {"Idempotency-Key": "abc-123"}
    first = _submit(api_client, {**auth_headers, **key})
    assert first.status_code == 202
    again = _submit(api_client, {**auth_headers, **key})
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    # same document, other key order and spacing: still the same body
    raw = json.dumps({"spec": dict(reversed(list(ce_spec().items())))}, indent=2)
    same = api_client.post("/jobs", content=raw, headers={**auth_headers, **key, "Content-Type": "application/json"})
    assert same.json()["id"] == first.json()["id"]
    other_body = ce_spec()
    other_body["seed"] = 2
    assert_problem(_submit(api_client, {**auth_headers, **key}, spec=other_body), 422, "idempotency_conflict")
    # keys are scoped to their owner
    theirs = _submit(api_client, {**other_auth_headers, **key})
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
    listed = api_client.get("/jobs", headers=auth_headers).json()["data"]
    assert [j["id"] for j in listed] == [first.json()["id"]]


def test_concurrent_idempotent_submits_create_one_job(api_client, auth_headers):
    results = []

    def go():
        results.append(_submit(api_client, {**auth_headers, "Idempotency-Key": "race"}))

    threads = [threading.Thread(target=go) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 202 for r in results), [r.text for r in results]
    assert len({r.json()["id"] for r in results}) == 1


def test_queued_job_cap(service_settings, api_key):
    app = create_app(service_settings.model_copy(update={"max_queued_jobs_per_owner": 2}))
    headers = {"Authorization": f"Bearer {api_key}"}
    with TestClient(app) as client:
        ids = [_submit(client, headers).json()["id"] for _ in range(2)]
        r = _submit(client, headers)
        assert_problem(r, 429, "too_many_queued_jobs")
        assert int(r.headers["retry-after"]) > 0
        assert client.post(f"/jobs/{ids[0]}/cancel", headers=headers).status_code == 202
        assert _submit(client, headers).status_code == 202


def test_cursor_pagination_visits_every_job_once(api_client, auth_headers, service_settings, api_owner):
    statuses = ["succeeded", "failed", "cancelled", "running", "queued"]
    created = [insert_job(service_settings, api_owner, status=statuses[i % 5]) for i in range(25)]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 7, **({"after": cursor} if cursor else {})}
        page = api_client.get("/jobs", params=params, headers=auth_headers).json()
        seen += [j["id"] for j in page["data"]]
        pages += 1
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert pages == 4
    assert seen == [str(i) for i in reversed(created)]  # newest first, each once
    default = api_client.get("/jobs", headers=auth_headers).json()
    assert len(default["data"]) == 20 and default["has_more"]
    failed = api_client.get("/jobs", params={"status": "failed"}, headers=auth_headers).json()["data"]
    assert {j["status"] for j in failed} == {"failed"} and len(failed) == 5
    two = api_client.get("/jobs", params=[("status", "failed"), ("status", "queued")], headers=auth_headers).json()
    assert len(two["data"]) == 10


def test_cancel_queued_job(api_client, auth_headers):
    job = _submit(api_client, auth_headers).json()
    r = api_client.post(f"/jobs/{job['id']}/cancel", headers=auth_headers)
    assert r.status_code == 202
    assert r.json()["status"] == "cancelled" and r.json()["finished_at"] is not None
    assert_problem(api_client.post(f"/jobs/{job['id']}/cancel", headers=auth_headers), 409, "invalid_state")
    events = api_client.get(f"/jobs/{job['id']}/events", headers=auth_headers).json()
    assert [e["data"]["status"] for e in events["data"]] == ["queued", "cancelled"]
    assert events["has_more"] is False


def test_cancel_running_job_requests_cancellation(api_client, auth_headers, service_settings, api_owner):
    job_id = insert_job(service_settings, api_owner, status="running")
    r = api_client.post(f"/jobs/{job_id}/cancel", headers=auth_headers)
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "cancelling" and body["cancel_requested"] is True and body["finished_at"] is None
    again = api_client.post(f"/jobs/{job_id}/cancel", headers=auth_headers)  # idempotent while cancelling
    assert again.status_code == 202 and again.json()["status"] == "cancelling"


def test_delete_rules(api_client, auth_headers, service_settings, api_owner):
    queued = _submit(api_client, auth_headers).json()["id"]
    assert_problem(api_client.delete(f"/jobs/{queued}", headers=auth_headers), 409, "invalid_state")
    running = insert_job(service_settings, api_owner, status="running")
    assert_problem(api_client.delete(f"/jobs/{running}", headers=auth_headers), 409, "invalid_state")

    done = insert_job(service_settings, api_owner, status="succeeded")
    add_artifact(service_settings, done, "model_card.json", b"{}", "application/json")
    checkpoint = LocalStore(service_settings.data_dir).checkpoints / str(done)
    checkpoint.mkdir(parents=True)
    (checkpoint / "last.pt").write_bytes(b"state")
    assert api_client.delete(f"/jobs/{done}", headers=auth_headers).status_code == 204
    assert not (LocalStore(service_settings.data_dir).artifacts / str(done)).exists() and not checkpoint.exists()
    assert_problem(api_client.get(f"/jobs/{done}", headers=auth_headers), 404, "not_found")
    assert_problem(api_client.delete(f"/jobs/{done}", headers=auth_headers), 404, "not_found")


def test_events_pagination(api_client, auth_headers, service_settings, api_owner):
    job_id = insert_job(service_settings, api_owner, status="running")
    with database(service_settings).sessionmaker() as session:
        for i in range(5):
            session.add(JobEvent(job_id=job_id, type="phase", attempt=1, data={"phase": f"p{i}"}))
        session.commit()
    first = api_client.get(f"/jobs/{job_id}/events", params={"limit": 3}, headers=auth_headers).json()
    assert first["has_more"] is True
    rest = api_client.get(f"/jobs/{job_id}/events", params={"after": first["next_cursor"]},
                          headers=auth_headers).json()
    phases = [e["data"]["phase"] for e in first["data"] + rest["data"]]
    assert phases == [f"p{i}" for i in range(5)]


def test_job_shows_worker_progress_and_error(api_client, auth_headers, service_settings, api_owner):
    job_id = insert_job(service_settings, api_owner, status="failed", phase="training",
                        progress={"epoch": 1, "epochs": 2, "step": 5, "total_steps": 10},
                        latest_metrics={"loss": 0.5}, error_code="training_error", error_message="boom")
    job = api_client.get(f"/jobs/{job_id}", headers=auth_headers).json()
    assert job["error"] == {"code": "training_error", "message": "boom"}
    assert job["progress"]["step"] == 5 and job["latest_metrics"] == {"loss": 0.5}
    assert job["phase"] == "training"


def test_pooled_connections_killed_by_the_server_are_replaced(api_client, auth_headers, service_settings):
    """No pool_pre_ping: a connection the server closed (restart, pg_terminate_backend) is detected
    at checkout and replaced, so the next requests still succeed."""
    import time

    import psycopg

    from jobs.db import normalize_database_url

    job = _submit(api_client, auth_headers).json()
    assert api_client.get(f"/jobs/{job['id']}", headers=auth_headers).status_code == 200  # pool warm
    conninfo = normalize_database_url(service_settings.database_url).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()[0]
        assert killed >= 1
        deadline = time.monotonic() + 10
        while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                            " AND pid <> pg_backend_pid()").fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.05)
    for _ in range(3):
        assert api_client.get(f"/jobs/{job['id']}", headers=auth_headers).status_code == 200
    assert _submit(api_client, auth_headers).status_code == 202
    assert api_client.get("/jobs", headers=auth_headers).status_code == 200  # ORM sessions too


def test_teacher_in_use_cannot_be_deleted(api_client, auth_headers, service_settings, api_owner):
    teacher = insert_job(service_settings, api_owner, status="succeeded")
    add_artifact(service_settings, teacher, "student.safetensors", b"weights", "application/octet-stream")
    student = _submit(api_client, auth_headers, spec=hcd_spec({"source": "job", "job_id": str(teacher)}))
    assert student.status_code == 202, student.text
    body = assert_problem(api_client.delete(f"/jobs/{teacher}", headers=auth_headers), 409, "teacher_in_use")
    assert student.json()["id"] in body["detail"]
    assert api_client.get(f"/jobs/{teacher}", headers=auth_headers).status_code == 200  # nothing was lost
    assert (LocalStore(service_settings.data_dir).artifacts / str(teacher) / "student.safetensors").is_file()
    api_client.post(f"/jobs/{student.json()['id']}/cancel", headers=auth_headers)
    assert api_client.delete(f"/jobs/{teacher}", headers=auth_headers).status_code == 204


def test_submission_racing_the_deletion_of_its_teacher_never_orphans_a_student(
        api_client, auth_headers, service_settings, api_owner):
    """Either the student is refused (its teacher is gone) or the deletion is (the teacher is in use)."""
    def race(teacher: uuid.UUID) -> dict[str, int]:
        results: dict[str, int] = {}

        def submit() -> None:
            spec = hcd_spec({"source": "job", "job_id": str(teacher)})
            results["submit"] = _submit(api_client, auth_headers, spec=spec).status_code

        def remove() -> None:
            results["delete"] = api_client.delete(f"/jobs/{teacher}", headers=auth_headers).status_code

        threads = [threading.Thread(target=submit), threading.Thread(target=remove)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    for _ in range(5):
        teacher = insert_job(service_settings, api_owner, status="succeeded")
        add_artifact(service_settings, teacher, "student.safetensors", b"weights", "application/octet-stream")
        results = race(teacher)
        assert (results["submit"], results["delete"]) in {(202, 409), (422, 204)}, results
        for job in api_client.get("/jobs", params={"status": "queued"}, headers=auth_headers).json()["data"]:
            api_client.post(f"/jobs/{job['id']}/cancel", headers=auth_headers)


def test_claim_starts_a_new_attempt_with_fresh_progress(service_settings, api_owner):
    from worker_fixtures import claim

    from jobs.repository import JobRepository

    repo = JobRepository(database(service_settings))
    job_id = insert_job(service_settings, api_owner, status="queued",
                        progress={"epoch": 5, "epochs": 8, "step": 50, "total_steps": 80}, attempt=1)
    assert claim(service_settings, job_id, "worker-x") == 2
    job = repo.get(api_owner, job_id)
    assert job["progress"] == {} and job["phase"] is None and job["status"] == "running"
    repo.cancel(api_owner, job_id)
