"""Teacher uploads: safetensors only, checked against the architecture, size-capped, never unpickled."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct

import pytest
from api_helpers import assert_problem, hcd_spec
from fastapi.testclient import TestClient

from api.app import create_app
from jobs.storage import LocalStore


@pytest.fixture(scope="module")
def resnet_weights() -> bytes:
    import torch
    from safetensors.torch import save

    from hcd_core.models import create_timm_model

    torch.manual_seed(0)
    model = create_timm_model("test_resnet", 4, 16)
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def _upload(client, headers, content: bytes, filename="teacher.safetensors", **fields):
    form = {"arch": "test_resnet", "num_classes": "4", **{k: str(v) for k, v in fields.items()}}
    return client.post("/models", files={"file": (filename, content, "application/octet-stream")},
                       data=form, headers=headers)


def test_valid_upload_is_stored_and_usable_as_teacher(api_client, auth_headers, resnet_weights, service_settings):
    r = _upload(api_client, auth_headers, resnet_weights, "../dir/teacher.safetensors",
                mean="0.5,0.5,0.5", std="[0.25, 0.25, 0.25]", image_size=16)
    assert r.status_code == 201, r.text
    model = r.json()
    assert model["sha256"] == hashlib.sha256(resnet_weights).hexdigest() and model["size"] == len(resnet_weights)
    assert model["arch"] == "test_resnet" and model["num_classes"] == 4 and model["std"] == [0.25] * 3
    assert r.headers["location"] == f"/models/{model['id']}"
    assert model["filename"] == "teacher.safetensors"  # no directories
    stored = LocalStore(service_settings.data_dir).uploads / f"{model['id']}.safetensors"
    assert stored.read_bytes() == resnet_weights
    assert not list(LocalStore(service_settings.data_dir).uploads.glob(".upload-*"))  # no temporary leftovers
    assert api_client.get(f"/models/{model['id']}", headers=auth_headers).json() == model
    assert model["id"] in [m["id"] for m in api_client.get("/models", headers=auth_headers).json()["data"]]

    job = api_client.post("/jobs", json={"spec": hcd_spec({"source": "model", "model_id": model["id"]})},
                          headers=auth_headers)
    assert job.status_code == 202, job.text
    wrong_arch = api_client.post("/jobs", json={"spec": hcd_spec({"source": "model", "model_id": model["id"]},
                                                                 teacher_arch="test_vit")}, headers=auth_headers)
    assert_problem(wrong_arch, 422, "invalid_spec")
    wrong_classes = api_client.post("/jobs", json={"spec": hcd_spec({"source": "model", "model_id": model["id"]},
                                                                    num_classes=6)}, headers=auth_headers)
    assert_problem(wrong_classes, 422, "invalid_spec")


class _Boom:
    def __reduce__(self):  # would run code if anything unpickled it
        return (exec, ("raise SystemExit('unpickled!')",))


def test_pickle_file_is_rejected(api_client, auth_headers):
    body = assert_problem(_upload(api_client, auth_headers, pickle.dumps({"w": _Boom()}), "teacher.pt"),
                          422, "invalid_upload")
    assert "safetensors" in body["detail"]


@pytest.mark.parametrize("content", [
    b"", b"abc", b"\x00" * 64, struct.pack("<Q", 10**12) + b"{}",
    struct.pack("<Q", 4) + b"[1,2", struct.pack("<Q", 2) + b"{}",
    (lambda h: struct.pack("<Q", len(h)) + h)(json.dumps(
        {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()),
])
def test_garbage_is_rejected(api_client, auth_headers, content):
    assert_problem(_upload(api_client, auth_headers, content), 422, "invalid_upload")


def test_weights_of_another_arch_or_class_count_are_rejected(api_client, auth_headers, resnet_weights):
    response = _upload(api_client, auth_headers, resnet_weights, arch="test_convnext")
    body = assert_problem(response, 422, "invalid_upload")
    assert "missing tensors" in body["detail"] or "unexpected tensors" in body["detail"]
    body = assert_problem(_upload(api_client, auth_headers, resnet_weights, num_classes=7), 422, "invalid_upload")
    assert "shape" in body["detail"]


def test_bad_form_fields(api_client, auth_headers, resnet_weights):
    response = _upload(api_client, auth_headers, resnet_weights, arch="hf-hub:evil/x")
    body = assert_problem(response, 422, "invalid_upload")
    assert body["errors"][0]["loc"] == "arch"
    assert_problem(_upload(api_client, auth_headers, resnet_weights, num_classes="many"), 422, "invalid_upload")
    assert_problem(_upload(api_client, auth_headers, resnet_weights, std="1,0,1"), 422, "invalid_upload")
    no_file = api_client.post("/models", data={"arch": "test_resnet", "num_classes": "4"},
                              files={"other": ("x", b"1")}, headers=auth_headers)
    assert_problem(no_file, 422, "invalid_upload")
    as_json = api_client.post("/models", json={"arch": "test_resnet"}, headers=auth_headers)
    assert_problem(as_json, 415, "unsupported_media_type")


def test_too_large_upload_is_413(service_settings, api_key, resnet_weights, tmp_path):
    settings = service_settings.model_copy(update={"max_upload_bytes": 4096})
    headers = {"Authorization": f"Bearer {api_key}"}
    with TestClient(create_app(settings)) as client:
        assert len(resnet_weights) > 4096
        assert_problem(_upload(client, headers, resnet_weights), 413, "payload_too_large")

        def streamed():  # no Content-Length: the cap applies while streaming
            yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\n"
            for _ in range(10):
                yield b"\0" * 1024
            yield b"\r\n--b--\r\n"
        r = client.post("/models", content=streamed(),
                        headers={**headers, "Content-Type": "multipart/form-data; boundary=b"})
        assert_problem(r, 413, "payload_too_large")
    assert not list(LocalStore(service_settings.data_dir).uploads.glob(".upload-*"))


def test_delete_model_removes_row_and_file_unless_a_job_uses_it(api_client, auth_headers, other_auth_headers,
                                                                  resnet_weights, service_settings):
    model = _upload(api_client, auth_headers, resnet_weights).json()
    stored = LocalStore(service_settings.data_dir).uploads / f"{model['id']}.safetensors"
    assert stored.is_file()
    assert_problem(api_client.delete(f"/models/{model['id']}", headers=other_auth_headers), 404, "not_found")
    student = api_client.post("/jobs", json={"spec": hcd_spec({"source": "model", "model_id": model["id"]})},
                              headers=auth_headers)
    assert student.status_code == 202, student.text
    body = assert_problem(api_client.delete(f"/models/{model['id']}", headers=auth_headers), 409, "teacher_in_use")
    assert student.json()["id"] in body["detail"] and stored.is_file()

    api_client.post(f"/jobs/{student.json()['id']}/cancel", headers=auth_headers)
    assert api_client.delete(f"/models/{model['id']}", headers=auth_headers).status_code == 204
    assert not stored.exists()
    assert_problem(api_client.get(f"/models/{model['id']}", headers=auth_headers), 404, "not_found")
    assert_problem(api_client.delete(f"/models/{model['id']}", headers=auth_headers), 404, "not_found")
    assert_problem(api_client.delete("/models/not-a-uuid", headers=auth_headers), 404, "not_found")
