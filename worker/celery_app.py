"""The Celery application: Redis only delivers job ids; Postgres holds the jobs (see worker/tasks.py).

Imported by the API (through worker.publish), so it must never import torch.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from api.settings import Settings

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


@lru_cache(maxsize=16)
def _cached_app(redis_url: str, queue_name: str) -> Celery:
    return make_celery(Settings(redis_url=redis_url, queue_name=queue_name, _env_file=None))


def publisher_app(settings: Settings) -> Celery:
    """A shared app for publishing (one producer pool per broker/queue, reused across requests)."""
    return _cached_app(_require_redis(settings), settings.queue_name)


def make_worker_app(settings: Settings) -> Celery:
    """The app a worker process runs: the broker settings plus the `hcd.run_job` task."""
    from worker.tasks import register_tasks

    app = make_celery(settings)
    register_tasks(app, settings)
    return app
