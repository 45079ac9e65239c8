"""Health, readiness and the OpenAPI document."""

from __future__ import annotations

from api_helpers import assert_problem
from fastapi.testclient import TestClient

from api.app import create_app


def test_readyz_checks_postgres_and_redis(api_client, service_settings):
    r = api_client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"] == {"postgres": "ok", "redis": "ok"}
    broken = create_app(service_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    with TestClient(broken) as client:
        body = assert_problem(client.get("/readyz"), 503, "not_ready")
        assert body["checks"]["postgres"] == "ok" and body["checks"]["redis"].startswith("error")
        assert client.get("/healthz").status_code == 200


def test_openapi_documents_the_routes(api_client):
    schema = api_client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/events",
                 "/jobs/{job_id}/metrics", "/jobs/{job_id}/metrics/stream", "/jobs/{job_id}/artifacts",
                 "/jobs/{job_id}/artifacts/{name}", "/models", "/models/{model_id}", "/healthz", "/readyz"):
        assert path in paths, path
    body = paths["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/SubmitJobRequest"}
    assert "JobSpec" in schema["components"]["schemas"]
    assert "delete" in paths["/jobs/{job_id}"]
    assert api_client.get("/docs").status_code == 200
