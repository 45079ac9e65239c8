"""Real service processes for the worker/e2e tests: `hcd worker` and `hcd api` subprocesses.

Imported by conftest.py (all names here become fixtures/helpers of tests/service).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text

from jobs.db import database
from jobs.tables import Job, JobEvent

HCD = [sys.executable, "-m", "hcd_cli.main"]

# Frugal children on a shared 2-core machine.
_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServiceProcess:
    """A subprocess in its own process group (so a test can SIGKILL it with all its children)."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    extra: dict = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.kill_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_group(signal.SIGKILL)
                self.proc.wait()
        else:
            self.kill_group(signal.SIGKILL)  # a child left behind by a dead parent


def start_process(name: str, args: list[str], env: dict, log_dir: Path) -> ServiceProcess:
    log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, env={**env, **_THREAD_ENV}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return ServiceProcess(name, proc, log_path)


def wait_until(predicate, timeout: float, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


@pytest.fixture
def start_worker(service_env, tmp_path):
    """start_worker(**env) -> a ready `hcd worker` process; all are stopped at the end of the test."""
    started: list[ServiceProcess] = []

    def start(name: str = "worker", **env_overrides) -> ServiceProcess:
        env = {**service_env, "HCD_WORKER_DEVICE": "cpu", **env_overrides}
        worker = start_process(name, HCD + ["worker", "--log-level", "info"], env, tmp_path)
        started.append(worker)
        wait_until(lambda: "ready." in worker.log() or not worker.alive(), 60, 0.2, f"{name} to be ready")
        assert worker.alive(), f"{name} died:\n{worker.log()[-3000:]}"
        return worker

    yield start
    for worker in started:
        worker.stop()


def start_api(name: str, env: dict, log_dir: Path, *, workers: int | None = None,
              probe: str = "/healthz") -> tuple[ServiceProcess, str]:
    """A real `hcd api` subprocess, once `probe` answers 200: (the process, its base URL)."""
    port = free_port()
    args = HCD + ["api", "--port", str(port), "--log-level", "warning"]
    server = start_process(name, args + (["--workers", str(workers)] if workers else []), env, log_dir)
    url = f"http://127.0.0.1:{port}"

    def ready():
        if not server.alive():
            raise AssertionError(f"{name} died:\n{server.log()[-3000:]}")
        try:
            return httpx.get(f"{url}{probe}", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 60, 0.2, name)
    except BaseException:
        server.stop()
        raise
    return server, url


@pytest.fixture(scope="session")
def api_server(service_env, tmp_path_factory):
    """A real `hcd api` (uvicorn) for HTTP and SSE; yields its base URL."""
    server, url = start_api("hcd api", service_env, tmp_path_factory.mktemp("api-logs"))
    yield url
    server.stop()


# --------------------------------------------------------------------------- job helpers
def tiny_spec(method: str = "ce", *, arch: str = "test_resnet", epochs: int = 2, steps: int = 6,
              teacher: dict | None = None, image_size: int = 16, seed: int = 0) -> dict:
    spec = {
        "method": {"name": method},
        "student": {"arch": arch},
        "dataset": {"name": "digits", "image_size": image_size},
        "training": {"recipe": "quick", "epochs": epochs, "batch_size": 32, "max_steps_per_epoch": steps,
                     "warmup_epochs": 0, "lr": 0.05},
        "seed": seed,
    }
    if teacher is not None:
        spec["teacher"] = teacher
    return spec


def insert_job(settings, spec: dict, *, owner: str | None = None, published: bool = False,
               max_attempts: int | None = None, runtime_limit: int = 3600) -> str:
    """A queued job committed by the repository as the API would (spec resolved; the workers' relay is
    woken and publishes it). `published=True` marks it published (for tests that run no worker)."""
    from hcd_core.spec import JobSpec
    from jobs.repository import JobRepository, NewJob

    resolved = JobSpec.model_validate(spec).resolved().model_dump(mode="json")
    new = NewJob(owner=owner or f"worker-test-{uuid.uuid4().hex[:6]}", spec=resolved, metadata={},
                 request_hash="test")
    job = JobRepository(database(settings)).create(
        new, max_attempts=max_attempts or settings.max_attempts, runtime_limit_seconds=runtime_limit,
        queued_cap=1_000_000)
    if published:
        with database(settings).session() as session:
            session.execute(text("UPDATE jobs SET published_at = now() WHERE id = :id"), {"id": job["id"]})
    return str(job["id"])


def claim(settings, job_id, worker_id: str = "test-worker") -> int | None:
    """Claim `job_id` as a worker would (the fair claim takes the next ready job, so the test first
    takes every other queued job out of the way); its new attempt number, or None."""
    from jobs.repository import JobRepository

    with database(settings).session() as session:
        session.execute(text("UPDATE jobs SET status = 'cancelled', finished_at = now() "
                             "WHERE status = 'queued' AND id <> :id"), {"id": str(job_id)})
    claimed = JobRepository(database(settings)).claim_next(worker_id, settings.lease_seconds, 1_000_000)
    if claimed is None:
        return None
    assert str(claimed[0]) == str(job_id), claimed
    return claimed[1]


def get_job(settings, job_id: str) -> Job:
    with database(settings).session() as session:
        return session.execute(select(Job).where(Job.id == uuid.UUID(job_id))).scalar_one()


def job_events(settings, job_id: str) -> list[JobEvent]:
    with database(settings).session() as session:
        return list(session.execute(
            select(JobEvent).where(JobEvent.job_id == uuid.UUID(job_id)).order_by(JobEvent.id)
        ).scalars())


def wait_for_status(settings, job_id: str, statuses, timeout: float = 60.0, workers=()) -> Job:
    statuses = (statuses,) if isinstance(statuses, str) else tuple(statuses)

    def check():
        job = get_job(settings, job_id)
        return job if job.status in statuses else None

    try:
        return wait_until(check, timeout, 0.1, f"job {job_id} to reach {statuses}")
    except AssertionError:
        job = get_job(settings, job_id)
        logs = "\n".join(w.log()[-3000:] for w in workers)
        raise AssertionError(f"job {job_id} is {job.status} ({job.error_code}: {job.error_message}); "
                             f"wanted {statuses}\n{logs}") from None


def wait_for_progress(settings, job_id: str, min_epoch: int = 0, min_step: int = 1, timeout: float = 60.0,
                      workers=()) -> Job:
    def check():
        job = get_job(settings, job_id)
        if job.status not in ("queued", "running", "cancelling"):
            logs = "\n".join(w.log()[-3000:] for w in workers)
            raise AssertionError(f"job ended early: {job.status} {job.error_code} {job.error_message}\n{logs}")
        p = job.progress or {}
        return job if p.get("epoch", -1) >= min_epoch and p.get("step", 0) >= min_step else None

    return wait_until(check, timeout, 0.1, f"job {job_id} progress epoch>={min_epoch} step>={min_step}")
