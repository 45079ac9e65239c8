"""The Celery application: Redis only delivers job ids; Postgres holds the jobs (see worker/tasks.py).

`CeleryQueue` is the job domain's `JobQueue` (jobs.outbox): the outbox relay sends through it.
"""

from __future__ import annotations

import json

import redis
from celery import Celery

from jobs.settings import Settings
from jobs.streams import redis_client

TASK_NAME = "hcd.run_job"


def _require_redis(settings: Settings) -> str:
    if not settings.redis_url:
        raise RuntimeError("HCD_REDIS_URL is not set (the queue needs Redis)")
    return settings.redis_url


def make_celery(settings: Settings) -> Celery:
    """A Celery app for these settings' broker and queue (no result backend: results live in Postgres)."""
    app = Celery("hcd", broker=_require_redis(settings), set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue_name,
        task_routes={TASK_NAME: {"queue": settings.queue_name}},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        # Early ack is deliberate: a lost or killed worker is recovered by the Postgres lease + sweep,
        # not by broker re-delivery (which would re-deliver long jobs after the visibility timeout).
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_timeout=2,
        broker_transport_options={
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
            "socket_keepalive": True,
            "retry_on_timeout": True,
            "health_check_interval": 15,
            "visibility_timeout": 12 * 3600,
        },
        broker_pool_limit=4,
        enable_utc=True,
    )
    return app


# A few quick retries cover a pooled connection that went stale after a Redis restart.
_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.2, "interval_max": 0.5}
_QUEUE_SCAN_MAX = 10_000


class CeleryQueue:
    """Sends `hcd.run_job` messages (task id = job id) and reads what waits in the Redis queue."""

    def __init__(self, settings: Settings, app: Celery | None = None):
        self.settings = settings
        self.app = app or make_celery(settings)

    def send(self, job_id: str) -> None:
        self.app.send_task(TASK_NAME, args=[job_id], task_id=job_id, queue=self.settings.queue_name,
                           retry=True, retry_policy=_RETRY_POLICY)

    def waiting(self) -> set[str] | None:
        try:
            raw = redis_client(self.settings).lrange(self.settings.queue_name, 0, _QUEUE_SCAN_MAX - 1)
        except (redis.RedisError, OSError):
            return None
        ids: set[str] = set()
        for item in raw:
            try:
                ids.add(json.loads(item)["headers"]["id"])
            except (ValueError, KeyError, TypeError):
                continue
        return ids


def make_worker_app(settings: Settings) -> Celery:
    """The app a worker process runs: the broker settings plus the `hcd.run_job` task."""
    from worker.tasks import register_tasks

    app = make_celery(settings)
    register_tasks(app, settings)
    return app
