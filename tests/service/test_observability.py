"""Observability: offline /docs, a truthful OpenAPI document, Prometheus metrics (API and worker, one and
several API processes), JSON logs with the job's context."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from api_helpers import PROBLEM, assert_problem, ce_spec
from prometheus_client.parser import text_string_to_metric_families
from worker_fixtures import HCD, free_port, start_process, tiny_spec, wait_for_progress, wait_for_status, wait_until

from api.schemas import Problem
from hcd_core.method_configs import METHOD_NAMES
from jobs.logs import JobContextFilter, JsonFormatter, TextFormatter, job_context, set_process_job
from worker.prometheus import GpuCollector, parse_nvidia_smi


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --------------------------------------------------------------------------- /docs offline
def test_docs_reference_no_external_url_and_every_asset_is_served(api_client):
    page = api_client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.I), "the docs page names a remote URL"
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    assert len(referenced) >= 4, referenced  # the css, the favicon, the script, the OpenAPI document
    for url in referenced:
        assert url.startswith("/"), url
        response = api_client.get(url)
        assert response.status_code == 200 and response.content, url
    css = api_client.get("/docs/swagger-ui/swagger-ui.css").text
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", css), "the stylesheet loads something remote"
    assert "Apache License" in api_client.get("/docs/swagger-ui/LICENSE").text
    assert_problem(api_client.get("/docs/swagger-ui/../app.py"), 404, "not_found")
    assert_problem(api_client.get("/docs/swagger-ui/index.html"), 404, "not_found")
    assert api_client.get("/redoc").status_code == 404


# --------------------------------------------------------------------------- OpenAPI
AUTHENTICATED_PREFIXES = ("/jobs", "/models", "/datasets", "/sweeps")
OPEN_PATHS = ("/healthz", "/readyz", "/metrics")


@pytest.fixture(scope="module")
def openapi(api_app) -> dict:
    return api_app.openapi()


def _operations(doc: dict):
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_openapi_errors_are_problems_with_a_schema(openapi):
    components = openapi["components"]["schemas"]
    problem = components["Problem"]
    assert {"type", "title", "status", "code", "detail", "instance", "errors"} <= set(problem["properties"])
    assert {"type", "title", "status", "code", "detail"} <= set(problem["required"])
    field_error = components["ProblemFieldError"]
    assert set(field_error["properties"]) == {"loc", "msg", "type"}
    # FastAPI's HTTPValidationError is a shape this API never sends.
    assert "HTTPValidationError" not in components and "ValidationError" not in components
    for path, method, operation in _operations(openapi):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert list(response["content"]) == [PROBLEM], (method, path, status)
                assert response["content"][PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}


def test_openapi_lists_each_status_an_operation_can_return(openapi):
    def statuses(path: str, method: str) -> set[int]:
        return {int(s) for s in openapi["paths"][path][method]["responses"] if int(s) >= 400}

    for path, method, operation in _operations(openapi):
        if path.startswith(AUTHENTICATED_PREFIXES):
            assert {401, 503} <= statuses(path, method), (method, path)
        if "{" in path:
            assert 404 in statuses(path, method), (method, path)
        if "requestBody" in operation:
            assert {408, 413, 415, 422} <= statuses(path, method), (method, path)
    assert statuses("/jobs", "post") == {400, 401, 408, 409, 413, 415, 422, 429, 503}
    assert statuses("/sweeps", "post") == {400, 401, 408, 409, 413, 415, 422, 429, 503}
    assert statuses("/models", "post") == {401, 408, 413, 415, 422, 503}
    assert statuses("/jobs/{job_id}", "get") == {401, 404, 503}  # a path id cannot fail validation
    assert statuses("/jobs/{job_id}/cancel", "post") == {401, 404, 409, 503}
    assert statuses("/jobs/{job_id}", "delete") == {401, 404, 409, 503}
    assert statuses("/jobs", "get") == {401, 422, 503}  # query parameters
    assert 416 in statuses("/jobs/{job_id}/artifacts/{name}", "get")
    assert statuses("/readyz", "get") == {503}
    assert statuses("/healthz", "get") == set() and statuses("/metrics", "get") == set()
    assert "Retry-After" in openapi["paths"]["/jobs"]["post"]["responses"]["429"]["headers"]
    assert "WWW-Authenticate" in openapi["paths"]["/jobs"]["get"]["responses"]["401"]["headers"]


def test_openapi_security_is_per_operation(openapi):
    assert "security" not in openapi  # no global requirement: the open routes would inherit it
    assert openapi["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, method, operation in _operations(openapi):
        if path.startswith(AUTHENTICATED_PREFIXES):
            assert operation["security"] == [{"bearer": []}], (method, path)
        else:
            assert path in OPEN_PATHS, path
            assert "security" not in operation and "401" not in operation["responses"], (method, path)
    assert "text/plain" in openapi["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


def test_openapi_method_union_is_discriminated_on_name(openapi):
    components = openapi["components"]["schemas"]
    method = components["JobSpec"]["properties"]["method"]
    mapping = method["discriminator"]["mapping"]
    assert method["discriminator"]["propertyName"] == "name"
    assert set(mapping) == set(METHOD_NAMES)
    assert sorted(v["$ref"] for v in method["oneOf"]) == sorted(mapping.values())
    for name, ref in mapping.items():
        variant = components[ref.rsplit("/", 1)[-1]]
        assert variant["properties"]["name"]["const"] == name
        assert "name" in variant["required"]  # the server needs the tag to pick the variant
    weights = components["TeacherSpec"]["properties"]["weights"]
    assert weights["discriminator"]["propertyName"] == "source"


def test_the_errors_the_api_sends_are_the_documented_ones(api_client, openapi, auth_headers):
    """A sample of real answers, each checked against its operation's document and the Problem schema."""

    def check(method: str, template: str, response: httpx.Response) -> None:
        documented = openapi["paths"][template][method.lower()]["responses"]
        assert str(response.status_code) in documented, (method, template, response.status_code, response.text)
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith(PROBLEM)
            Problem.model_validate(response.json())

    job = f"/jobs/{uuid.uuid4()}"
    check("GET", "/jobs/{job_id}", api_client.get(job))  # 401
    check("GET", "/jobs/{job_id}", api_client.get(job, headers=auth_headers))  # 404
    check("GET", "/jobs/{job_id}", api_client.get("/jobs/not-a-uuid", headers=auth_headers))  # 404
    check("GET", "/jobs", api_client.get("/jobs?limit=0", headers=auth_headers))  # 422
    check("POST", "/jobs", api_client.post("/jobs", content=b"{", headers=auth_headers))  # 400
    check("POST", "/jobs", api_client.post("/jobs", content=b"{}", headers={**auth_headers,  # 415
                                                                            "content-type": "text/plain"}))
    check("POST", "/jobs", api_client.post("/jobs", json={"spec": {"method": {}}}, headers=auth_headers))  # 422
    check("POST", "/jobs", api_client.post("/jobs", content=b" " * 2_000_000, headers={  # 413
        **auth_headers, "content-type": "application/json"}))
    check("POST", "/jobs/{job_id}/cancel", api_client.post(f"{job}/cancel", headers=auth_headers))  # 404
    check("POST", "/models", api_client.post("/models", content=b"x", headers={  # 415
        **auth_headers, "content-type": "application/json"}))
    check("GET", "/healthz", api_client.get("/healthz"))
    check("GET", "/metrics", api_client.get("/metrics"))
    created = api_client.post("/jobs", json={"spec": ce_spec()}, headers=auth_headers)
    check("POST", "/jobs", created)
    check("DELETE", "/jobs/{job_id}", api_client.delete(f"/jobs/{created.json()['id']}", headers=auth_headers))  # 409


# --------------------------------------------------------------------------- /metrics in-process
def test_metrics_count_requests_by_route_template(api_client, auth_headers):
    before = scrape(api_client.get("/metrics").text)
    missing = [uuid.uuid4() for _ in range(3)]
    for job_id in missing:
        assert api_client.get(f"/jobs/{job_id}", headers=auth_headers).status_code == 404
    api_client.get("/no/such/route")
    response = api_client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    after = scrape(text)
    key = {"method": "GET", "route": "/jobs/{job_id}", "status": "404"}
    assert value(after, "hcd_http_requests_total", **key) == value(before, "hcd_http_requests_total", **key) + 3
    latency = {"method": "GET", "route": "/jobs/{job_id}"}
    assert (value(after, "hcd_http_request_duration_seconds_count", **latency)
            == value(before, "hcd_http_request_duration_seconds_count", **latency) + 3)
    assert value(after, "hcd_http_requests_total", method="GET", route="<unmatched>", status="404") >= 1
    assert not any(str(job_id) in text for job_id in missing)  # templates, never raw paths
    assert 'route="/metrics"' not in text  # the scrapes themselves are not counted
    assert value(after, "hcd_database_up") == 1 and value(after, "hcd_redis_up") == 1
    for status in ("queued", "running", "cancelling", "succeeded", "failed", "cancelled"):
        assert ("hcd_jobs", (("status", status),)) in after
    assert ("hcd_queue_depth_jobs", (("state", "ready"),)) in after
    assert ("hcd_queue_messages", ()) in after
    assert ("hcd_job_queue_wait_seconds_count", ()) in after
    assert ("hcd_worker_heartbeat_age_max_seconds", ()) in after and ("hcd_job_metrics_lag_seconds", ()) in after


def test_metrics_report_a_database_that_is_down(service_settings):
    from fastapi.testclient import TestClient

    from api.app import create_app

    broken = create_app(service_settings.model_copy(update={
        "database_url": "postgresql+psycopg://nobody@127.0.0.1:9/none", "redis_url": "redis://127.0.0.1:9/0"}))
    with TestClient(broken) as client:
        response = client.get("/metrics")
    samples = scrape(response.text)
    assert response.status_code == 200
    assert value(samples, "hcd_database_up") == 0 and value(samples, "hcd_redis_up") == 0
    assert not any(name == "hcd_jobs" for name, _ in samples)


# --------------------------------------------------------------------------- a real job moves the figures
@pytest.fixture(scope="module")
def job_run(service_settings, service_env, api_server, tmp_path_factory):
    """A real worker (JSON logs, its metrics endpoint on) runs one small job submitted through the real API;
    the API's and the worker's metrics are scraped before, during and after."""
    from jobs.db import database
    from jobs.keys import create_key

    with database(service_settings).sessionmaker() as session:
        auth_headers = {"Authorization": f"Bearer {create_key(session, f'obs-{uuid.uuid4().hex[:8]}')}"}
        session.commit()
    metrics_port = free_port()
    worker = start_process("worker", HCD + ["worker", "--log-level", "info"],
                           {**service_env, "HCD_WORKER_DEVICE": "cpu", "HCD_LOG_FORMAT": "json",
                            "HCD_WORKER_METRICS_PORT": str(metrics_port)}, tmp_path_factory.mktemp("obs-worker"))
    try:
        wait_until(lambda: "ready." in worker.log() or not worker.alive(), 60, 0.2, "the worker")
        assert worker.alive(), worker.log()[-3000:]
        worker_url = f"http://127.0.0.1:{metrics_port}/metrics"
        api_before = scrape(httpx.get(f"{api_server}/metrics").text)
        worker_before = scrape(httpx.get(worker_url).text)
        response = httpx.post(f"{api_server}/jobs", headers=auth_headers,
                              json={"spec": tiny_spec("ce", epochs=2, steps=12)})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        wait_for_progress(service_settings, job_id, min_step=1, timeout=90, workers=[worker])
        api_during = scrape(httpx.get(f"{api_server}/metrics").text)
        worker_during = scrape(httpx.get(worker_url).text)
        still_running = httpx.get(f"{api_server}/jobs/{job_id}", headers=auth_headers).json()["status"] == "running"
        job = wait_for_status(service_settings, job_id, ("succeeded", "failed"), 120, [worker])
        assert job.status == "succeeded", (job.error_code, job.error_message, worker.log()[-3000:])
        # The worker records the attempt's end just after the child exits.
        wait_until(lambda: value(scrape(httpx.get(worker_url).text), "hcd_worker_busy") == 0, 20, 0.2,
                   "the worker to be idle")
        yield {
            "job_id": job_id, "worker": worker, "still_running": still_running,
            "api": (api_before, api_during, scrape(httpx.get(f"{api_server}/metrics").text)),
            "worker_metrics": (worker_before, worker_during, scrape(httpx.get(worker_url).text)),
            "log": worker.log(),  # before the worker stops (Celery prints its shutdown notice as plain text)
        }
    finally:
        worker.stop()


def test_a_job_run_moves_the_api_and_worker_metrics(job_run):
    before, during, after = job_run["api"]
    job_id = job_run["job_id"]
    assert value(after, "hcd_jobs", status="succeeded") >= value(before, "hcd_jobs", status="succeeded") + 1
    submitted = {"method": "POST", "route": "/jobs", "status": "202"}
    assert value(after, "hcd_http_requests_total", **submitted) >= value(before, "hcd_http_requests_total",
                                                                         **submitted) + 1
    assert (value(after, "hcd_job_queue_wait_seconds_count")
            >= value(before, "hcd_job_queue_wait_seconds_count") + 1)
    assert (value(after, "hcd_job_duration_seconds_count", status="succeeded")
            >= value(before, "hcd_job_duration_seconds_count", status="succeeded") + 1)
    if job_run["still_running"]:
        assert value(during, "hcd_jobs", status="running") >= 1
        assert any(name == "hcd_worker_heartbeat_age_seconds" for name, _ in during)
        assert 0 <= value(during, "hcd_worker_heartbeat_age_max_seconds") < 30
        assert 0 <= value(during, "hcd_job_metrics_lag_seconds") < 60  # it reported a step moments ago

    w_before, w_during, w_after = job_run["worker_metrics"]
    assert value(w_after, "hcd_worker_jobs_claimed_total") == value(w_before, "hcd_worker_jobs_claimed_total") + 1
    assert value(w_after, "hcd_worker_jobs_finished_total", outcome="succeeded") == 1
    assert value(w_after, "hcd_worker_attempt_duration_seconds_count", outcome="succeeded") == 1
    assert value(w_after, "hcd_worker_messages_total", result="claimed") >= 1
    assert value(w_after, "hcd_worker_busy") == 0
    assert not any(name == "hcd_worker_current_job" for name, _ in w_after)
    if job_run["still_running"]:
        assert value(w_during, "hcd_worker_busy") == 1
        assert value(w_during, "hcd_worker_current_job", job_id=job_id, attempt="1") == 1
    assert any(name == "hcd_worker_info" for name, _ in w_after)
    assert not any(name.startswith("hcd_worker_gpu") for name, _ in w_after)  # a CPU worker reads no GPU


def test_json_logs_carry_the_job_and_attempt(job_run):
    """With HCD_LOG_FORMAT=json every line of the worker and of the job's child process is one JSON object;
    the child's lines and the parent's lines about the job carry job_id and attempt."""
    job_id, worker = job_run["job_id"], job_run["worker"]
    if os.environ.get("HCD_TEST_SHOW_LOG"):
        print(job_run["log"])
    lines = [line for line in job_run["log"].splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    for record in records:
        assert {"ts", "level", "logger", "message", "pid"} <= set(record), record
    child = [r for r in records if r["pid"] != worker.proc.pid]  # the job's child process (one per attempt)
    assert child, "the job's child process logged nothing"
    for record in child:
        assert record.get("job_id") and record.get("attempt"), record
    ours = [r for r in child if r["job_id"] == job_id]
    assert ours and all(r["attempt"] == 1 for r in ours)
    assert any(r["logger"] == "hcd.worker.runner" and "ended: succeeded" in r["message"] for r in ours)
    # The worker's own lines about the attempt (claimed, ended) carry it too.
    about_the_job = [r for r in records if r["pid"] == worker.proc.pid and r["logger"] == "hcd.worker"
                     and job_id in r["message"] and ("claimed by" in r["message"] or "ended:" in r["message"])]
    assert len(about_the_job) == 2, about_the_job
    assert all(r.get("job_id") == job_id and r.get("attempt") == 1 for r in about_the_job)


# --------------------------------------------------------------------------- several API processes
def test_metrics_add_up_over_api_processes(service_env, tmp_path):
    """`hcd api --workers 2`: every scrape reports every process's requests, whichever process answers."""
    port = free_port()
    api = start_process("api-2", HCD + ["api", "--port", str(port), "--workers", "2", "--log-level", "warning"],
                        service_env, tmp_path)
    url = f"http://127.0.0.1:{port}"
    folder = Path(tempfile.gettempdir()) / f"hcd-metrics-{os.getuid()}" / f"api-{port}-{api.proc.pid}"

    def healthz() -> int:
        return httpx.get(f"{url}/healthz", timeout=5).status_code  # a new connection each time

    def count() -> float:
        return value(scrape(httpx.get(f"{url}/metrics", timeout=10).text), "hcd_http_requests_total",
                     method="GET", route="/healthz", status="200")

    try:
        def ready() -> bool:
            assert api.alive(), api.log()[-3000:]
            try:
                return healthz() == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 60, 0.2, "hcd api --workers 2")
        time.sleep(1.0)  # the second process may still be starting; its first requests count the same
        base = count()
        sent = 0
        with ThreadPoolExecutor(8) as pool:  # concurrent connections, so that both processes serve some
            for _ in range(20):
                assert all(code == 200 for code in pool.map(lambda _: healthz(), range(16)))
                sent += 16
                if len(list(folder.glob("counter_*.db"))) >= 2:
                    break
        assert len(list(folder.glob("counter_*.db"))) == 2, "both processes should have served requests"
        wait_until(lambda: count() == base + sent, 10, 0.1, f"{base + sent} requests in the metrics")
        assert [count() for _ in range(8)] == [base + sent] * 8  # whichever process answers
    finally:
        api.stop()
    wait_until(lambda: not folder.exists(), 10, 0.1, "the metrics folder to be removed")


# --------------------------------------------------------------------------- units: logs, GPUs
def _record(message: str = "hello", exc_info=None) -> logging.LogRecord:
    record = logging.LogRecord("hcd.worker", logging.INFO, __file__, 1, message, (), exc_info)
    JobContextFilter().filter(record)
    return record


def test_json_formatter_and_job_context():
    plain = json.loads(JsonFormatter().format(_record()))
    assert plain["message"] == "hello" and plain["level"] == "INFO" and plain["logger"] == "hcd.worker"
    assert "job_id" not in plain and plain["ts"].endswith("+00:00")
    with job_context("abc", 2):
        inside = json.loads(JsonFormatter().format(_record("in\nside")))
        text = TextFormatter().format(_record())
    assert inside["job_id"] == "abc" and inside["attempt"] == 2 and inside["message"] == "in\nside"
    assert text.endswith("hello [job=abc attempt=2]")
    try:
        raise ValueError("boom")
    except ValueError:
        failed = json.loads(JsonFormatter().format(_record("failed", exc_info=sys.exc_info())))
    assert "ValueError: boom" in failed["exception"]
    access = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/jobs", "1.1", 200), None)
    line = json.loads(JsonFormatter().format(access))
    assert line["message"] == '127.0.0.1:5 - "GET /jobs HTTP/1.1" 200' and line["status"] == 200
    set_process_job("proc-job", 1)
    try:
        assert json.loads(JsonFormatter().format(_record()))["job_id"] == "proc-job"
    finally:
        set_process_job(None)


def test_gpu_figures_parse_nvidia_smi_and_skip_cpu_hosts(monkeypatch):
    rows = parse_nvidia_smi("0, NVIDIA H100 80GB HBM3, 37, 1024, 81559\n1, NVIDIA H100, [N/A], 0, 81559\n")
    assert rows[0].utilization == pytest.approx(0.37) and rows[0].memory_used_bytes == 1024 * 1024 * 1024
    assert rows[1].utilization is None and rows[1].memory_total_bytes == 81559 * 1024 * 1024
    assert list(GpuCollector("cpu").collect()) == []
    if shutil.which("nvidia-smi") is None:
        assert list(GpuCollector("auto").collect()) == []  # a host without the NVIDIA driver: nothing, no error


def test_grafana_dashboard_queries_only_exposed_metrics(api_client, monkeypatch):
    from prometheus_client import generate_latest

    from worker import prometheus as worker_metrics

    def names(text: str) -> set[str]:
        found = set()
        for family in text_string_to_metric_families(text):  # families with no labelled sample yet count too
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
            found.update(family.name + suffix for suffix in suffixes)
        return found

    gpus = GpuCollector("cuda")
    monkeypatch.setattr(gpus, "enabled", True)
    monkeypatch.setattr(gpus, "read", lambda: parse_nvidia_smi("0, NVIDIA H100, 50, 10, 100"))
    registry = worker_metrics.CollectorRegistry()
    registry.register(gpus)
    exposed = (names(api_client.get("/metrics").text) | names(generate_latest(worker_metrics.REGISTRY).decode())
               | names(generate_latest(registry).decode()))
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "monitoring" / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = {name for query in queries for name in re.findall(r"\bhcd_[a-z_]+", query)}
    assert len(queries) >= 20 and used, queries
    assert used <= exposed, used - exposed
    for family in ("hcd_http_requests_total", "hcd_jobs", "hcd_queue_depth_jobs", "hcd_job_queue_wait_seconds_bucket",
                   "hcd_job_duration_seconds_bucket", "hcd_worker_heartbeat_age_seconds",
                   "hcd_job_metrics_lag_seconds", "hcd_worker_jobs_finished_total",
                   "hcd_worker_gpu_utilization_ratio", "hcd_worker_gpu_memory_used_bytes"):
        assert family in used, family
