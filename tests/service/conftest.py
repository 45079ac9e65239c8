"""Service test infrastructure: real Postgres and Redis (the CI servers or embedded ones).

- HCD_TEST_DATABASE_URL set: a fresh database `hcd_test_<hex>` on that server, dropped at the end;
  otherwise an embedded Postgres in a temporary directory. Migrations run on it either way.
- HCD_TEST_REDIS_URL set: that Redis (isolated by a unique queue name and job-id keyed streams);
  otherwise an embedded redis-server.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest

from jobs.db import database, normalize_database_url
from jobs.settings import Settings

_HERE = Path(__file__).resolve().parent


def _server_url_with_database(url: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(normalize_database_url(url)).set(database=database).render_as_string(hide_password=False)


def _psycopg_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory) -> str:
    """URL of a migrated, empty database used by the whole session."""
    from jobs.migrate import upgrade

    server_url = os.environ.get("HCD_TEST_DATABASE_URL")
    if server_url:
        name = f"hcd_test_{uuid.uuid4().hex[:12]}"
        admin = _psycopg_dsn(normalize_database_url(server_url))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = _server_url_with_database(server_url, name)
        upgrade(url)
        yield url
        from jobs.db import dispose_all

        dispose_all()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    else:
        from jobs.embedded import start_postgres

        server = start_postgres(tmp_path_factory.mktemp("embedded") / "pgdata")
        try:
            upgrade(server.url)
            yield server.url
        finally:
            from jobs.db import dispose_all

            dispose_all()
            server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    url = os.environ.get("HCD_TEST_REDIS_URL")
    if url:
        yield url
        return
    from jobs.embedded import start_redis

    server = start_redis(tmp_path_factory.mktemp("embedded-redis"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def service_settings(pg_url, redis_url, tmp_path_factory) -> Settings:
    """Settings for this session's service: unique queue, short lease, fast sweep, tmp data dir."""
    data_dir = tmp_path_factory.mktemp("hcd-data")
    for sub in ("artifacts", "checkpoints", "uploads", "datasets"):
        (data_dir / sub).mkdir()
    settings = Settings(
        database_url=pg_url,
        redis_url=redis_url,
        data_dir=data_dir,
        queue_name=f"hcd-test-{uuid.uuid4().hex[:8]}",
        lease_seconds=6,
        sweep_interval_seconds=1.0,
        publish_grace_seconds=2.0,
        max_attempts=3,
        metrics_min_interval_seconds=0.0,
        _env_file=None,
    )
    yield settings
    _forget_redis_keys(settings)


def _forget_redis_keys(settings: Settings) -> None:
    """Leave a shared Redis as we found it: this session's Celery queue and binding, and the metric
    streams of this session's jobs (other runs may be using the same database number)."""
    import redis
    from sqlalchemy import select

    from jobs.db import database
    from jobs.streams import stream_key
    from jobs.tables import Job

    with database(settings).session() as session:
        job_ids = list(session.execute(select(Job.id)).scalars())
    queue = settings.queue_name
    keys = [queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"] + [stream_key(j) for j in job_ids]
    client = redis.Redis.from_url(settings.redis_url)
    try:
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    except redis.RedisError:
        pass
    finally:
        client.close()


@pytest.fixture(scope="session")
def service_env(service_settings) -> dict[str, str]:
    """os.environ plus the HCD_* variables of `service_settings`, for subprocesses (`hcd worker`...)."""
    s = service_settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCD_")}
    env.update(
        HCD_DATABASE_URL=s.database_url,
        HCD_REDIS_URL=s.redis_url,
        HCD_DATA_DIR=str(s.data_dir),
        HCD_QUEUE_NAME=s.queue_name,
        HCD_LEASE_SECONDS=str(s.lease_seconds),
        HCD_SWEEP_INTERVAL_SECONDS=str(s.sweep_interval_seconds),
        HCD_PUBLISH_GRACE_SECONDS=str(s.publish_grace_seconds),
        HCD_MAX_ATTEMPTS=str(s.max_attempts),
        HCD_METRICS_MIN_INTERVAL_SECONDS=str(s.metrics_min_interval_seconds),
    )
    return env


@pytest.fixture(scope="session")
def api_app(service_settings):
    from api.app import create_app

    return create_app(service_settings)


@pytest.fixture
def api_client(api_app):
    """In-process client (Starlette TestClient, lifespan run); sync, fine for non-streaming routes."""
    from fastapi.testclient import TestClient

    with TestClient(api_app, raise_server_exceptions=False) as client:
        yield client


def _new_key(service_settings, owner: str) -> str:
    from jobs.keys import create_key

    with database(service_settings).sessionmaker() as session:
        key = create_key(session, owner)
        session.commit()
    return key


def _cancel_leftover_jobs(service_settings, owner: str) -> None:
    """Queued jobs a test left behind must not be picked up by a worker of a later test."""
    from sqlalchemy import update

    from jobs.tables import Job

    with database(service_settings).sessionmaker() as session:
        session.execute(
            update(Job).where(Job.owner == owner, Job.status == "queued")
            .values(status="cancelled", finished_at=Job.updated_at)
        )
        session.commit()


@pytest.fixture
def api_owner() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def other_owner() -> str:
    return f"other-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def api_key(service_settings, api_owner) -> str:
    """A fresh key of a fresh owner per test (owners' caps and lists never leak across tests)."""
    yield _new_key(service_settings, api_owner)
    _cancel_leftover_jobs(service_settings, api_owner)


@pytest.fixture
def other_api_key(service_settings, other_owner) -> str:
    yield _new_key(service_settings, other_owner)
    _cancel_leftover_jobs(service_settings, other_owner)


@pytest.fixture
def auth_headers(api_key) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture
def other_auth_headers(other_api_key) -> dict[str, str]:
    return {"Authorization": f"Bearer {other_api_key}"}


# The worker helper's fixtures (real `hcd worker` / `hcd api` subprocesses) live beside this file.
if (_HERE / "worker_fixtures.py").exists():
    from worker_fixtures import *  # noqa: E402,F401,F403
