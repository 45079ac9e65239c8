"""The FastAPI application: `create_app(settings)`; `uvicorn --factory api.app:create_app`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import redis
import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from api.auth import KeyCache
from api.bodies import BodySizeLimit
from api.docs import install_docs
from api.openapi import install_openapi
from api.problems import install_problem_handlers
from api.prometheus import install_metrics, process_exiting
from api.routes import datasets, health, jobs, models, sweeps
from api.routes.dashboard import router as dashboard_router
from jobs.db import database
from jobs.keys import ensure_bootstrap_key
from jobs.repository import JobRepository
from jobs.settings import Settings, get_settings
from jobs.storage import open_store
from jobs.streams import StatusStream
from jobs.sweeps import SweepRepository

_log = logging.getLogger("hcd.api")
HOT_PATH_THREADS = 4  # threads for the hot routes' database calls, per API process (see api.deps.in_db_thread)
UPLOAD_FORM_OVERHEAD = 64 * 1024  # multipart framing and form fields around an uploaded file


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


def _bootstrap(app: FastAPI) -> None:
    """The bootstrap key, when configured; a database that is down now must not stop the API starting."""
    state = app.state
    try:
        with state.db.session() as session:
            ensure_bootstrap_key(session, state.settings)
    except Exception as err:  # noqa: BLE001 - retried at the next start; requests answer 503 meanwhile
        _log.warning("could not record the bootstrap API key yet: %s", err)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if not settings.database_url or not settings.redis_url:
        raise RuntimeError("the API needs HCD_DATABASE_URL and HCD_REDIS_URL (or use `hcd up`)")
    clients = _Clients(settings.redis_url)
    store = open_store(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store.ensure_layout()
        app.state.db_limiter = anyio.CapacityLimiter(HOT_PATH_THREADS)  # bound to this event loop
        await run_in_threadpool(_bootstrap, app)
        yield
        if clients.async_client is not None:  # bound to this loop: a new one per lifespan
            await clients.async_client.aclose()
            clients.async_client = None
        process_exiting()

    app = FastAPI(
        title="HCD distillation service",
        version="0.1.0",
        description=(
            "Submit knowledge-distillation jobs (Heterogeneous Complementary Distillation and baselines), "
            "follow their status and metrics, download the student. Authenticate with "
            "`Authorization: Bearer <API key>`. Errors are RFC 9457 `application/problem+json` "
            "with a stable `code`; `503 database_unavailable` (with `Retry-After`) while Postgres is down. "
            "`/healthz`, `/readyz` and `/metrics` (Prometheus) need no key."
        ),
        lifespan=lifespan,
        docs_url=None,  # served by api.docs from the package's own Swagger UI assets (works offline)
        redoc_url=None,
    )
    status_stream = StatusStream(settings)
    db = database(settings)
    app.state.settings = settings
    app.state.db = db
    app.state.repo = JobRepository(db, notify=status_stream)
    app.state.sweeps = SweepRepository(app.state.repo)
    app.state.store = store
    app.state.status_stream = status_stream
    app.state.key_cache = KeyCache()
    app.state.redis_sync = clients.sync
    app.state.redis_async = clients.async_
    app.state.sse_keepalive_seconds = 15.0
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimit, default=settings.max_request_bytes,
                       by_prefix={"/models": settings.max_upload_bytes + UPLOAD_FORM_OVERHEAD,
                                  "/datasets": settings.max_dataset_bytes + UPLOAD_FORM_OVERHEAD})
    install_metrics(app)  # outermost middleware: also counts what BodySizeLimit refuses
    install_docs(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(datasets.router)
    app.include_router(sweeps.router)
    app.include_router(dashboard_router)  # `/` (the web dashboard) and `/static/...`

    install_openapi(app)
    return app


_app: FastAPI | None = None


def __getattr__(name: str) -> FastAPI:
    """`api.app:app` for uvicorn, built from the environment on first use."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)
