"""Object storage (HCD_STORAGE_URL=s3://...) against a real S3 endpoint: moto's server over HTTP on
127.0.0.1, started here; every call is a real request through s3fs/aiobotocore, nothing is mocked.

The end-to-end tests (slow) give the API and every worker a data directory of its own: the only thing
they share is the bucket (with Postgres and Redis).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from api_helpers import assert_problem, insert_job
from fastapi.testclient import TestClient
from worker_fixtures import (
    free_port,
    job_events,
    start_api,
    tiny_spec,
    wait_for_progress,
    wait_for_status,
    wait_until,
)

from jobs.db import database
from jobs.s3store import S3Store, attempt_dir
from jobs.settings import Settings
from jobs.storage import LocalStore, StorageError, open_store
from jobs.tables import Artifact


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str
    url: str  # HCD_STORAGE_URL
    env: dict[str, str]  # the AWS_* variables

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"hcd/{prefix}")
        return sorted(o["Key"].removeprefix("hcd/") for page in pages for o in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=f"hcd/{key}")["Body"].read()


@pytest.fixture(scope="module")
def s3(service_env):
    """moto's S3 server on a free local port, a fresh bucket, and the AWS_* variables that reach it (set
    in this process too, for the stores the tests make themselves, until the module ends; after
    service_env, which other modules' processes inherit)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    bucket = f"hcd-test-{uuid.uuid4().hex[:8]}"
    fixture = S3(endpoint, bucket, f"s3://{bucket}/hcd", env)
    fixture.client().create_bucket(Bucket=bucket)
    try:
        yield fixture
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def store(s3, tmp_path) -> S3Store:
    return S3Store(s3.url, tmp_path / "work")


@pytest.fixture(scope="module")
def s3_settings(service_settings, s3, tmp_path_factory) -> Settings:
    """The service's settings with the bucket as store and a data directory no other process uses."""
    return Settings(**{**service_settings.model_dump(), "storage_url": s3.url,
                       "data_dir": tmp_path_factory.mktemp("api-host"), "work_dir": None})


@pytest.fixture(scope="module")
def s3_env(service_env, s3) -> dict[str, str]:
    """The service's environment for a process using the bucket (give each its own HCD_DATA_DIR)."""
    return {**service_env, **s3.env, "HCD_STORAGE_URL": s3.url}


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --------------------------------------------------------------------------- the store itself
def test_checkpoints_are_attempt_numbered_so_a_stale_attempt_cannot_replace_a_newer_one(store, s3):
    job = str(uuid.uuid4())

    def save(attempt: int, content: bytes, log: str) -> None:
        ws = store.workspace(job, attempt)
        ws.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ws.output_dir.mkdir(parents=True, exist_ok=True)
        (ws.output_dir / "metrics.jsonl").write_text(log)
        (ws.checkpoint_dir / "checkpoint.pt").write_bytes(content)
        ws.checkpoint_saved(ws.checkpoint_dir / "checkpoint.pt")

    first = store.workspace(job, 1)
    assert first.restore_checkpoint() is False and _tree(first.root) == []  # nothing stored yet
    save(1, b"attempt 1, epoch 1", "a1\n")
    assert s3.keys(f"checkpoints/{job}/") == [f"checkpoints/{job}/{attempt_dir(1)}/checkpoint.pt",
                                             f"checkpoints/{job}/{attempt_dir(1)}/metrics.jsonl"]

    # Attempt 2 (another host: an empty work directory) resumes from attempt 1's checkpoint and log.
    second = S3Store(s3.url, store.work_dir.parent / "other-host").workspace(job, 2)
    assert second.restore_checkpoint() is True
    assert (second.checkpoint_dir / "checkpoint.pt").read_bytes() == b"attempt 1, epoch 1"
    assert (second.output_dir / "metrics.jsonl").read_text() == "a1\n"
    (second.checkpoint_dir / "checkpoint.pt").write_bytes(b"attempt 2, epoch 2")
    second.checkpoint_saved(second.checkpoint_dir / "checkpoint.pt")
    assert all(k.startswith(f"checkpoints/{job}/{attempt_dir(2)}/") for k in s3.keys(f"checkpoints/{job}/"))

    # Attempt 1 wakes up after its guard passed and stores one more: only its own, older folder changes.
    save(1, b"attempt 1, late", "a1 late\n")
    third = store.workspace(job, 3)
    assert third.restore_checkpoint() is True
    assert (third.checkpoint_dir / "checkpoint.pt").read_bytes() == b"attempt 2, epoch 2"
    third.close()
    assert not third.root.exists()

    store.delete_checkpoints(job)
    assert s3.keys(f"checkpoints/{job}/") == []


def test_exports_uploads_cache_and_deletion(store, s3, tmp_path):
    job = str(uuid.uuid4())
    ws = store.workspace(job, 2)
    ws.output_dir.mkdir(parents=True)
    weights = os.urandom(3 * 1024 * 1024 + 17)  # several read-ahead blocks' worth of chunks
    (ws.output_dir / "student.safetensors").write_bytes(weights)
    (ws.output_dir / "model_card.json").write_text('{"arch": "test_resnet"}')
    files = {p.name: p for p in ws.output_dir.iterdir()}
    stored = {f.name: f for f in ws.publish(files)}
    sha = hashlib.sha256(weights).hexdigest()
    assert stored["student.safetensors"].key == f"{job}/{attempt_dir(2)}/student.safetensors"
    assert stored["student.safetensors"].sha256 == sha and stored["student.safetensors"].size == len(weights)
    assert s3.get(f"artifacts/{job}/{attempt_dir(2)}/student.safetensors") == weights
    ws.close()

    key = stored["student.safetensors"].key
    blob = store.open_artifact(key)
    assert blob is not None and blob.size == len(weights)
    assert b"".join(blob.iter_range(0, blob.size)) == weights
    assert b"".join(blob.iter_range(1_000_000, 2_500_000)) == weights[1_000_000:3_500_000]
    assert store.read_artifact(stored["model_card.json"].key) == b'{"arch": "test_resnet"}'
    assert store.open_artifact(f"{job}/nothing") is None and store.read_artifact("../etc/passwd") is None
    assert store.artifact_exists(key) and not store.artifact_exists(f"{job}/../{job}/x")

    # The teacher cache: content-addressed, checked, reused without a request.
    cached = store.fetch_artifact(key, sha)
    assert cached == store.cache_dir / sha and cached.read_bytes() == weights
    with pytest.raises(StorageError, match="sha256"):
        store.fetch_artifact(stored["model_card.json"].key, "0" * 64)
    assert not [p for p in store.cache_dir.iterdir() if p.name.startswith(".")]  # no partial file left
    assert store.fetch_artifact(f"{job}/missing", "1" * 64) is None

    staged = store.upload_staging_dir() / ".upload-x.part"
    staged.write_bytes(b"teacher bytes")
    model_id = uuid.uuid4()
    upload_key = store.store_upload(staged, model_id)
    assert upload_key == f"{model_id}.safetensors" and not staged.exists()
    assert s3.get(f"uploads/{upload_key}") == b"teacher bytes" and store.upload_exists(upload_key)
    fetched = store.fetch_upload(upload_key, hashlib.sha256(b"teacher bytes").hexdigest())
    assert fetched is not None and fetched.read_bytes() == b"teacher bytes"
    store.delete_upload(upload_key)
    assert not store.upload_exists(upload_key)

    store.delete_job(job)
    assert s3.keys(f"artifacts/{job}/") == []
    store.delete_job(job)  # nothing left to delete: not an error
    assert cached.is_file()  # the cache is this host's, not the store's

    # A store that cannot be written is a StorageError naming neither the bucket nor the endpoint.
    broken = S3Store(f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}", tmp_path / "broken")
    ws = broken.workspace(job, 1)
    ws.output_dir.mkdir(parents=True)
    (ws.output_dir / "model_card.json").write_text("{}")
    with pytest.raises(StorageError) as info:
        ws.publish({"model_card.json": ws.output_dir / "model_card.json"})
    assert "no-such-bucket" not in str(info.value) and "127.0.0.1" not in str(info.value)
    ws.checkpoint_saved(ws.output_dir / "model_card.json")  # logged, not raised: training goes on


def test_storage_url_setting(service_settings, tmp_path):
    base = service_settings.model_dump()
    assert isinstance(open_store(service_settings), LocalStore)  # unset: the data directory
    settings = Settings(**{**base, "storage_url": "s3://my-bucket/some/prefix", "data_dir": tmp_path})
    opened = open_store(settings)
    assert isinstance(opened, S3Store) and opened.base == "my-bucket/some/prefix"
    assert opened.work_dir == tmp_path / "work"
    assert Settings(**{**base, "storage_url": ""}).storage_url is None
    for bad in ("my-bucket", "gs://my-bucket", "s3://", "s3://UPPER/x", "file:///tmp"):
        with pytest.raises(ValueError, match="HCD_STORAGE_URL"):
            Settings(**{**base, "storage_url": bad})


# --------------------------------------------------------------------------- the API on the bucket
@pytest.fixture(scope="module")
def s3_client(s3_settings):
    from api.app import create_app

    with TestClient(create_app(s3_settings), raise_server_exceptions=False) as client:
        yield client


def _stored_job(settings: Settings, owner: str, files: dict[str, bytes]) -> tuple[uuid.UUID, dict[str, str]]:
    """A succeeded job whose files were published to the store by an attempt, as a worker does."""
    job_id = insert_job(settings, owner, "succeeded")
    ws = open_store(settings).workspace(job_id, 1)
    ws.output_dir.mkdir(parents=True)
    for name, content in files.items():
        (ws.output_dir / name).write_bytes(content)
    stored = ws.publish({name: ws.output_dir / name for name in files})
    ws.close()
    with database(settings).sessionmaker() as session:
        session.add_all([Artifact(job_id=job_id, name=f.name, path=f.key, size=f.size, sha256=f.sha256,
                                  media_type=f.media_type) for f in stored])
        session.commit()
    return job_id, {f.name: f.sha256 for f in stored}


def test_downloads_stream_from_the_bucket_with_ranges_etag_and_a_presigned_redirect(
        s3_client, s3_settings, s3, api_owner, auth_headers):
    weights = os.urandom(700_000)
    job_id, shas = _stored_job(s3_settings, api_owner, {"student.safetensors": weights, "model_card.json": b"{}"})
    url = f"/jobs/{job_id}/artifacts/student.safetensors"

    r = s3_client.get(url, headers=auth_headers)
    assert r.status_code == 200 and r.content == weights
    assert r.headers["etag"] == f'"{shas["student.safetensors"]}"' and r.headers["accept-ranges"] == "bytes"
    r = s3_client.get(url, headers={**auth_headers, "Range": "bytes=300000-400009"})
    assert r.status_code == 206 and r.content == weights[300_000:400_010]
    assert r.headers["content-range"] == f"bytes 300000-400009/{len(weights)}"
    r = s3_client.get(url, headers={**auth_headers, "Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == weights[-10:]
    assert_problem(s3_client.get(url, headers={**auth_headers, "Range": f"bytes={len(weights)}-"}), 416,
                   "range_not_satisfiable")
    etag = f'"{shas["student.safetensors"]}"'
    assert s3_client.get(url, headers={**auth_headers, "If-None-Match": etag}).status_code == 304

    r = s3_client.get(url, params={"redirect": "true"}, headers=auth_headers, follow_redirects=False)
    assert r.status_code == 307 and r.headers["cache-control"] == "no-store"
    location = r.headers["location"]
    assert location.startswith(f"{s3.endpoint}/{s3.bucket}/hcd/artifacts/{job_id}/") and "X-Amz-Signature" in location
    direct = httpx.get(location)  # no API key: the signature is the authorisation
    assert direct.status_code == 200 and hashlib.sha256(direct.content).hexdigest() == shas["student.safetensors"]
    assert direct.headers["content-disposition"] == 'attachment; filename="student.safetensors"'

    # Gone from the bucket behind the API's back: a 404, not a 500.
    s3.client().delete_object(Bucket=s3.bucket, Key=f"hcd/artifacts/{job_id}/{attempt_dir(1)}/model_card.json")
    assert_problem(s3_client.get(f"/jobs/{job_id}/artifacts/model_card.json", headers=auth_headers), 404,
                   "not_found")

    assert s3_client.delete(f"/jobs/{job_id}", headers=auth_headers).status_code == 204
    assert s3.keys(f"artifacts/{job_id}/") == []
    assert _tree(s3_settings.data_dir / "artifacts") == []  # nothing went to the API host's disk


def test_redirect_with_the_local_store_serves_the_file(api_client, service_settings, api_owner, auth_headers):
    from api_helpers import add_artifact

    job_id = insert_job(service_settings, api_owner, "succeeded")
    digest = add_artifact(service_settings, job_id, "model_card.json", b'{"a": 1}', "application/json")
    r = api_client.get(f"/jobs/{job_id}/artifacts/model_card.json", params={"redirect": "true"},
                       headers=auth_headers, follow_redirects=False)
    assert r.status_code == 200 and r.content == b'{"a": 1}' and r.headers["etag"] == f'"{digest}"'


def test_uploaded_teacher_goes_to_the_bucket_and_its_deletion_too(s3_client, s3_settings, s3, auth_headers):
    import torch
    from safetensors.torch import save

    from hcd_core.models import create_timm_model

    torch.manual_seed(0)
    content = save({k: v.contiguous() for k, v in create_timm_model("test_resnet", 10, 16).state_dict().items()})
    r = s3_client.post("/models", files={"file": ("t.safetensors", content, "application/octet-stream")},
                       data={"arch": "test_resnet", "num_classes": "10"}, headers=auth_headers)
    assert r.status_code == 201, r.text
    model = r.json()
    assert s3.get(f"uploads/{model['id']}.safetensors") == content
    assert _tree(s3_settings.local_work_dir / "uploads") == []  # the staged file is gone
    spec = tiny_spec("kd", teacher={"arch": "test_resnet", "weights": {"source": "model", "model_id": model["id"]}})
    job = s3_client.post("/jobs", json={"spec": spec}, headers=auth_headers)
    assert job.status_code == 202, job.text  # the API found the weights in the bucket
    assert s3_client.post(f"/jobs/{job.json()['id']}/cancel", headers=auth_headers).status_code == 202

    assert s3_client.delete(f"/models/{model['id']}", headers=auth_headers).status_code == 204
    assert s3.keys("uploads/") == []


def test_uploaded_dataset_goes_to_the_bucket_and_a_fresh_host_unpacks_it(s3_client, s3_settings, s3, auth_headers,
                                                                          tmp_path):
    """The archive is stored in the bucket (nothing stays on the API host); a worker host with an empty
    disk fetches it by sha256 and unpacks it once."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "domain"))
    from archive_builders import GOOD, make_tar

    from jobs.datasets import DatasetRef, unpacked_dataset

    archive = make_tar(tmp_path / "pets.tar.gz", GOOD)
    with open(archive, "rb") as handle:
        r = s3_client.post("/datasets", files={"file": ("pets.tar.gz", handle, "application/gzip")},
                           data={"name": "pets"}, headers=auth_headers)
    assert r.status_code == 201, r.text
    dataset = r.json()
    assert s3.get(f"uploads/{dataset['id']}.tar.gz") == archive.read_bytes()
    assert _tree(s3_settings.local_work_dir / "uploads") == []  # staged file and scratch folder gone

    host = Settings(**{**s3_settings.model_dump(), "work_dir": tmp_path / "worker-host"})
    ref = DatasetRef(id=uuid.UUID(dataset["id"]), key=f"{dataset['id']}.tar.gz", sha256=dataset["sha256"],
                     num_classes=2)
    folder = unpacked_dataset(open_store(host), ref, host)
    assert folder == host.local_work_dir / "datasets" / dataset["sha256"]
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png")) == sorted(GOOD)
    assert unpacked_dataset(open_store(host), ref, host) == folder  # cached: not fetched again

    assert s3_client.delete(f"/datasets/{dataset['id']}", headers=auth_headers).status_code == 204
    assert s3.keys("uploads/") == []


# --------------------------------------------------------------------------- end to end, no shared directory
@pytest.fixture(scope="module")
def s3_api(s3_env, s3_settings, tmp_path_factory):
    """A real `hcd api` on the bucket, with a data directory of its own (s3_settings.data_dir)."""
    server, url = start_api("hcd api on the bucket", {**s3_env, "HCD_DATA_DIR": str(s3_settings.data_dir)},
                            tmp_path_factory.mktemp("api-s3"), workers=1)
    yield url
    server.stop()


@pytest.fixture
def http(s3_api, api_key):
    with httpx.Client(base_url=s3_api, headers={"Authorization": f"Bearer {api_key}"}, timeout=30) as client:
        yield client


def _submit(http: httpx.Client, spec: dict) -> str:
    r = http.post("/jobs", json={"spec": spec})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _download(http: httpx.Client, job_id: str, name: str) -> tuple[bytes, str]:
    listed = {a["name"]: a for a in http.get(f"/jobs/{job_id}/artifacts").json()["data"]}
    r = http.get(f"/jobs/{job_id}/artifacts/{name}")
    assert r.status_code == 200, r.text
    assert hashlib.sha256(r.content).hexdigest() == listed[name]["sha256"] == r.headers["etag"].strip('"')
    return r.content, listed[name]["sha256"]


LONG = dict(epochs=30, steps=10)


def _on_bucket(s3: S3, host: Path) -> dict[str, str]:
    """A worker's environment on a host of its own: the bucket, and a local disk nobody else sees."""
    return {**s3.env, "HCD_STORAGE_URL": s3.url, "HCD_DATA_DIR": str(host)}


@pytest.mark.slow
def test_job_resumes_after_sigkill_on_a_worker_with_an_empty_disk_and_downloads_through_the_api(
        http, s3, s3_settings, service_settings, start_worker, tmp_path):
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    first = start_worker("worker-a", **_on_bucket(s3, host_a))
    job_id = _submit(http, tiny_spec("ce", **LONG))
    wait_for_progress(service_settings, job_id, min_epoch=3, timeout=120, workers=[first])
    checkpoint = f"checkpoints/{job_id}/{attempt_dir(1)}/checkpoint.pt"
    wait_until(lambda: checkpoint in s3.keys(f"checkpoints/{job_id}/"), 30, 0.2, "a checkpoint in the bucket")
    first.kill_group(signal.SIGKILL)  # the worker and its job child, no goodbye
    first.proc.wait()

    second = start_worker("worker-b", **_on_bucket(s3, host_b))  # a host that never saw the job
    job = wait_for_status(service_settings, job_id, ("succeeded", "failed"), 180, [second])
    assert job.status == "succeeded", (job.error_code, job.error_message)
    assert job.attempt == 2
    resumed = [e for e in job_events(service_settings, job_id) if e.type == "resumed"]
    assert len(resumed) == 1 and resumed[0].attempt == 2 and resumed[0].data["epoch"] >= 3

    # The exports are attempt 2's objects; checkpoints are gone; no host kept any of the job's files.
    assert s3.keys(f"artifacts/{job_id}/") == [f"artifacts/{job_id}/{attempt_dir(2)}/{name}" for name in
                                               ("metrics.jsonl", "model_card.json", "student.safetensors")]
    assert s3.keys(f"checkpoints/{job_id}/") == []
    for host in (host_a, host_b, s3_settings.data_dir):
        assert not (host / "artifacts" / job_id).exists() and not (host / "checkpoints" / job_id).exists()
    assert not (host_b / "work" / "jobs" / job_id).exists()  # the attempt's staging is dropped at its end

    weights, sha = _download(http, job_id, "student.safetensors")
    card = json.loads(_download(http, job_id, "model_card.json")[0])
    assert card["student_sha256"] == sha
    # The log went with the checkpoint: every step once, though two hosts wrote it.
    log = [json.loads(line) for line in _download(http, job_id, "metrics.jsonl")[0].decode().splitlines()]
    steps = [p["step"] for p in log if p["name"] == "loss"]
    assert len(steps) == LONG["epochs"] * LONG["steps"] and len(set(steps)) == len(steps)

    r = http.get(f"/jobs/{job_id}/artifacts/student.safetensors", params={"redirect": "true"})
    assert r.status_code == 307
    direct = httpx.get(r.headers["location"])
    assert direct.status_code == 200 and direct.content == weights


@pytest.mark.slow
def test_students_worker_fetches_its_teacher_jobs_weights_through_the_store(
        http, s3, service_settings, start_worker, tmp_path):
    host = tmp_path / "gpu-host"
    worker = start_worker("worker-c", **_on_bucket(s3, host))
    teacher = _submit(http, tiny_spec("ce", arch="test_resnet", epochs=1, steps=4))
    # Submitted at once: it waits for its teacher, as with a shared directory.
    student = _submit(http, tiny_spec("kd", arch="test_resnet", epochs=1, steps=3,
                                      teacher={"arch": "test_resnet", "weights": {"source": "job", "job_id": teacher}}))
    for job_id in (teacher, student):
        job = wait_for_status(service_settings, job_id, ("succeeded", "failed"), 180, [worker])
        assert job.status == "succeeded", (job.error_code, job.error_message)
    _, teacher_sha = _download(http, teacher, "student.safetensors")
    card = json.loads(_download(http, student, "model_card.json")[0])
    assert card["teacher_sha256"] == teacher_sha
    # The worker loaded it from its cache (content-addressed), fetched from the bucket.
    assert (host / "work" / "cache" / teacher_sha).is_file()
    assert http.get(f"/jobs/{teacher}").json()["status"] == "succeeded"


def test_an_unreachable_store_is_a_503_that_names_no_endpoint(s3_settings, api_owner, auth_headers, monkeypatch):
    """The bucket's endpoint stops answering: downloads and uploads get 503 `storage_unavailable` with
    Retry-After (a retry may succeed), never a 500, and the message names neither endpoint nor bucket."""
    from api.app import create_app

    job_id, _ = _stored_job(s3_settings, api_owner, {"model_card.json": b"{}"})
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    with TestClient(create_app(s3_settings), raise_server_exceptions=False) as client:
        r = client.get(f"/jobs/{job_id}/artifacts/model_card.json", headers=auth_headers)
        assert_problem(r, 503, "storage_unavailable")
        assert int(r.headers["retry-after"]) > 0
        for leak in (dead, "127.0.0.1", s3_settings.storage_url or "s3://", str(s3_settings.data_dir)):
            assert leak not in r.text
