"""The client CLI against a real HTTP server (uvicorn in a thread), Postgres and Redis."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis
import uvicorn
import yaml
from api_helpers import add_artifact, ce_spec, insert_job

from api.app import create_app
from hcd_cli import exits
from hcd_cli.main import main
from jobs.storage import LocalStore
from jobs.streams import stream_key


@contextlib.contextmanager
def serve(settings):
    """The API on a free port, served by uvicorn in a thread of this process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def live_url(service_settings):
    with serve(service_settings) as url:
        yield url


@pytest.fixture
def cli_env(monkeypatch, live_url, api_key):
    monkeypatch.setenv("HCD_SERVER_URL", live_url)
    monkeypatch.setenv("HCD_API_KEY", api_key)


def test_submit_status_cancel(cli_env, tmp_path, capsys):
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(ce_spec()))
    assert main(["submit", str(spec_file), "--metadata", "team=vision", "--idempotency-key", "k1"]) == 0
    job_id = capsys.readouterr().out.strip()
    uuid.UUID(job_id)
    assert main(["submit", str(spec_file), "--metadata", "team=vision", "--idempotency-key", "k1"]) == 0
    assert capsys.readouterr().out.strip() == job_id  # replayed

    assert main(["status", job_id, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "queued" and status["metadata"] == {"team": "vision"}
    assert main(["status", job_id]) == 0  # a human summary
    summary = capsys.readouterr().out
    assert summary.splitlines()[0] == f"job {job_id}"
    assert "queued (not started)" in summary and "team=vision" in summary and f"hcd watch {job_id}" in summary
    assert len(summary.splitlines()) < 15

    assert main(["cancel", job_id]) == 0
    assert capsys.readouterr().out.strip() == f"{job_id} cancelled"
    assert main(["cancel", job_id]) == exits.REFUSED
    assert "invalid_state" in capsys.readouterr().err


def test_submit_reports_spec_errors(cli_env, tmp_path, capsys):
    spec = ce_spec()
    spec["training"]["epochs"] = 0
    spec_file = tmp_path / "bad.json"
    spec_file.write_text(json.dumps(spec))
    assert main(["submit", str(spec_file)]) == exits.REFUSED
    err = capsys.readouterr().err
    assert err.startswith("hcd: error: ") and "invalid_spec" in err and "training.epochs" in err


def test_missing_key_is_a_clear_error(monkeypatch, live_url, capsys):
    monkeypatch.setenv("HCD_SERVER_URL", live_url)
    monkeypatch.delenv("HCD_API_KEY", raising=False)
    assert main(["status", str(uuid.uuid4())]) == exits.USAGE
    assert "HCD_API_KEY" in capsys.readouterr().err


def test_watch_follows_stream_and_exits_with_job_status(cli_env, service_settings, api_owner, capsys):
    client = redis.Redis.from_url(service_settings.redis_url, decode_responses=True)
    done = insert_job(service_settings, api_owner, status="succeeded", progress={"total_steps": 3})
    for step in range(1, 4):
        client.xadd(stream_key(done), {"type": "metrics", "data": json.dumps({"step": step, "values": {"loss": 1.0}})})
    client.xadd(stream_key(done), {"type": "end", "data": json.dumps({"status": "succeeded"})})
    failed = insert_job(service_settings, api_owner, status="failed", error_code="training_error",
                        error_message="diverged")
    try:
        assert main(["watch", str(done), "--quiet"]) == 0
        out = capsys.readouterr().out
        assert f"job {done} succeeded" in out and f"hcd download {done} " in out
        assert main(["watch", str(failed), "--quiet"]) == 1  # no stream at all: ends from Postgres
        out = capsys.readouterr().out
        assert f"job {failed} failed" in out and "training_error: diverged" in out
        assert main(["watch", str(uuid.uuid4())]) == exits.NOT_FOUND
    finally:
        client.delete(stream_key(done))


def test_watch_follows_a_live_job_to_its_end(cli_env, service_settings, api_owner, capsys):
    """Entries arrive while the client is connected; the job then ends."""
    client = redis.Redis.from_url(service_settings.redis_url, decode_responses=True)
    job_id = insert_job(service_settings, api_owner, status="running")

    def produce():
        time.sleep(0.5)
        for step in (1, 2):
            client.xadd(stream_key(job_id), {"type": "metrics", "data": json.dumps({"step": step, "values": {}})})
            time.sleep(0.2)
        from sqlalchemy import update

        from jobs.db import database
        from jobs.tables import Job

        with database(service_settings).sessionmaker() as session:
            session.execute(update(Job).where(Job.id == job_id).values(status="cancelled"))
            session.commit()
        client.xadd(stream_key(job_id), {"type": "end", "data": json.dumps({"status": "cancelled"})})

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert main(["watch", str(job_id), "--quiet"]) == 1
        assert f"{job_id} cancelled" in capsys.readouterr().out
    finally:
        producer.join()
        client.delete(stream_key(job_id))


def test_download_verifies_sha256(cli_env, service_settings, api_owner, tmp_path, capsys):
    job_id = insert_job(service_settings, api_owner, status="succeeded")
    content = b"weights" * 1000
    add_artifact(service_settings, job_id, "student.safetensors", content, "application/octet-stream")
    add_artifact(service_settings, job_id, "model_card.json", b"{}", "application/json")
    out = tmp_path / "out"
    assert main(["download", str(job_id), str(out)]) == 0
    assert (out / "student.safetensors").read_bytes() == content
    assert (out / "model_card.json").read_bytes() == b"{}"

    # The stored file no longer matches its recorded sha256: the download is refused.
    stored = LocalStore(service_settings.data_dir).artifacts / str(job_id) / "student.safetensors"
    stored.write_bytes(b"tampered" * 1000)
    bad = tmp_path / "bad"
    assert main(["download", str(job_id), str(bad)]) == 1
    assert "does not match" in capsys.readouterr().err
    assert not (bad / "student.safetensors").exists() and not list(bad.glob("*.part"))


def test_admin_keys_create_and_migrate(service_settings, monkeypatch, capsys):
    monkeypatch.setenv("HCD_DATABASE_URL", service_settings.database_url)
    assert main(["migrate"]) == 0
    assert main(["keys", "create", "--owner", "cli-admin"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("hcd_")
    from jobs.db import database
    from jobs.keys import owner_for_key

    with database(service_settings).sessionmaker() as session:
        assert owner_for_key(session, key) == "cli-admin"


def test_sweep_submit_and_status(cli_env, tmp_path, capsys):
    spec_file = tmp_path / "base.yaml"
    spec_file.write_text(yaml.safe_dump(ce_spec()))
    grid = ["--grid", "training.lr=0.05,0.1", "--seeds", "0,1"]
    assert main(["sweep", "submit", str(spec_file), *grid, "--metadata", "study=lr"]) == 0
    sweep_id = capsys.readouterr().out.strip()
    uuid.UUID(sweep_id)
    assert main(["sweep", "status", sweep_id, "--json"]) == 0
    sweep = json.loads(capsys.readouterr().out)
    assert sweep["runs"] == 4 and [c["values"] for c in sweep["cells"]] == [{"training.lr": 0.05},
                                                                           {"training.lr": 0.1}]
    assert main(["sweep", "status", sweep_id]) == 0
    table = capsys.readouterr().out
    assert "training.lr" in table and "0.05" in table and sweep["status"] in table
    assert main(["sweep", "submit", str(spec_file), "--grid", "training.lr=0.1,-1", "--seeds", "0"]) == exits.REFUSED
    err = capsys.readouterr().err
    assert "cells.1.spec.training.lr" in err and "Traceback" not in err


# --------------------------------------------------------------------------- user errors: one line, an exit code
def _one_error_line(captured) -> str:
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hcd: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def test_user_errors_are_one_line_with_their_exit_code(cli_env, monkeypatch, tmp_path, capsys):
    assert main(["submit", str(tmp_path / "missing.yaml")]) == exits.USAGE
    assert "missing.yaml: no such file" in _one_error_line(capsys.readouterr())

    bad = tmp_path / "bad.yaml"
    bad.write_text("method: {name: ce\nstudent: [\n")
    assert main(["submit", str(bad)]) == exits.USAGE
    assert "not valid YAML or JSON" in _one_error_line(capsys.readouterr())

    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just words\n")
    assert main(["submit", str(scalar)]) == exits.USAGE
    assert "must be a mapping" in _one_error_line(capsys.readouterr())
    assert main(["submit", str(tmp_path)]) == exits.USAGE
    assert "is a folder" in _one_error_line(capsys.readouterr())

    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(ce_spec()))
    for bad_set in ("training.epochs", "=3", "training..epochs=3", "training.epochs=1,2", "seed.x=1"):
        assert main(["submit", str(spec_file), "--set", bad_set]) == exits.USAGE, bad_set
        assert "--set" in _one_error_line(capsys.readouterr())

    assert main(["status", str(uuid.uuid4())]) == exits.NOT_FOUND
    assert "not_found" in _one_error_line(capsys.readouterr())
    assert main(["status", "not-a-uuid"]) == exits.NOT_FOUND
    _one_error_line(capsys.readouterr())
    assert main(["list", "--status", "done"]) == exits.USAGE
    assert "not a status" in _one_error_line(capsys.readouterr())

    monkeypatch.setenv("HCD_API_KEY", "hcd_" + "x" * 30)
    assert main(["list"]) == exits.REFUSED
    assert "HCD_API_KEY" in _one_error_line(capsys.readouterr())

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("HCD_SERVER_URL", dead)
    assert main(["status", str(uuid.uuid4())]) == exits.UNAVAILABLE
    assert f"cannot reach the server at {dead}" in _one_error_line(capsys.readouterr())
    monkeypatch.setenv("HCD_SERVER_URL", "localhost:8000")
    assert main(["list"]) == exits.USAGE
    _one_error_line(capsys.readouterr())


def _hcd_shell(command: str, env: dict) -> subprocess.CompletedProcess:
    """`command` in bash with `hcd` = this interpreter's hcd_cli; appends the exit codes of a pipeline."""
    hcd = f"{sys.executable} -m hcd_cli.main"
    return subprocess.run(["bash", "-c", command.replace("hcd ", f"{hcd} ", 1) + '; echo "codes ${PIPESTATUS[*]}"'],
                          env=env, capture_output=True, text=True, timeout=60)


def test_real_processes_exit_without_a_traceback(live_url, api_key, service_settings, api_owner, tmp_path):
    env = {**os.environ, "HCD_SERVER_URL": live_url, "HCD_API_KEY": api_key}
    done = _run_cli(["submit", str(tmp_path / "missing.yaml")], env)
    assert done.returncode == exits.USAGE and done.stdout == ""
    assert done.stderr == f"hcd: error: {tmp_path / 'missing.yaml'}: no such file\n"
    done = _run_cli(["status", str(uuid.uuid4())], env)
    assert done.returncode == exits.NOT_FOUND and len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr

    # A document far larger than a pipe's buffer, cut by `head -1`: the rest is dropped quietly.
    big = {f"key{i}": "v" * 500 for i in range(300)}
    job_id = insert_job(service_settings, api_owner, status="queued", job_metadata=big)
    for args in ("", "--json"):
        done = _hcd_shell(f"hcd status {job_id} {args} | head -1", env)
        out = done.stdout.splitlines()
        assert len(out) == 2 and out[1] == f"codes {exits.BROKEN_PIPE} 0", done
        assert out[0] in (f"job {job_id}", "{") and done.stderr == "", done.stderr


def _run_cli(args: list[str], env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hcd_cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=60, **kwargs)


# --------------------------------------------------------------------------- list, events, delete, models
def test_list_shows_a_table_with_filters(cli_env, service_settings, api_owner, tmp_path, capsys):
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(ce_spec()))
    assert main(["list"]) == 0
    assert capsys.readouterr().err.startswith("no jobs yet")
    queued = []
    for _ in range(2):
        assert main(["submit", str(spec_file)]) == 0
        queued.append(capsys.readouterr().out.strip())
    teacher = dict(ce_spec(), teacher={"arch": "test_resnet", "weights": {"source": "job", "job_id": queued[0]}})
    teacher["method"] = {"name": "kd"}
    done = insert_job(service_settings, api_owner, status="succeeded", spec=teacher,
                      progress={"epoch": 1, "epochs": 1, "step": 2, "total_steps": 2},
                      result={"final_metrics": {"val_top1": 81.25, "epoch": 0.0},
                              "best_metrics": {"val_top1": 87.5, "epoch": 0.0}})
    running = insert_job(service_settings, api_owner, status="running", phase="training",
                         progress={"epoch": 1, "epochs": 4, "step": 27, "total_steps": 100},
                         latest_metrics={"val_top1": 55.0})
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "METHOD", "STUDENT", "<-", "TEACHER", "DATASET", "PROGRESS", "TOP-1",
                                "AGE"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == [str(running), str(done), *reversed(queued)]  # newest first
    assert rows[str(done)].split()[1:8] == ["succeeded", "kd", "test_resnet", "<-", "test_resnet", "synthetic/16",
                                            "100%"]
    assert " 87.50 " in rows[str(done)]
    assert rows[str(running)].split()[1:3] == ["running/training", "ce"] and " 27% e2/4 " in rows[str(running)]
    assert " 55.00 " in rows[str(running)]
    assert rows[queued[0]].split()[1] == "queued" and rows[queued[0]].split()[-3:-1] == ["-", "-"]

    assert main(["list", "--status", "succeeded,running"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == [str(running), str(done)]
    assert main(["list", "-n", "1", "--json"]) == 0
    assert [j["id"] for j in json.loads(capsys.readouterr().out)] == [str(running)]
    assert main(["list", "--sweep", str(uuid.uuid4())]) == 0
    assert capsys.readouterr().err.strip() == "no jobs match"


def test_events_and_delete(cli_env, tmp_path, capsys):
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(ce_spec()))
    assert main(["submit", str(spec_file)]) == 0
    job_id = capsys.readouterr().out.strip()
    assert main(["delete", job_id]) == exits.REFUSED  # still queued
    assert "hcd: error:" in capsys.readouterr().err
    assert main(["cancel", job_id]) == 0
    capsys.readouterr()
    assert main(["events", job_id]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TIME", "TYPE", "ATTEMPT", "DETAILS"] and len(lines) >= 3
    assert "status=queued" in lines[1] and "status=cancelled" in lines[-1]
    assert main(["events", job_id, "--json"]) == 0
    assert [e["type"] for e in json.loads(capsys.readouterr().out)][0] == "status"

    assert main(["delete", job_id]) == 0
    assert capsys.readouterr().out.strip() == f"deleted {job_id}"
    assert main(["status", job_id]) == exits.NOT_FOUND
    assert main(["events", job_id]) == exits.NOT_FOUND
    assert main(["delete", job_id]) == exits.NOT_FOUND


def test_models_list_upload_delete(cli_env, tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from hcd_core.models import create_timm_model

    torch.manual_seed(0)
    weights = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in create_timm_model("test_resnet", 4, 16).state_dict().items()}, weights)
    assert main(["models", "list"]) == 0
    assert "no models yet" in capsys.readouterr().err
    assert main(["models", "upload", str(weights), "--arch", "test_resnet", "--num-classes", "4",
                 "--image-size", "16", "--mean", "0.5,0.5,0.5"]) == 0
    captured = capsys.readouterr()
    model_id = captured.out.strip()
    uuid.UUID(model_id)
    assert f"teacher.weights.model_id={model_id}" in captured.err
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "ARCH", "CLASSES", "IMAGE", "SIZE", "FILE", "SIZE", "AGE"]
    assert lines[1].split()[:5] == [model_id, "test_resnet", "4", "16", "teacher.safetensors"]

    assert main(["models", "upload", str(weights), "--arch", "test_resnet", "--num-classes", "7"]) == exits.REFUSED
    assert "invalid_upload" in _one_error_line(capsys.readouterr())
    assert main(["models", "upload", str(tmp_path / "nope.safetensors"), "--arch", "test_resnet",
                 "--num-classes", "4"]) == exits.USAGE
    assert "no such file" in _one_error_line(capsys.readouterr())

    assert main(["models", "delete", model_id]) == 0
    assert capsys.readouterr().out.strip() == f"deleted model {model_id}"
    assert main(["models", "delete", model_id]) == exits.NOT_FOUND
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


# --------------------------------------------------------------------------- submit: --set, 429
def test_submit_set_overrides(cli_env, tmp_path, capsys):
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(ce_spec()))
    assert main(["submit", str(spec_file), "--set", "training.epochs=3", "--set", "training.lr=0.1",
                 "--set", "seed=7", "--set", "training.step_milestones=[1,2]", "--json"]) == 0
    teacher = json.loads(capsys.readouterr().out)
    training = teacher["spec"]["training"]
    assert (training["epochs"], training["lr"], teacher["spec"]["seed"], training["step_milestones"]) == (3, 0.1, 7,
                                                                                                        [1, 2])
    # A student of that (still queued) teacher, named by --set: it waits for it.
    student_file = tmp_path / "student.yaml"
    student = dict(ce_spec(), method={"name": "kd"},
                   teacher={"arch": "test_resnet", "weights": {"source": "job", "job_id": "FILL-ME"}})
    student_file.write_text(yaml.safe_dump({"spec": student, "metadata": {"study": "cli"}}))
    assert main(["submit", str(student_file), "--set", f"teacher.weights.job_id={teacher['id']}"]) == 0
    student_id = capsys.readouterr().out.strip()
    assert main(["status", student_id, "--json"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["spec"]["teacher"]["weights"]["job_id"] == teacher["id"] and job["phase"] == "waiting_for_teacher"
    assert job["metadata"] == {"study": "cli"}
    assert main(["submit", str(spec_file), "--set", "training.epochs=0"]) == exits.REFUSED
    assert "training.epochs" in capsys.readouterr().err


@pytest.fixture(scope="module")
def capped_url(service_settings):
    """A second API whose owners may have one queued job each."""
    with serve(service_settings.model_copy(update={"max_queued_jobs_per_owner": 1})) as url:
        yield url


def test_submit_retries_after_429(capped_url, api_key, monkeypatch, tmp_path, capsys):
    import httpx

    import hcd_cli.client_cmds as client_cmds

    monkeypatch.setenv("HCD_SERVER_URL", capped_url)
    monkeypatch.setenv("HCD_API_KEY", api_key)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(ce_spec()))
    assert main(["submit", str(spec_file)]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["submit", str(spec_file), "--retries", "0"]) == exits.UNAVAILABLE
    assert "too_many_queued_jobs" in _one_error_line(capsys.readouterr())

    waits = []

    def sleep(seconds):  # the queue frees up while the client waits
        waits.append(seconds)
        if len(waits) == 2:
            r = httpx.post(f"{capped_url}/jobs/{first}/cancel", headers={"Authorization": f"Bearer {api_key}"})
            assert r.status_code == 202

    monkeypatch.setattr(client_cmds.time, "sleep", sleep)
    assert main(["submit", str(spec_file)]) == 0
    captured = capsys.readouterr()
    uuid.UUID(captured.out.strip())
    assert waits == [30, 30]  # the server's Retry-After
    busy = captured.err.splitlines()
    assert len(busy) == 2 and "too_many_queued_jobs" in busy[0] and busy[0].endswith("retrying in 30 s (1/5)")


def test_watch_in_a_pipe_prints_plain_lines_and_a_summary(cli_env, service_settings, api_owner, capsys):
    """Not a terminal: status changes and each epoch's validation as lines; the total from the stream."""
    client = redis.Redis.from_url(service_settings.redis_url, decode_responses=True)
    job_id = insert_job(service_settings, api_owner, status="running")  # no progress known yet

    def entry(type_, **data):
        client.xadd(stream_key(job_id), {"type": type_, "data": json.dumps(data)})

    size = {"epochs": 2, "total_steps": 4}
    entry("status", status="running", phase="loading", attempt=1)
    entry("status", status="running", phase="training", attempt=1, epoch=0, step=0, **size)
    for step in (1, 2):
        entry("metrics", step=step, epoch=0, ts=1000.0 + step, values={"loss": 1.0 / step}, **size)
    entry("metrics", step=2, epoch=0, ts=1003.0, values={"val_top1": 60.0, "val_loss": 0.9, "train_loss": 0.8}, **size)
    for step in (3, 4):
        entry("metrics", step=step, epoch=1, ts=1003.0 + step, values={"loss": 1.0 / step}, **size)
    entry("metrics", step=4, epoch=1, ts=1008.0, values={"val_top1": 55.0, "best_val_top1": 60.0}, **size)
    entry("status", status="running", phase="exporting", attempt=1, epoch=2, step=4, **size)
    from sqlalchemy import update

    from jobs.db import database
    from jobs.tables import Job

    def finish():  # once the client follows the stream
        time.sleep(1.0)
        with database(service_settings).sessionmaker() as session:
            session.execute(update(Job).where(Job.id == job_id).values(
                status="succeeded", result={"final_metrics": {"val_top1": 55.0, "epoch": 1.0},
                                            "best_metrics": {"val_top1": 60.0, "epoch": 0.0}},
                spec={**ce_spec(), "training": {**ce_spec()["training"], "export": "best"}}))
            session.commit()
        entry("status", status="succeeded", phase=None, attempt=1)
        entry("end", status="succeeded")

    finisher = threading.Thread(target=finish)
    finisher.start()
    try:
        assert main(["watch", str(job_id)]) == 0
        finisher.join()
        captured = capsys.readouterr()
        lines = [line.split("] ", 1)[1] for line in captured.err.splitlines()[1:]]
        assert lines == [
            "running",
            "running/loading",
            "running/training  0%  0/4 steps  epoch 1/2  ETA -",
            "val  epoch 1/2  val_top1 60.00  (best 60.00, epoch 1)  val_loss 0.9  train_loss 0.8  "
            "(50%  2/4 steps  epoch 1/2  ETA 0:04)",  # 2 s a step, evaluation included
            "val  epoch 2/2  val_top1 55.00  (best 60.00, epoch 1)  (100%  4/4 steps  epoch 2/2  ETA 0:00)",
            "running/exporting  100%  4/4 steps  epoch 2/2  ETA 0:00",
            "succeeded  100%  4/4 steps  epoch 2/2",
        ], captured.err
        assert captured.out.splitlines() == [
            f"job {job_id} succeeded",
            "  top-1     final 55.00 (epoch 2), best 60.00 (epoch 1); exported: best",
            f"  download  hcd download {job_id} ./{str(job_id)[:8]}",
        ]
    finally:
        client.delete(stream_key(job_id))


def test_help_lists_the_exit_codes_and_stays_light():
    code = ("import sys; from hcd_cli.main import build_parser; text = build_parser().format_help(); "
            "print('exit codes:' in text and '141' in text and 'hcd watch' in text, "
            "sorted(m for m in ('httpx', 'rich', 'yaml', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split(None, 1) == ["True", "[]\n"], done.stdout + done.stderr
