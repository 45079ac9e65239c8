"""Artifact listing and download: sha256 ETag, If-None-Match, byte ranges, 416."""

from __future__ import annotations

import hashlib
import os

import pytest
from api_helpers import add_artifact, assert_problem, insert_job

from jobs.storage import LocalStore

CONTENT = os.urandom(1000) + b"tail"


@pytest.fixture
def artifact(service_settings, api_owner):
    job_id = insert_job(service_settings, api_owner, status="succeeded")
    digest = add_artifact(service_settings, job_id, "student.safetensors", CONTENT, "application/octet-stream")
    add_artifact(service_settings, job_id, "model_card.json", b'{"arch": "test_resnet"}', "application/json")
    return job_id, digest, f"/jobs/{job_id}/artifacts/student.safetensors"


def test_list_artifacts(api_client, auth_headers, artifact):
    job_id, digest, url = artifact
    data = api_client.get(f"/jobs/{job_id}/artifacts", headers=auth_headers).json()["data"]
    assert [a["name"] for a in data] == ["model_card.json", "student.safetensors"]
    student = data[1]
    assert student["sha256"] == digest and student["size"] == len(CONTENT) and student["url"] == url


def test_download_with_etag_and_conditional(api_client, auth_headers, artifact):
    _, digest, url = artifact
    r = api_client.get(url, headers=auth_headers)
    assert r.status_code == 200 and r.content == CONTENT
    assert r.headers["etag"] == f'"{digest}"' and hashlib.sha256(r.content).hexdigest() == digest
    assert r.headers["accept-ranges"] == "bytes" and int(r.headers["content-length"]) == len(CONTENT)
    not_modified = api_client.get(url, headers={**auth_headers, "If-None-Match": f'"{digest}"'})
    assert not_modified.status_code == 304 and not_modified.content == b""
    changed = api_client.get(url, headers={**auth_headers, "If-None-Match": '"other"'})
    assert changed.status_code == 200 and changed.content == CONTENT


@pytest.mark.parametrize("header,first,last", [
    ("bytes=0-9", 0, 9), ("bytes=990-", 990, len(CONTENT) - 1), ("bytes=-4", len(CONTENT) - 4, len(CONTENT) - 1),
    ("bytes=1000-99999", 1000, len(CONTENT) - 1),
])
def test_range_requests(api_client, auth_headers, artifact, header, first, last):
    _, _, url = artifact
    r = api_client.get(url, headers={**auth_headers, "Range": header})
    assert r.status_code == 206
    assert r.content == CONTENT[first:last + 1]
    assert r.headers["content-range"] == f"bytes {first}-{last}/{len(CONTENT)}"


def test_unsatisfiable_and_ignored_ranges(api_client, auth_headers, artifact):
    _, digest, url = artifact
    r = api_client.get(url, headers={**auth_headers, "Range": f"bytes={len(CONTENT)}-"})
    assert_problem(r, 416, "range_not_satisfiable")
    assert r.headers["content-range"] == f"bytes */{len(CONTENT)}"
    assert api_client.get(url, headers={**auth_headers, "Range": "bytes=-0"}).status_code == 416
    # malformed or multi-range headers are ignored: the whole file
    for header in ("bytes=5-2", "items=0-1", "bytes=0-1,4-5"):
        whole = api_client.get(url, headers={**auth_headers, "Range": header})
        assert whole.status_code == 200 and whole.content == CONTENT
    stale = api_client.get(url, headers={**auth_headers, "Range": "bytes=0-1", "If-Range": '"old"'})
    assert stale.status_code == 200 and stale.content == CONTENT


def test_missing_artifact_is_404(api_client, auth_headers, artifact, service_settings):
    job_id, _, url = artifact
    assert_problem(api_client.get(f"/jobs/{job_id}/artifacts/nope.bin", headers=auth_headers), 404, "not_found")
    (LocalStore(service_settings.data_dir).artifacts / str(job_id) / "student.safetensors").unlink()
    assert_problem(api_client.get(url, headers=auth_headers), 404, "not_found")
