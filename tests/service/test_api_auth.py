"""Bearer keys on every route but health; another owner's resources are 404, never 403."""

from __future__ import annotations

import uuid

import pytest
from api_helpers import add_artifact, assert_problem, hcd_spec, insert_job
from fastapi.testclient import TestClient

from api.app import create_app
from jobs.keys import hash_key
from jobs.storage import LocalStore


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer hcd_not-a-real-key"},
    {"Authorization": "Bearer "},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "hcd_xyz"},
])
@pytest.mark.parametrize("method,path", [
    ("GET", "/jobs"), ("POST", "/jobs"), ("GET", f"/jobs/{uuid.uuid4()}"),
    ("GET", "/models"), ("POST", "/models"), ("GET", f"/jobs/{uuid.uuid4()}/metrics/stream"),
    ("GET", "/datasets"), ("POST", "/datasets"), ("DELETE", f"/datasets/{uuid.uuid4()}"),
])
def test_missing_or_bad_key_is_401(api_client, headers, method, path):
    r = api_client.request(method, path, headers=headers)
    assert_problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_health_needs_no_key(api_client):
    assert api_client.get("/healthz").json() == {"status": "ok"}
    assert api_client.get("/readyz").status_code == 200


def test_foreign_job_is_404_on_every_route(api_client, service_settings, other_owner, auth_headers):
    job_id = insert_job(service_settings, other_owner, status="succeeded")
    add_artifact(service_settings, job_id, "model_card.json", b"{}", "application/json")
    for method, path in [
        ("GET", f"/jobs/{job_id}"), ("POST", f"/jobs/{job_id}/cancel"), ("DELETE", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/events"), ("GET", f"/jobs/{job_id}/metrics"),
        ("GET", f"/jobs/{job_id}/metrics/stream"), ("GET", f"/jobs/{job_id}/artifacts"),
        ("GET", f"/jobs/{job_id}/artifacts/model_card.json"),
    ]:
        assert_problem(api_client.request(method, path, headers=auth_headers), 404, "not_found")
    listed = api_client.get("/jobs", headers=auth_headers).json()["data"]
    assert str(job_id) not in {j["id"] for j in listed}
    # still there for its owner: the 404 changed nothing
    assert (LocalStore(service_settings.data_dir).artifacts / str(job_id) / "model_card.json").exists()


def test_foreign_job_is_not_usable_as_teacher(api_client, service_settings, other_owner, auth_headers):
    job_id = insert_job(service_settings, other_owner, status="succeeded")
    add_artifact(service_settings, job_id, "student.safetensors", b"x", "application/octet-stream")
    r = api_client.post("/jobs", json={"spec": hcd_spec({"source": "job", "job_id": str(job_id)})},
                        headers=auth_headers)
    body = assert_problem(r, 422, "teacher_not_found")
    assert body["errors"][0]["loc"] == "teacher.weights.job_id"


def test_foreign_model_is_404_and_not_usable(api_client, service_settings, other_owner, auth_headers):
    from jobs.db import database
    from jobs.tables import UploadedModel

    model_id = uuid.uuid4()
    with database(service_settings).sessionmaker() as session:
        session.add(UploadedModel(id=model_id, owner=other_owner, arch="test_resnet", num_classes=4,
                                  filename="t.safetensors", path=f"{model_id}.safetensors", size=1, sha256="0" * 64))
        session.commit()
    assert_problem(api_client.get(f"/models/{model_id}", headers=auth_headers), 404, "not_found")
    r = api_client.post("/jobs", json={"spec": hcd_spec({"source": "model", "model_id": str(model_id)})},
                        headers=auth_headers)
    assert_problem(r, 422, "teacher_not_found")


def test_bootstrap_key_exists_after_startup(service_settings):
    key = f"hcd_bootstrap-{uuid.uuid4().hex}"
    app = create_app(service_settings.model_copy(update={"bootstrap_api_key": key}))
    with TestClient(app) as client:
        r = client.get("/jobs", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
    with TestClient(app) as client:  # a second start does not duplicate it
        assert client.get("/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    from sqlalchemy import func, select

    from jobs.db import database
    from jobs.tables import ApiKey

    with database(service_settings).sessionmaker() as session:
        rows = session.execute(
            select(ApiKey.owner, func.count()).where(ApiKey.key_hash == hash_key(key)).group_by(ApiKey.owner)
        ).all()
    assert rows == [("admin", 1)]


def test_revoked_key_is_rejected(api_client, service_settings):
    from datetime import datetime, timezone

    from sqlalchemy import update

    from jobs.db import database
    from jobs.keys import create_key
    from jobs.tables import ApiKey

    with database(service_settings).sessionmaker() as session:
        key = create_key(session, "revoked-owner")
        session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key))
                        .values(revoked_at=datetime.now(timezone.utc)))
        session.commit()
    assert_problem(api_client.get("/jobs", headers={"Authorization": f"Bearer {key}"}), 401, "unauthorized")
