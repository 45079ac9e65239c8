"""Uploaded datasets: checked before they are accepted (every malicious archive kind gets a clear 4xx and
leaves nothing behind), per owner, refused deletion while a job reads one, and a job that trains on one."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest
from api_helpers import assert_problem
from fastapi.testclient import TestClient
from worker_fixtures import wait_for_status

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "domain"))
from archive_builders import BOMB, GOOD, make_tar, make_zip, make_zip_with_link, png, special_member  # noqa: E402

from jobs.settings import Settings  # noqa: E402
from jobs.storage import LocalStore  # noqa: E402


def _upload(client, headers, archive: Path, name: str | None = "pets"):
    data = {"name": name} if name is not None else {}
    with open(archive, "rb") as handle:
        return client.post("/datasets", files={"file": (archive.name, handle, "application/octet-stream")},
                           data=data, headers=headers)


def _spec(dataset_id: str) -> dict:
    return {"method": {"name": "ce"}, "student": {"arch": "test_resnet"},
            "dataset": {"name": "imagefolder", "dataset_id": dataset_id, "image_size": 16},
            "training": {"recipe": "quick", "epochs": 2, "batch_size": 4, "warmup_epochs": 0}, "seed": 0}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_upload_get_list_use_and_delete(api_client, auth_headers, other_auth_headers, service_settings, tmp_path):
    archive = make_zip(tmp_path / "pets.zip", GOOD, prefix="pets/")
    r = _upload(api_client, auth_headers, archive)
    assert r.status_code == 201, r.text
    dataset = r.json()
    assert (dataset["object"], dataset["name"], dataset["classes"], dataset["num_classes"]) == \
        ("dataset", "pets", ["cat", "dog"], 2)
    assert (dataset["num_train"], dataset["num_val"], dataset["filename"]) == (6, 4, "pets.zip")
    assert dataset["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert dataset["size"] == archive.stat().st_size and r.headers["location"] == f"/datasets/{dataset['id']}"
    uploads = LocalStore(service_settings.data_dir).uploads
    assert (uploads / f"{dataset['id']}.zip").read_bytes() == archive.read_bytes()
    assert not [p for p in uploads.iterdir() if p.name.startswith(".")]  # no staging or scratch leftovers

    assert api_client.get(f"/datasets/{dataset['id']}", headers=auth_headers).json() == dataset
    assert dataset["id"] in [d["id"] for d in api_client.get("/datasets", headers=auth_headers).json()["data"]]
    assert_problem(api_client.get(f"/datasets/{dataset['id']}", headers=other_auth_headers), 404, "not_found")

    # Another owner's dataset does not exist for a spec; one's own does.
    other = api_client.post("/jobs", json={"spec": _spec(dataset["id"])}, headers=other_auth_headers)
    body = assert_problem(other, 422, "dataset_not_found")
    assert body["errors"] == [{"loc": "dataset.dataset_id", "msg": "no such dataset of yours"}]
    assert_problem(api_client.post("/jobs", json={"spec": {**_spec(dataset["id"]), "dataset": {
        "name": "digits", "dataset_id": dataset["id"]}}}, headers=auth_headers), 422, "invalid_spec")
    job = api_client.post("/jobs", json={"spec": _spec(dataset["id"])}, headers=auth_headers)
    assert job.status_code == 202, job.text

    assert_problem(api_client.delete(f"/datasets/{dataset['id']}", headers=auth_headers), 409, "dataset_in_use")
    assert api_client.post(f"/jobs/{job.json()['id']}/cancel", headers=auth_headers).status_code == 202
    assert api_client.delete(f"/datasets/{dataset['id']}", headers=auth_headers).status_code == 204
    assert not (uploads / f"{dataset['id']}.zip").exists()
    assert_problem(api_client.get(f"/datasets/{dataset['id']}", headers=auth_headers), 404, "not_found")


def test_list_pages_newest_first(api_client, auth_headers, tmp_path):
    headers = auth_headers  # a fresh owner per test: the list holds only its datasets
    archive = make_tar(tmp_path / "pets.tar.gz", GOOD)
    ids = [_upload(api_client, headers, archive, name=f"pets-{i}").json()["id"] for i in range(3)]
    first = api_client.get("/datasets", params={"limit": 2}, headers=headers).json()
    assert [d["id"] for d in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = api_client.get("/datasets", params={"limit": 2, "after": first["next_cursor"]}, headers=headers).json()
    assert [d["id"] for d in rest["data"]] == ids[:1] and not rest["has_more"] and rest["next_cursor"] is None
    assert_problem(api_client.get("/datasets", params={"after": "garbage"}, headers=headers), 422, "validation_error")


def _malicious(kind: str, folder: Path) -> Path:
    if kind == "absolute path":
        return make_zip(folder / "a.zip", {**GOOD, "/tmp/hcd-escaped.png": png()})
    if kind == "dot-dot":
        return make_tar(folder / "a.tar.gz", {**GOOD, "train/cat/../../../hcd-escaped.png": png()})
    if kind == "zip symlink":
        return make_zip_with_link(folder / "a.zip")
    if kind in ("tar symlink", "tar hard link", "character device", "block device", "fifo"):
        kinds = {"tar symlink": tarfile.SYMTYPE, "tar hard link": tarfile.LNKTYPE, "character device": tarfile.CHRTYPE,
                 "block device": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}
        return make_tar(folder / "a.tar.gz", GOOD, [special_member(kinds[kind])])
    if kind == "zip bomb":
        return make_zip(folder / "a.zip", BOMB)
    if kind == "tar.gz bomb":
        return make_tar(folder / "a.tar.gz", BOMB)
    if kind == "not an archive":
        (folder / "a.zip").write_bytes(b"#!/bin/sh\necho hello\n")
        return folder / "a.zip"
    if kind == "not an image":
        return make_zip(folder / "a.zip", {**GOOD, "train/dog/evil.png": b"<?php system($_GET['c']); ?>"})
    assert kind == "different classes"
    return make_zip(folder / "a.zip", {**GOOD, "val/bird/0.png": png()})


@pytest.mark.parametrize("kind", ["absolute path", "dot-dot", "zip symlink", "tar symlink", "tar hard link",
                                  "character device", "block device", "fifo", "zip bomb", "tar.gz bomb",
                                  "not an archive", "not an image", "different classes"])
def test_malicious_and_broken_archives_are_refused_and_leave_nothing(api_client, auth_headers, service_settings,
                                                                     tmp_path, kind):
    archive = _malicious(kind, tmp_path)
    before = _files(service_settings.data_dir)
    r = _upload(api_client, auth_headers, archive)
    body = assert_problem(r, 422, "invalid_dataset")
    assert body["errors"][0]["loc"] == "file" and body["errors"][0]["msg"]
    assert str(service_settings.data_dir) not in r.text and str(tmp_path) not in r.text
    assert _files(service_settings.data_dir) == before  # nothing stored, nothing left in staging
    for escaped in (Path("/tmp/hcd-escaped.png"), service_settings.data_dir.parent / "hcd-escaped.png"):
        assert not escaped.exists()


def test_caps_and_form_fields(service_settings, api_key, tmp_path):
    from api.app import create_app

    headers = {"Authorization": f"Bearer {api_key}"}
    archive = make_zip(tmp_path / "pets.zip", GOOD)
    noise = make_zip(tmp_path / "noise.zip", {**GOOD, "train/cat/noise.png": os.urandom(4096)})
    for overrides, upload, status, code, detail in (
        ({"max_dataset_bytes": 4096}, noise, 413, "payload_too_large", "exceeds the limit of 4096 bytes"),
        ({"max_dataset_files": 5}, archive, 422, "invalid_dataset", "more than 5 files"),
        ({"max_dataset_unpacked_bytes": 300}, archive, 422, "invalid_dataset", "more than 300 bytes unpacked"),
    ):
        capped = Settings(**{**service_settings.model_dump(), **overrides})
        with TestClient(create_app(capped), raise_server_exceptions=False) as client:
            body = assert_problem(_upload(client, headers, upload), status, code)
            assert detail in body["detail"]
    with TestClient(create_app(service_settings), raise_server_exceptions=False) as client:
        assert_problem(_upload(client, headers, archive, name=None), 422, "invalid_upload")
        assert_problem(_upload(client, headers, archive, name="x" * 200), 422, "invalid_upload")
        assert_problem(client.get("/datasets/not-a-uuid", headers=headers), 404, "not_found")


@pytest.mark.slow
def test_a_job_trains_on_a_dataset_uploaded_with_the_cli(api_server, api_key, service_settings, start_worker,
                                                         tmp_path, monkeypatch, capsys):
    """`hcd datasets upload DIR` packs and uploads a folder of PNGs made from digits; a job names it and
    a real worker unpacks it (cached by sha256) and trains on it."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from hcd_cli.main import main

    digits = load_digits()
    folder = tmp_path / "digits-png"
    for i, (image, label) in enumerate(zip(digits.images[:300], digits.target[:300], strict=True)):
        split = "val" if i % 5 == 0 else "train"
        (folder / split / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 16).clip(0, 255).astype("uint8")).save(folder / split / str(label) / f"{i}.png")
    monkeypatch.setenv("HCD_SERVER_URL", api_server)
    monkeypatch.setenv("HCD_API_KEY", api_key)
    assert main(["datasets", "upload", str(folder), "--name", "digits-png"]) == 0
    dataset_id = capsys.readouterr().out.strip()
    assert main(["datasets", "list", "--json"]) == 0
    listed = {d["id"]: d for d in json.loads(capsys.readouterr().out)}
    assert listed[dataset_id]["num_classes"] == 10 and listed[dataset_id]["num_val"] == 60

    spec_file = tmp_path / "job.json"
    spec_file.write_text(json.dumps(_spec(dataset_id)))
    assert main(["submit", str(spec_file)]) == 0
    job_id = capsys.readouterr().out.strip()
    worker = start_worker()
    job = wait_for_status(service_settings, job_id, ("succeeded", "failed"), timeout=180, workers=[worker])
    assert job.status == "succeeded", (job.error_code, job.error_message)
    sha256 = listed[dataset_id]["sha256"]
    unpacked = service_settings.local_work_dir / "datasets" / sha256
    assert len(list((unpacked / "val").rglob("*.png"))) == 60
    assert job.result and job.result["final_metrics"]["val_top1"] > 10  # better than chance on 60 images
    assert main(["datasets", "delete", dataset_id]) == 0


def test_a_dataset_deleted_between_validation_and_insert_is_named(service_settings):
    """The insert locks the dataset FOR KEY SHARE and checks it is still there: one deleted after the
    submission was validated (simulated by naming one that no longer exists) inserts nothing and says so."""
    import uuid

    from jobs.db import database
    from jobs.errors import InvalidInput
    from jobs.repository import JobRepository, NewJob

    repo = JobRepository(database(service_settings))
    new = NewJob(owner="datasets-race", spec=_spec(str(uuid.uuid4())), metadata={}, dataset_id=uuid.uuid4())
    with pytest.raises(InvalidInput) as info:
        repo.create(new, max_attempts=1, runtime_limit_seconds=60, queued_cap=10)
    assert info.value.code == "dataset_not_found" and info.value.errors[0]["loc"] == "dataset.dataset_id"
    assert repo.list_jobs("datasets-race", statuses=(), sweep_id=None, before=None, limit=5) == []


def test_a_teacher_must_have_the_uploaded_datasets_classes(api_client, auth_headers, tmp_path):
    """The class count of an uploaded dataset is known at submission: a teacher with another is refused
    then, not when a worker starts the job."""
    import torch
    from safetensors.torch import save

    from hcd_core.models import create_timm_model

    torch.manual_seed(0)
    weights = save({k: v.contiguous() for k, v in create_timm_model("test_resnet", 3, 16).state_dict().items()})
    model = api_client.post("/models", files={"file": ("t.safetensors", weights, "application/octet-stream")},
                            data={"arch": "test_resnet", "num_classes": "3"}, headers=auth_headers).json()
    dataset = _upload(api_client, auth_headers, make_zip(tmp_path / "pets.zip", GOOD)).json()  # 2 classes
    spec = {**_spec(dataset["id"]), "method": {"name": "kd"},
            "teacher": {"arch": "test_resnet", "weights": {"source": "model", "model_id": model["id"]}}}
    body = assert_problem(api_client.post("/jobs", json={"spec": spec}, headers=auth_headers), 422, "invalid_spec")
    assert body["errors"] == [{"loc": "teacher.weights.model_id",
                               "msg": "the uploaded model has 3 classes, the dataset 2"}]


def test_cli_upload_of_a_folder_without_splits_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    from hcd_cli import exits
    from hcd_cli.main import main

    monkeypatch.setenv("HCD_SERVER_URL", "http://127.0.0.1:9")  # never reached: refused before any request
    monkeypatch.setenv("HCD_API_KEY", "hcd_" + "x" * 30)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    assert main(["datasets", "upload", str(tmp_path)]) == exits.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no val/ folder" in err[0] and "Traceback" not in err[0]
    assert main(["datasets", "upload", str(tmp_path / "missing.zip")]) == exits.USAGE
