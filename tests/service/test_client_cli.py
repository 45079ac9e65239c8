"""The client CLI against a real HTTP server (uvicorn in a thread), Postgres and Redis."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import pytest
import redis
import uvicorn
import yaml
from api_helpers import add_artifact, ce_spec, insert_job

from api.app import create_app
from hcd_cli.main import main
from jobs.storage import LocalStore
from jobs.streams import stream_key


@pytest.fixture(scope="module")
def live_url(service_settings):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service_settings), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


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

    assert main(["status", job_id]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "queued" and status["metadata"] == {"team": "vision"}

    assert main(["cancel", job_id]) == 0
    assert capsys.readouterr().out.strip() == f"{job_id} cancelled"
    assert main(["cancel", job_id]) == 1
    assert "invalid_state" in capsys.readouterr().err


def test_submit_reports_spec_errors(cli_env, tmp_path, capsys):
    spec = ce_spec()
    spec["training"]["epochs"] = 0
    spec_file = tmp_path / "bad.json"
    spec_file.write_text(json.dumps(spec))
    assert main(["submit", str(spec_file)]) == 1
    err = capsys.readouterr().err
    assert "invalid_spec" in err and "training.epochs" in err


def test_missing_key_is_a_clear_error(monkeypatch, live_url, capsys):
    monkeypatch.setenv("HCD_SERVER_URL", live_url)
    monkeypatch.delenv("HCD_API_KEY", raising=False)
    assert main(["status", str(uuid.uuid4())]) == 1
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
        assert f"{done} succeeded" in capsys.readouterr().out
        assert main(["watch", str(failed), "--quiet"]) == 1  # no stream at all: ends from Postgres
        captured = capsys.readouterr()
        assert f"{failed} failed" in captured.out and "training_error" in captured.err
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
    assert main(["sweep", "submit", str(spec_file), "--grid", "training.lr=0.1,-1", "--seeds", "0"]) == 1
    err = capsys.readouterr().err
    assert "cells.1.spec.training.lr" in err and "Traceback" not in err
