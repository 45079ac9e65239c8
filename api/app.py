"""The FastAPI application: `create_app(settings)`; `uvicorn api.app:app` or `--factory api.app:create_app`."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import anyio
import redis
import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi

from api.auth import KeyCache, ensure_bootstrap_key
from api.db import get_engine, get_sessionmaker
from api.problems import install_problem_handlers, problem_response
from api.routes import health, jobs, models
from api.schemas import SubmitJobRequest
from api.settings import Settings, get_settings

_log = logging.getLogger(__name__)
_UPLOAD_PATH = "/models"
HOT_PATH_THREADS = 4  # threads for the hot routes' database calls, per API process (see api.deps.in_db_thread)


class BodySizeLimit:
    """Rejects declared bodies over settings.max_request_bytes early (uploads have their own cap)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].rstrip("/") != _UPLOAD_PATH:
            for name, value in scope.get("headers", ()):
                if name == b"content-length":
                    if not value.isdigit() or int(value) > self.max_bytes:
                        response = problem_response(
                            413, "payload_too_large", f"request body exceeds {self.max_bytes} bytes",
                            instance=scope["path"],
                        )
                        await response(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)


class _Clients:
    """Redis clients of one app: the sync one is shared by threads, the async one lives in the loop."""

    def __init__(self, url: str):
        self.url = url
        self._sync: redis.Redis | None = None
        self.async_client: aioredis.Redis | None = None

    def sync(self) -> redis.Redis:
        if self._sync is None:
            self._sync = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        return self._sync

    def async_(self) -> aioredis.Redis:
        if self.async_client is None:
            self.async_client = aioredis.Redis.from_url(
                self.url, decode_responses=True, socket_timeout=30, socket_connect_timeout=2
            )
        return self.async_client


def _warm_publisher(settings: Settings) -> None:
    """Open the Celery producer's Redis connection now, so the first submission does not pay for it.
    Redis being down must not stop the API from starting (a job's publish is retried by the sweep)."""
    try:
        from worker.celery_app import publisher_app
    except ImportError:
        return
    try:
        with publisher_app(settings).producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
            producer.channel  # noqa: B018 - creates the channel (and its client) once
    except Exception as err:  # noqa: BLE001 - kombu/redis raise several types
        _log.warning("could not connect the job publisher to Redis yet: %s", err)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.database_url or not settings.redis_url:
        raise RuntimeError("the API needs HCD_DATABASE_URL and HCD_REDIS_URL (or use `hcd up`)")
    clients = _Clients(settings.redis_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for folder in (settings.artifacts_dir, settings.checkpoints_dir, settings.uploads_dir, settings.datasets_dir):
            folder.mkdir(parents=True, exist_ok=True)
        ensure_bootstrap_key(settings)
        app.state.db_limiter = anyio.CapacityLimiter(HOT_PATH_THREADS)  # bound to this event loop
        await run_in_threadpool(_warm_publisher, settings)
        yield
        if clients.async_client is not None:  # bound to this loop: a new one per lifespan
            await clients.async_client.aclose()
            clients.async_client = None

    app = FastAPI(
        title="HCD distillation service",
        version="0.1.0",
        description=(
            "Submit knowledge-distillation jobs (Heterogeneous Complementary Distillation and baselines), "
            "follow their status and metrics, download the student. Authenticate with "
            "`Authorization: Bearer <API key>`. Errors are RFC 9457 `application/problem+json` "
            "with a stable `code`."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = get_engine(settings.database_url)
    app.state.sessionmaker = get_sessionmaker(settings.database_url)
    app.state.key_cache = KeyCache()
    app.state.redis_sync = clients.sync
    app.state.redis_async = clients.async_
    app.state.sse_keepalive_seconds = 15.0
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.add_api_route("/", lambda: {"service": "hcd", "docs": "/docs"}, include_in_schema=False)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            submit = SubmitJobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(submit.pop("$defs", {}))
            components["SubmitJobRequest"] = submit
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


_app: FastAPI | None = None


def __getattr__(name: str):
    """`api.app:app` for uvicorn, built from the environment on first use."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)
