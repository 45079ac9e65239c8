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
from sqlalchemy import func, text, update

from api.db import session_scope
from api.settings import Settings
from api.tables import Job
from worker.celery_app import TASK_NAME
from worker.jobs_db import fenced_update, record_event
from worker.lease import EXIT_LEASE_LOST, lease_expiry_sql
from worker.streams import best_effort_status

_log = logging.getLogger("hcd.worker")
_CHILD_SHUTDOWN_GRACE = 60.0  # seconds a child gets to checkpoint after a worker shutdown


def worker_identity() -> str:
    return os.environ.get("HCD_WORKER_ID") or f"{socket.gethostname()}:{os.getpid()}"


def claim_job(settings: Settings, job_id: str, worker_id: str) -> int | None:
    """Compare-and-set queued -> running; the new attempt number, or None (duplicate/cancelled)."""
    with session_scope(settings.database_url) as session:
        attempt = session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(job_id), Job.status == "queued")
            .values(status="running", attempt=Job.attempt + 1, worker_id=worker_id, phase=None,
                    lease_expires_at=lease_expiry_sql(settings), cancel_requested=False,
                    started_at=func.coalesce(Job.started_at, func.now()), updated_at=func.now())
            .returning(Job.attempt)
        ).scalar_one_or_none()
        if attempt is None:
            return None
        record_event(session, job_id, attempt, "status", {"status": "running", "worker_id": worker_id})
    best_effort_status(settings, job_id, "running", None, attempt)
    return attempt


def release_crashed_attempt(settings: Settings, job_id: str, attempt: int, returncode: int) -> bool:
    """The child died without ending its attempt: expire the lease now so the sweep acts at once."""
    with session_scope(settings.database_url) as session:
        row = fenced_update(session, job_id, attempt, {"lease_expires_at": text("now()")})
        if row is None:
            return False
        record_event(session, job_id, attempt, "attempt_crashed", {"exit_code": returncode})
    return True


def _shutdown_requested() -> bool:
    from celery.worker import state

    return bool(state.should_stop or state.should_terminate)


def run_attempt_in_child(settings: Settings, job_id: str, attempt: int) -> int:
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


def execute_job(settings: Settings, job_id: str) -> str:
    try:
        job_id = str(uuid.UUID(str(job_id)))
    except ValueError:
        _log.error("ignoring a message with a malformed job id %r", job_id)
        return "ignored"
    worker_id = worker_identity()
    attempt = claim_job(settings, job_id, worker_id)
    if attempt is None:
        _log.info("job %s is not queued any more (duplicate or cancelled delivery)", job_id)
        return "skipped"
    _log.info("job %s attempt %d claimed by %s", job_id, attempt, worker_id)
    code = run_attempt_in_child(settings, job_id, attempt)
    if code not in (0, EXIT_LEASE_LOST):
        _log.warning("job %s attempt %d: child exited with %d", job_id, attempt, code)
        release_crashed_attempt(settings, job_id, attempt, code)
    return "done"


def register_tasks(app: Celery, settings: Settings) -> None:
    @app.task(name=TASK_NAME, ignore_result=True, acks_late=False)
    def run_job_task(job_id: str) -> str:
        return execute_job(settings, job_id)
