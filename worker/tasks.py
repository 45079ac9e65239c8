"""The Celery task `hcd.run_job`: claim the job in Postgres, run it in a fresh child, wait.

Runs in the worker's main process (pool solo, concurrency 1), which never imports torch: the child
process (worker.runner) does all the GPU work and returns every byte of GPU memory when it exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

from celery import Celery

from jobs.db import database, database_unavailable
from jobs.logs import job_context
from jobs.repository import JobRepository
from jobs.settings import Settings
from jobs.status import TERMINAL, JobStatus
from jobs.streams import StatusStream
from worker.celery_app import TASK_NAME
from worker.lease import EXIT_LEASE_LOST
from worker.prometheus import AttemptTimer, message_taken

_log = logging.getLogger("hcd.worker")
_CHILD_SHUTDOWN_GRACE = 60.0  # seconds a child gets to checkpoint after a worker shutdown


def worker_identity() -> str:
    return os.environ.get("HCD_WORKER_ID") or f"{socket.gethostname()}:{os.getpid()}"


def repository(settings: Settings) -> JobRepository:
    return JobRepository(database(settings), notify=StatusStream(settings))


def _shutdown_requested() -> bool:
    from celery.worker import state

    return bool(state.should_stop or state.should_terminate)


def run_attempt_in_child(job_id: str, attempt: int) -> int:
    """Spawn `python -m worker.runner`, forward a worker shutdown to it, return its exit code."""
    env = dict(os.environ)
    env["HCD_WORKER_ID"] = worker_identity()
    child = subprocess.Popen([sys.executable, "-m", "worker.runner", job_id, str(attempt)], env=env)
    forwarded_at = None
    while True:
        try:
            return child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        if _shutdown_requested() and forwarded_at is None:
            _log.info("worker shutting down: asking job %s to checkpoint and hand itself back", job_id)
            child.send_signal(signal.SIGTERM)
            forwarded_at = time.monotonic()
        elif forwarded_at is not None:
            if time.monotonic() - forwarded_at > _CHILD_SHUTDOWN_GRACE:
                child.kill()


def execute_job(settings: Settings, message_job_id: str) -> str:
    """A message says work may be waiting: claim the next job by the fair order (not necessarily the
    message's own job; every queued job has a message of its own, and the relay resends lost ones)."""
    repo = repository(settings)
    worker_id = worker_identity()
    try:
        claimed = repo.claim_next(worker_id, settings.lease_seconds, settings.max_running_jobs_per_owner,
                                  max_devices=settings.worker_devices)
    except Exception as err:
        if not database_unavailable(err):
            raise
        # The message is spent; the job stays queued and the relay resends it once Postgres is back.
        _log.warning("could not claim a job (database unavailable: %s)", err)
        message_taken("deferred")
        return "deferred"
    if claimed is None:
        _log.info("no job can start now (the message's job %s is not queued any more, or waits for its teacher "
                  "or its owner's turn)", message_job_id)
        message_taken("skipped")
        return "skipped"
    message_taken("claimed")
    uid, attempt = claimed
    with job_context(uid, attempt):  # every line logged while it runs names the job and attempt
        timer = AttemptTimer(str(uid), attempt)
        _log.info("job %s attempt %d claimed by %s (message for %s)", uid, attempt, worker_id, message_job_id)
        code = run_attempt_in_child(str(uid), attempt)
        if code not in (0, EXIT_LEASE_LOST):
            _log.warning("job %s attempt %d: child exited with %d", uid, attempt, code)
            message = f"the job's process exited with code {code}"
            try:
                repo.hand_back(uid, attempt, reason="attempt_crashed", error=("worker_lost", message))
            except Exception as err:  # noqa: BLE001 - the lease expires and the sweep hands the job on
                _log.warning("job %s attempt %d not handed back: %s", uid, attempt, err)
        outcome = attempt_outcome(repo, uid, attempt, code)
        timer.end(outcome)
        _log.info("job %s attempt %d ended: %s", uid, attempt, outcome)
    return "done"


def attempt_outcome(repo: JobRepository, job_id: uuid.UUID, attempt: int, code: int) -> str:
    """How an attempt ended, for the worker's metrics (see worker.prometheus)."""
    if code == EXIT_LEASE_LOST:
        return "lease_lost"
    if code != 0:
        return "crashed"
    try:
        job = repo.load_attempt(job_id)
    except Exception:  # noqa: BLE001 - a metric label is not worth a retry loop
        return "unknown"
    if job is None:
        return "unknown"  # deleted meanwhile
    if job.attempt != attempt or job.status == JobStatus.QUEUED:
        return "handed_back"
    if job.status in TERMINAL:
        return job.status.value
    return "unknown"


def register_tasks(app: Celery, settings: Settings) -> None:
    @app.task(name=TASK_NAME, ignore_result=True, acks_late=False)  # type: ignore[untyped-decorator]  # Celery is untyped
    def run_job_task(job_id: str) -> str:
        return execute_job(settings, job_id)
