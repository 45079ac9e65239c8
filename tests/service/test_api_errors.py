"""Malformed and out-of-bounds input: problem+json with stable codes, never a 5xx."""

from __future__ import annotations

import copy
import uuid

import pytest
from api_helpers import add_artifact, assert_problem, ce_spec, hcd_spec, insert_job


def _post_raw(client, headers, raw: bytes, content_type="application/json"):
    return client.post("/jobs", content=raw, headers={**headers, "Content-Type": content_type})


@pytest.mark.parametrize("raw", [
    b"{", b"not json", b"", b'{"spec": NaN}', b'{"spec": Infinity}', b"[" * 100_000,
    b'{"spec": ' + b"9" * 5000 + b"}",
])
def test_malformed_json_is_400(api_client, auth_headers, raw):
    assert_problem(_post_raw(api_client, auth_headers, raw), 400, "invalid_json")


def test_wrong_media_type_is_415(api_client, auth_headers):
    assert_problem(_post_raw(api_client, auth_headers, b"spec=1", "application/x-www-form-urlencoded"),
                   415, "unsupported_media_type")


def test_body_shape_errors(api_client, auth_headers):
    body = assert_problem(api_client.post("/jobs", json=ce_spec(), headers=auth_headers), 422, "validation_error")
    assert {"loc": "spec", "msg": "field required"} in body["errors"]
    body = assert_problem(api_client.post("/jobs", json={"spec": ce_spec(), "extra": 1}, headers=auth_headers),
                          422, "validation_error")
    assert body["errors"][0]["loc"] == "extra"
    assert_problem(api_client.post("/jobs", json=[1, 2], headers=auth_headers), 422, "validation_error")
    body = assert_problem(api_client.post("/jobs", json={"spec": ce_spec(), "metadata": {"a": 1}},
                                          headers=auth_headers), 422, "validation_error")
    assert body["errors"][0]["loc"] == "metadata.a"


def _spec_with(path: str, value):
    spec = copy.deepcopy(ce_spec())
    node = spec
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return spec


@pytest.mark.parametrize("path,value,loc", [
    ("training.epochs", 10**9, "training.epochs"),
    ("training.epochs", 10**30, "training.epochs"),
    ("training.batch_size", -1, "training.batch_size"),
    ("training.epochs", "ten", "training.epochs"),
    ("training.bogus", 1, "training.bogus"),
    ("student.arch", "hf-hub:evil/model", "student.arch"),
    ("student.arch", "resnet1000", "student.arch"),
    ("dataset.name", "imagenet-22k", "dataset.name"),
    ("dataset.image_size", 100_000, "dataset.image_size"),
    ("seed", 2**40, "seed"),
    ("unknown_top", True, "unknown_top"),
])
def test_out_of_bounds_and_unknown_fields_name_the_field(api_client, auth_headers, path, value, loc):
    body = assert_problem(api_client.post("/jobs", json={"spec": _spec_with(path, value)}, headers=auth_headers),
                          422, "invalid_spec")
    assert loc in [e["loc"] for e in body["errors"]], body
    assert loc in body["detail"]


def test_huge_float_literal_is_out_of_bounds(api_client, auth_headers):
    import json

    raw = json.dumps({"spec": ce_spec()}).replace('"batch_size": 16', '"batch_size": 16, "lr": 1e400')
    body = assert_problem(_post_raw(api_client, auth_headers, raw.encode()), 422, "invalid_spec")
    assert [e["loc"] for e in body["errors"]] == ["training.lr"]


def test_non_finite_teacher_normalisation_is_422_not_500(api_client, auth_headers):
    """Python's json reads 1e999 as inf; Postgres' JSONB cannot store it (it was a 500 and a reset connection)."""
    import json

    for field in ("mean", "std"):
        raw = json.dumps({"spec": hcd_spec({"source": "timm"})})
        timm = '"weights": {"source": "timm"}'
        raw = raw.replace(timm, f'{timm}, "{field}": [1e999, 0.5, 0.5]')
        body = assert_problem(_post_raw(api_client, auth_headers, raw.encode()), 422, "invalid_spec")
        assert [e["loc"] for e in body["errors"]] == [f"teacher.{field}.0"], body


@pytest.mark.parametrize("dataset, training, fields", [
    # ~37 GB just to generate the images
    ({"train_size": 1_000_000, "image_size": 32}, {}, {"dataset.train_size"}),
    # 51.5 GB for one input batch alone
    ({"image_size": 1024}, {"batch_size": 4096}, {"training.batch_size", "dataset.image_size"}),
])
def test_spec_needing_more_memory_than_the_budget_is_refused(api_client, auth_headers, dataset, training, fields):
    spec = ce_spec(**dataset)
    spec["training"].update(training)
    body = assert_problem(api_client.post("/jobs", json={"spec": spec}, headers=auth_headers), 422, "job_too_large")
    assert fields <= {e["loc"] for e in body["errors"]}, body
    assert all("the server allows 16 GiB" in e["msg"] for e in body["errors"]), body
    # nothing was created
    assert api_client.get("/jobs", headers=auth_headers).json()["data"] == []


def test_method_switch_error_names_field_without_union_tag(api_client, auth_headers):
    spec = hcd_spec({"source": "timm"})
    spec["method"] = {"name": "hcd", "temperature": 1e9, "num_sub_logits": 0}
    body = assert_problem(api_client.post("/jobs", json={"spec": spec}, headers=auth_headers), 422, "invalid_spec")
    locs = {e["loc"] for e in body["errors"]}
    assert locs == {"method.temperature", "method.num_sub_logits"}, body


def test_cross_field_rules(api_client, auth_headers):
    spec = ce_spec()
    spec["teacher"] = {"arch": "test_resnet", "weights": {"source": "timm"}}
    body = assert_problem(api_client.post("/jobs", json={"spec": spec}, headers=auth_headers), 422, "invalid_spec")
    assert "teacher must be absent" in body["errors"][0]["msg"]


@pytest.mark.parametrize("root", ["../outside", "/etc", "a/../../b", "/tmp/../etc"])
def test_dataset_root_must_stay_in_datasets_dir(api_client, auth_headers, root):
    spec = ce_spec()
    spec["dataset"] = {"name": "cifar10", "root": root, "image_size": 32}
    body = assert_problem(api_client.post("/jobs", json={"spec": spec}, headers=auth_headers), 422, "invalid_spec")
    assert body["errors"][0]["loc"] == "dataset.root"


def test_dataset_root_inside_is_accepted(api_client, auth_headers, service_settings):
    spec = ce_spec()
    spec["dataset"] = {"name": "cifar10", "root": "cifar", "image_size": 32}
    assert api_client.post("/jobs", json={"spec": spec}, headers=auth_headers).status_code == 202
    spec["dataset"]["root"] = str(service_settings.datasets_dir / "cifar")
    assert api_client.post("/jobs", json={"spec": spec}, headers=auth_headers).status_code == 202


def test_teacher_rules(api_client, auth_headers, service_settings, api_owner):
    post = lambda weights, **kw: api_client.post(  # noqa: E731
        "/jobs", json={"spec": hcd_spec(weights, **kw)}, headers=auth_headers)
    body = assert_problem(post({"source": "file", "path": "/etc/passwd"}), 422, "invalid_spec")
    assert body["errors"][0]["loc"] == "teacher.weights.source"
    assert_problem(post({"source": "job", "job_id": "not-a-uuid"}), 422, "teacher_not_found")
    assert_problem(post({"source": "job", "job_id": str(uuid.uuid4())}), 422, "teacher_not_found")
    assert_problem(post({"source": "model", "model_id": str(uuid.uuid4())}), 422, "teacher_not_found")

    failed = insert_job(service_settings, api_owner, status="failed")
    body = assert_problem(post({"source": "job", "job_id": str(failed)}), 422, "invalid_spec")
    assert "failed" in body["detail"]
    # A teacher still running is fine: the student waits for it (queued, phase waiting_for_teacher).
    running = insert_job(service_settings, api_owner, status="running")
    waiting = post({"source": "job", "job_id": str(running)})
    assert waiting.status_code == 202 and waiting.json()["phase"] == "waiting_for_teacher", waiting.text
    body = assert_problem(post({"source": "job", "job_id": str(running)}, teacher_arch="test_vit"), 422, "invalid_spec")
    assert body["errors"][0]["loc"] == "teacher.arch"  # checked against the running teacher's spec too

    done = insert_job(service_settings, api_owner, status="succeeded")
    body = assert_problem(post({"source": "job", "job_id": str(done)}), 422, "invalid_spec")
    assert "student.safetensors" in body["detail"]  # succeeded but nothing exported
    add_artifact(service_settings, done, "student.safetensors", b"w", "application/octet-stream")
    body = assert_problem(post({"source": "job", "job_id": str(done)}, teacher_arch="test_vit"), 422, "invalid_spec")
    assert body["errors"][0]["loc"] == "teacher.arch"
    body = assert_problem(post({"source": "job", "job_id": str(done)}, num_classes=7), 422, "invalid_spec")
    assert "classes" in body["detail"]
    r = post({"source": "job", "job_id": str(done)})
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["teacher"]["weights"] == {"source": "job", "job_id": str(done)}
    assert post({"source": "timm"}).status_code == 202


@pytest.mark.parametrize("path", [
    "/jobs/123", "/jobs/not-a-uuid", "/jobs/%00", "/jobs/" + "a" * 500, "/jobs/1/events", "/jobs/x/metrics",
    "/jobs/x/artifacts", "/jobs/x/artifacts/student.safetensors", "/models/nope", "/jobs/x/metrics/stream",
])
def test_non_uuid_ids_are_404(api_client, auth_headers, path):
    assert_problem(api_client.get(path, headers=auth_headers), 404, "not_found")


def test_non_uuid_cancel_and_delete_are_404(api_client, auth_headers):
    assert_problem(api_client.post("/jobs/abc/cancel", headers=auth_headers), 404, "not_found")
    assert_problem(api_client.delete("/jobs/abc", headers=auth_headers), 404, "not_found")


def test_oversize_body_is_413(api_client, auth_headers, service_settings):
    spec = ce_spec()
    big = {"spec": spec, "metadata": {"k": "x" * (service_settings.max_request_bytes + 10)}}
    assert_problem(api_client.post("/jobs", json=big, headers=auth_headers), 413, "payload_too_large")

    def chunks():  # no Content-Length: the streamed body is counted
        yield b'{"spec": {}, "metadata": {"k": "'
        for _ in range(service_settings.max_request_bytes // 65536 + 2):
            yield b"x" * 65536
        yield b'"}}'
    r = api_client.post("/jobs", content=chunks(), headers={**auth_headers, "Content-Type": "application/json"})
    assert_problem(r, 413, "payload_too_large")


def test_framework_defaults_are_problems(api_client, auth_headers):
    assert_problem(api_client.get("/nope", headers=auth_headers), 404, "not_found")
    assert_problem(api_client.put("/jobs", headers=auth_headers), 405, "method_not_allowed")
    body = assert_problem(api_client.get("/jobs?limit=0", headers=auth_headers), 422, "validation_error")
    assert body["errors"][0]["loc"] == "query.limit"
    assert_problem(api_client.get("/jobs?limit=99999999999999999999999", headers=auth_headers), 422, "validation_error")
    assert_problem(api_client.get("/jobs?status=exploded", headers=auth_headers), 422, "validation_error")
    assert_problem(api_client.get("/jobs?after=garbage!!", headers=auth_headers), 422, "validation_error")
    assert_problem(api_client.get("/jobs?after=WzEsMl0", headers=auth_headers), 422, "validation_error")
    assert_problem(api_client.post("/jobs", json={"spec": ce_spec()},
                                   headers={**auth_headers, "Idempotency-Key": "k" * 300}),
                   422, "validation_error")


def test_mutated_specs_never_cause_5xx(api_client, auth_headers):
    """Random type/value mutations at random places of a valid body: always a 2xx/4xx problem."""
    import random

    rng = random.Random(1234)
    odd_values = [None, True, -1, 0, 2**63, -(2**70), 1e308, -1e-308, "", "x" * 5000, "../..", [], [1, "a"],
                  {}, {"name": "hcd"}, {"source": "job", "job_id": "00000000-0000-0000-0000-000000000000"},
                  "\u0000", "\ud7ff", 3.5]

    def paths(node, prefix=()):
        yield prefix
        if isinstance(node, dict):
            for key, value in node.items():
                yield from paths(value, (*prefix, key))

    base = {"spec": hcd_spec({"source": "timm"})}
    all_paths = [p for p in paths(base) if p]
    for _ in range(150):
        body = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(all_paths)
            node = body
            try:
                for key in path[:-1]:
                    node = node[key]
                if rng.random() < 0.2:
                    node[f"extra_{rng.randint(0, 9)}"] = rng.choice(odd_values)
                else:
                    node[path[-1]] = rng.choice(odd_values)
            except (KeyError, TypeError):
                continue
        r = api_client.post("/jobs", json=body, headers=auth_headers)
        assert r.status_code < 500, (body, r.text)
        if r.status_code >= 400:
            assert r.headers["content-type"].startswith("application/problem+json")
        elif r.status_code == 202:
            api_client.post(f"/jobs/{r.json()['id']}/cancel", headers=auth_headers)  # stay under the cap


@pytest.mark.parametrize("raw", [
    b'{"spec": SPEC, "metadata": {"k": "\\ud800"}}',
    b'{"spec": SPEC, "metadata": {"\\udfff": "v"}}',
    b'{"spec": SPEC, "metadata": {"k": "a\\u0000b"}}',
])
def test_unencodable_strings_are_rejected_not_500(api_client, auth_headers, raw):
    import json

    body = raw.replace(b"SPEC", json.dumps(ce_spec()).encode())
    r = _post_raw(api_client, auth_headers, body)
    assert r.status_code in (400, 422), r.text
    assert r.headers["content-type"].startswith("application/problem+json")


def test_unencodable_string_in_spec_is_rejected(api_client, auth_headers):
    import json

    spec = ce_spec()
    spec["dataset"] = {"name": "cifar10", "root": "ROOT", "image_size": 32}
    for bad in ("\\ud800", "a\\u0000"):
        raw = json.dumps({"spec": spec}).replace("ROOT", bad).encode()
        r = _post_raw(api_client, auth_headers, raw)
        assert r.status_code in (400, 422), r.text


def test_nul_in_query_and_path_is_not_500(api_client, auth_headers, service_settings, api_owner):
    import base64
    import json

    job_id = insert_job(service_settings, api_owner, status="succeeded")
    assert_problem(api_client.get(f"/jobs/{job_id}/artifacts/a%00b", headers=auth_headers), 404, "not_found")
    assert_problem(api_client.get(f"/jobs/{job_id}/metrics?name=a%00", headers=auth_headers), 422, "validation_error")
    cursor = base64.urlsafe_b64encode(json.dumps(["a\u0000", 1]).encode()).decode().rstrip("=")
    assert_problem(api_client.get(f"/jobs/{job_id}/metrics", params={"after": cursor}, headers=auth_headers),
                   422, "validation_error")
    big = base64.urlsafe_b64encode(json.dumps(["a", 2**70]).encode()).decode().rstrip("=")
    assert_problem(api_client.get(f"/jobs/{job_id}/metrics", params={"after": big}, headers=auth_headers),
                   422, "validation_error")
    assert_problem(api_client.get(f"/jobs/{job_id}/events", params={"after": big}, headers=auth_headers),
                   422, "validation_error")
