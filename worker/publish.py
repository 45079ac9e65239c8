"""Publishing a committed job to the queue (API side, and the sweep). Must never import torch.

Order matters: the job row is committed first, then the message is sent, then `published_at` is
set. A crash between the two leaves `published_at` NULL and the sweep re-publishes it (outbox).
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import text

from api.db import session_scope
from api.settings import Settings
from worker.celery_app import TASK_NAME, publisher_app

_log = logging.getLogger(__name__)

# A few quick retries cover a pooled connection that went stale after a Redis restart.
_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.2, "interval_max": 0.5}


def send_job_message(settings: Settings, job_id: uuid.UUID | str) -> bool:
    """Send the Celery message for a job; False (logged) when Redis cannot be reached."""
    job = str(job_id)
    try:
        publisher_app(settings).send_task(
            TASK_NAME, args=[job], task_id=job, queue=settings.queue_name,
            retry=True, retry_policy=_RETRY_POLICY,
        )
    except Exception as err:  # kombu/redis raise several types; none may escape to the API
        _log.warning("could not publish job %s: %s", job, err)
        return False
    return True


def publish_job(settings: Settings, job_id: uuid.UUID | str) -> bool:
    """Send the job's task (task_id = job id), then mark it published. Never raises for Redis errors."""
    if not send_job_message(settings, job_id):
        return False
    try:
        with session_scope(settings.database_url) as session:
            session.execute(
                text("UPDATE jobs SET published_at = now() WHERE id = :id"), {"id": str(job_id)}
            )
    except Exception as err:  # the message is out; the worst case is a harmless duplicate later
        _log.warning("job %s published but published_at not recorded: %s", job_id, err)
    return True
