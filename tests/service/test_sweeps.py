"""Sweeps, fair scheduling between owners, and students that wait for their teacher (real Postgres,
Redis and `hcd worker` processes)."""

from __future__ import annotations

import statistics
import uuid

import pytest
from api_helpers import assert_problem, ce_spec
from sqlalchemy import text
from worker_fixtures import get_job, insert_job, job_events, tiny_spec, wait_until

from jobs.db import database
from jobs.keys import create_key
from jobs.repository import JobRepository, Outcome
from jobs.status import JobStatus


def _quiet_queue(settings) -> None:
    """No queued job of an earlier test may compete for this test's worker."""
    with database(settings).session() as session:
        session.execute(text("UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE status = 'queued'"))


def _wait_sweep(client, headers, sweep_id: str, statuses: set[str], timeout: float = 120) -> dict:
    def done():
        sweep = client.get(f"/sweeps/{sweep_id}", headers=headers).json()
        return sweep if sweep["status"] in statuses else None

    return wait_until(done, timeout, 0.5, f"sweep {sweep_id} in {statuses}")


def test_invalid_cells_are_refused_before_any_job_exists(api_client, auth_headers):
    body = {"base": ce_spec(), "grid": {"training.lr": [0.1, -1.0], "training.epochs": [1]}, "seeds": [0, 1]}
    problem = assert_problem(api_client.post("/sweeps", json=body, headers=auth_headers), 422, "invalid_sweep")
    assert [e["loc"] for e in problem["errors"]] == ["cells.1.spec.training.lr"]
    assert api_client.get("/jobs", headers=auth_headers).json()["data"] == []

    too_many = {"base": ce_spec(), "grid": {"training.lr": [0.01 * i for i in range(1, 65)]}, "seeds": [0, 1, 2, 3, 4]}
    problem = assert_problem(api_client.post("/sweeps", json=too_many, headers=auth_headers), 422, "invalid_sweep")
    assert "320 runs" in problem["errors"][0]["msg"]
    for bad, loc in [({"grid": {"x": [1]}, "seeds": [0]}, "base"), ({"base": ce_spec(), "seeds": "0"}, "seeds"),
                     ({"base": ce_spec(), "extra": 1}, "extra")]:
        problem = assert_problem(api_client.post("/sweeps", json=bad, headers=auth_headers), 422, "validation_error")
        assert loc in [e["loc"] for e in problem["errors"]]
    problem = assert_problem(api_client.post("/sweeps", json={"base": ce_spec(), "grid": {"training": [1]}},
                                             headers=auth_headers), 422, "invalid_sweep")
    assert problem["errors"][0]["loc"].startswith("cells.0.spec.training")
    # a run over the memory budget names its cell too
    spec = ce_spec(image_size=32)
    body = {"base": spec, "grid": {"dataset.train_size": [32, 10**6]}}
    problem = assert_problem(api_client.post("/sweeps", json=body, headers=auth_headers), 422, "job_too_large")
    assert "cells.1.spec.dataset.train_size" in [e["loc"] for e in problem["errors"]]


def test_sweep_is_created_listed_replayed_and_cancelled(api_client, auth_headers, other_auth_headers):
    body = {"base": ce_spec(), "grid": {"training.lr": [0.05, 0.1], "training.epochs": [1, 2]}, "seeds": [0, 1, 2],
            "metadata": {"study": "lr"}}
    key = {"Idempotency-Key": "sweep-1"}
    created = api_client.post("/sweeps", json=body, headers={**auth_headers, **key})
    assert created.status_code == 202, created.text
    sweep = created.json()
    assert sweep["status"] == "queued" and sweep["runs"] == 12 and len(sweep["cells"]) == 4
    assert created.headers["location"] == f"/sweeps/{sweep['id']}"
    assert sweep["cells"][1]["values"] == {"training.lr": 0.05, "training.epochs": 2}
    assert all(c["n"] == 3 and c["succeeded"] == 0 and c["val_top1"]["runs"] == 0 for c in sweep["cells"])
    again = api_client.post("/sweeps", json=body, headers={**auth_headers, **key})
    assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == sweep["id"]
    assert_problem(api_client.post("/sweeps", json={**body, "seeds": [0]}, headers={**auth_headers, **key}),
                   422, "idempotency_conflict")

    jobs = api_client.get("/jobs", params={"sweep_id": sweep["id"], "limit": 100}, headers=auth_headers).json()["data"]
    assert len(jobs) == 12 and {j["sweep_id"] for j in jobs} == {sweep["id"]}
    cell = sweep["cells"][3]
    seeds = sorted(j["spec"]["seed"] for j in jobs if j["id"] in cell["job_ids"])
    assert seeds == [0, 1, 2]
    assert all(j["metadata"] == {"study": "lr"} for j in jobs)
    listed = api_client.get("/sweeps", headers=auth_headers).json()
    assert [s["id"] for s in listed["data"]] == [sweep["id"]] and "cells" not in listed["data"][0]
    assert_problem(api_client.get(f"/sweeps/{sweep['id']}", headers=other_auth_headers), 404, "not_found")
    assert_problem(api_client.delete(f"/sweeps/{sweep['id']}", headers=auth_headers), 409, "invalid_state")

    cancelled = api_client.post(f"/sweeps/{sweep['id']}/cancel", headers=auth_headers)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["counts"] == {"cancelled": 12}
    assert api_client.delete(f"/sweeps/{sweep['id']}", headers=auth_headers).status_code == 204
    assert_problem(api_client.get(f"/sweeps/{sweep['id']}", headers=auth_headers), 404, "not_found")
    assert api_client.get("/jobs", params={"sweep_id": sweep["id"]}, headers=auth_headers).json()["data"] == []


@pytest.mark.slow
def test_sweep_runs_on_a_worker_and_summarises_each_cell(api_client, auth_headers, service_settings, start_worker):
    _quiet_queue(service_settings)
    base = tiny_spec("ce", epochs=1, steps=3)
    body = {"base": base, "grid": {"training.lr": [0.02, 0.2]}, "seeds": [0, 1]}
    sweep = api_client.post("/sweeps", json=body, headers=auth_headers).json()
    worker = start_worker()
    sweep = _wait_sweep(api_client, auth_headers, sweep["id"], {"succeeded", "failed"})
    assert sweep["status"] == "succeeded", worker.log()[-3000:]
    for cell in sweep["cells"]:
        jobs = [api_client.get(f"/jobs/{j}", headers=auth_headers).json() for j in cell["job_ids"]]
        final = [j["result"]["final_metrics"]["val_top1"] for j in jobs]
        best = [j["result"]["best_metrics"]["val_top1"] for j in jobs]
        assert {j["spec"]["training"]["lr"] for j in jobs} == {cell["values"]["training.lr"]}
        assert cell["n"] == cell["succeeded"] == 2
        assert cell["val_top1"] == pytest.approx({"mean": statistics.fmean(final), "std": statistics.stdev(final),
                                                  "runs": 2})
        assert cell["best_val_top1"]["mean"] == pytest.approx(statistics.fmean(best))
    assert api_client.delete(f"/sweeps/{sweep['id']}", headers=auth_headers).status_code == 204


@pytest.mark.slow
def test_one_owners_sweep_does_not_starve_another_owners_job(service_settings, start_worker, api_client):
    _quiet_queue(service_settings)
    keys = {}
    for owner in ("busy-owner", "patient-owner"):
        with database(service_settings).session() as session:
            keys[owner] = {"Authorization": f"Bearer {create_key(session, f'{owner}-{uuid.uuid4().hex[:6]}')}"}
    busy = api_client.post("/sweeps", json={"base": tiny_spec("ce", epochs=1, steps=2), "seeds": [0, 1, 2, 3]},
                           headers=keys["busy-owner"]).json()
    single = api_client.post("/jobs", json={"spec": tiny_spec("ce", epochs=1, steps=2)},
                             headers=keys["patient-owner"]).json()  # submitted after all four
    worker = start_worker()
    _wait_sweep(api_client, keys["busy-owner"], busy["id"], {"succeeded"}, 180)
    wait_until(lambda: get_job(service_settings, single["id"]).status == "succeeded", 60, 0.5, "the single job")
    started = sorted((get_job(service_settings, j).started_at, j) for c in
                     api_client.get(f"/sweeps/{busy['id']}", headers=keys["busy-owner"]).json()["cells"]
                     for j in c["job_ids"])
    single_started = get_job(service_settings, single["id"]).started_at
    # one worker, owners take turns: the single job runs second, not fifth
    assert started[0][0] < single_started < started[1][0], worker.log()[-2000:]


def test_running_cap_is_per_owner_and_queued_jobs_wait_their_turn(service_settings, api_owner, other_owner):
    _quiet_queue(service_settings)
    repo = JobRepository(database(service_settings))
    mine = [insert_job(service_settings, tiny_spec(), owner=api_owner, published=True) for _ in range(2)]
    theirs = insert_job(service_settings, tiny_spec(), owner=other_owner, published=True)
    first = repo.claim_next("w1", 30, running_cap=1)
    assert first is not None and str(first[0]) == mine[0]
    second = repo.claim_next("w2", 30, running_cap=1)  # my second waits: I already run one
    assert second is not None and str(second[0]) == theirs
    assert repo.claim_next("w3", 30, running_cap=1) is None
    assert repo.finish(first[0], first[1], Outcome(JobStatus.SUCCEEDED))
    third = repo.claim_next("w4", 30, running_cap=1)
    assert third is not None and str(third[0]) == mine[1]
    for job_id, attempt in (second, third):
        repo.hand_back(job_id, attempt, reason="test")
        repo.cancel(api_owner if str(job_id) in mine else other_owner, job_id)


@pytest.mark.slow
def test_student_submitted_while_its_teacher_runs_waits_then_succeeds(api_client, auth_headers, service_settings,
                                                                     start_worker):
    _quiet_queue(service_settings)
    teacher = api_client.post("/jobs", json={"spec": tiny_spec("ce", epochs=1, steps=3)}, headers=auth_headers).json()
    weights = {"source": "job", "job_id": teacher["id"]}
    student_spec = tiny_spec("kd", arch="test_vit", epochs=1, steps=3, teacher={"arch": "test_resnet",
                                                                                 "weights": weights})
    student = api_client.post("/jobs", json={"spec": student_spec}, headers=auth_headers)
    assert student.status_code == 202, student.text
    student = student.json()
    assert student["status"] == "queued" and student["phase"] == "waiting_for_teacher"
    worker = start_worker()
    wait_until(lambda: get_job(service_settings, student["id"]).status in ("succeeded", "failed"), 120, 0.5,
               "the student")
    done = get_job(service_settings, student["id"])
    assert done.status == "succeeded", (done.error_code, done.error_message, worker.log()[-3000:])
    assert get_job(service_settings, teacher["id"]).finished_at <= done.started_at
    assert "teacher_ready" in [e.type for e in job_events(service_settings, student["id"])]


def test_students_fail_when_their_teacher_is_cancelled(api_client, auth_headers, service_settings):
    teacher = api_client.post("/jobs", json={"spec": ce_spec()}, headers=auth_headers).json()
    spec = ce_spec()
    spec.update(method={"name": "kd"}, student={"arch": "test_convnext"},
                teacher={"arch": "test_resnet", "weights": {"source": "job", "job_id": teacher["id"]}})
    student = api_client.post("/jobs", json={"spec": spec}, headers=auth_headers).json()
    grand = dict(spec, teacher={"arch": "test_convnext", "weights": {"source": "job", "job_id": student["id"]}},
                 student={"arch": "test_resnet"})
    grandchild = api_client.post("/jobs", json={"spec": grand}, headers=auth_headers)
    assert grandchild.status_code == 202, grandchild.text
    assert api_client.post(f"/jobs/{teacher['id']}/cancel", headers=auth_headers).json()["status"] == "cancelled"
    for job_id in (student["id"], grandchild.json()["id"]):
        job = api_client.get(f"/jobs/{job_id}", headers=auth_headers).json()
        assert job["status"] == "failed" and job["error"]["code"] == "teacher_failed", job
        assert job["finished_at"] is not None and job["phase"] is None


def test_openapi_documents_sweeps(api_client):
    schema = api_client.get("/openapi.json").json()
    assert {"/sweeps", "/sweeps/{sweep_id}", "/sweeps/{sweep_id}/cancel"} <= set(schema["paths"])
    assert "SubmitSweepRequest" in schema["components"]["schemas"]
