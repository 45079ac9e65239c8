"""`GET /metrics`: the API's Prometheus metrics (text format; no authentication: keep it off the internet).

Two kinds of figures:

- HTTP requests, counted by a pure ASGI middleware (`RequestMetrics`) in the process that served them:
  `hcd_http_requests_total{method, route, status}` (route = the route's template, `/jobs/{job_id}`, never
  the raw path; `<unmatched>` for paths no route matches), `hcd_http_request_duration_seconds{method,
  route}` (from the request's arrival to the end of its response body: for the SSE stream and large
  downloads that is the whole transfer), `hcd_http_requests_in_progress{method}`. `/metrics` itself is
  not counted. Under `hcd api --workers N` the processes add up through prometheus-client's multiprocess
  mode (`PROMETHEUS_MULTIPROC_DIR`, set per run by `hcd api`: api.metrics_env), so a scrape sums every
  process whichever one answers.
- Service-wide figures read from Postgres (and Redis) at scrape time by the answering process
  (jobs.stats): jobs by status, queue depth, queue messages, worker heartbeats, metrics lag, and the
  submit-to-start and duration histograms. `hcd_database_up` / `hcd_redis_up` say whether this scrape
  could read them (the rest of the scrape is still served when they cannot).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request, Response
from fastapi.routing import RouteContext, iter_route_contexts
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics_env import MULTIPROC_ENV
from jobs.settings import Settings
from jobs.stats import Histogram as CountsHistogram
from jobs.stats import ServiceStats, read_service_stats

METRICS_PATH = "/metrics"
UNMATCHED = "<unmatched>"
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_REDIS_SECONDS = 2.0

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series beside every counter and histogram

# Not registered anywhere: each scrape builds its registry (the multiprocess collector, or these).
REQUESTS = Counter("hcd_http_requests", "HTTP requests answered, by method, route template and status.",
                   ["method", "route", "status"], registry=None)
LATENCY = Histogram("hcd_http_request_duration_seconds",
                    "Time from a request's arrival to the end of its response, by method and route template.",
                    ["method", "route"], buckets=_LATENCY_BUCKETS, registry=None)
IN_PROGRESS = Gauge("hcd_http_requests_in_progress", "Requests being served now.", ["method"], registry=None,
                    multiprocess_mode="livesum")


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def _route_path(scope: Scope) -> str:
    """The path without the app's root_path (as the router sees it)."""
    path, root = str(scope["path"]), str(scope.get("root_path", ""))
    return path[len(root):] if root and path.startswith(root + "/") else path


def _template(route: BaseRoute | RouteContext) -> str:
    return str(getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED)


class RequestMetrics:
    """Pure ASGI middleware: counts and times every HTTP request by its route's template."""

    def __init__(self, app: ASGIApp, routes: Iterable[BaseRoute] = (), exclude: Iterable[str] = (METRICS_PATH,)):
        self.app, self.routes, self.exclude = app, routes, frozenset(exclude)

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None:
            return _template(route)
        # Answered before routing (a 413 on a declared Content-Length), or no route matches.
        for candidate in iter_route_contexts(list(self.routes)):  # included routers' routes too
            match, _ = candidate.original_route.matches(scope)
            if match == Match.FULL:
                return _template(candidate)
        return UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _route_path(scope) in self.exclude:
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        status = 500  # an exception that escapes every handler ends as a 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = time.perf_counter()
        in_progress = IN_PROGRESS.labels(method)
        in_progress.inc()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            in_progress.dec()
            route = self._route(scope)
            REQUESTS.labels(method, route, str(status)).inc()
            LATENCY.labels(method, route).observe(time.perf_counter() - started)


def _histogram(name: str, doc: str, hist: CountsHistogram, labels: dict[str, str] | None = None,
               family: HistogramMetricFamily | None = None) -> HistogramMetricFamily:
    family = family or HistogramMetricFamily(name, doc, labels=list(labels or {}))
    buckets = [(repr(float(b)), float(c)) for b, c in zip(hist.buckets, hist.counts, strict=True)]
    buckets.append(("+Inf", float(hist.count)))
    family.add_metric(list((labels or {}).values()), buckets, hist.sum)
    return family


class ServiceCollector:
    """The scrape-time figures (one scrape's snapshot)."""

    def __init__(self, stats: ServiceStats | None, queue_messages: int | None):
        self.stats, self.queue_messages = stats, queue_messages

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        yield GaugeMetricFamily("hcd_database_up", "1 when this scrape could read the job figures from Postgres.",
                                value=float(stats is not None))
        yield GaugeMetricFamily("hcd_redis_up", "1 when this scrape could read the queue length from Redis.",
                                value=float(self.queue_messages is not None))
        if self.queue_messages is not None:
            yield GaugeMetricFamily("hcd_queue_messages", "Job messages waiting in the Redis queue.",
                                    value=float(self.queue_messages))
        if stats is None:
            return
        jobs = GaugeMetricFamily("hcd_jobs", "Jobs in the database, by status.", labels=["status"])
        for status, count in stats.jobs_by_status.items():
            jobs.add_metric([status], float(count))
        yield jobs
        queued = GaugeMetricFamily("hcd_queue_depth_jobs", "Queued jobs: ready to run, or waiting for their teacher.",
                                   labels=["state"])
        queued.add_metric(["ready"], float(stats.queued_ready))
        queued.add_metric(["waiting_for_teacher"], float(stats.queued_waiting_for_teacher))
        yield queued
        yield GaugeMetricFamily("hcd_queue_oldest_ready_job_age_seconds",
                                "Seconds since the oldest job ready to run was submitted (0: none waits).",
                                value=stats.oldest_ready_age_seconds or 0.0)
        beats = GaugeMetricFamily("hcd_worker_heartbeat_age_seconds",
                                  "Seconds since the oldest lease renewal of a worker's running jobs.",
                                  labels=["worker_id"])
        for worker, age in sorted(stats.heartbeat_age_by_worker.items()):
            beats.add_metric([worker], age)
        yield beats
        yield GaugeMetricFamily("hcd_worker_heartbeat_age_max_seconds",
                                "Seconds since the oldest lease renewal of any running job (0: none runs).",
                                value=max(stats.heartbeat_age_by_worker.values(), default=0.0))
        yield GaugeMetricFamily("hcd_leases_expired", "Running jobs whose lease expired (the sweep re-queues them).",
                                value=float(stats.leases_expired))
        yield GaugeMetricFamily("hcd_job_metrics_lag_seconds",
                                "Seconds since the newest metric point (or the attempt's start, if later) of the "
                                "running job most behind (0: none runs).",
                                value=stats.metrics_lag_seconds or 0.0)
        yield _histogram("hcd_job_queue_wait_seconds",
                         "Submit to first start of the jobs in the database that started (computed from the rows).",
                         stats.queue_wait)
        durations = HistogramMetricFamily("hcd_job_duration_seconds",
                                          "First start to end of the jobs in the database that ran and ended, "
                                          "by status (computed from the rows).", labels=["status"])
        for status, hist in sorted(stats.duration_by_status.items()):
            _histogram("hcd_job_duration_seconds", "", hist, {"status": status}, durations)
        yield durations


async def _service_stats(request: Request) -> ServiceStats | None:
    state = request.app.state
    settings: Settings = state.settings
    try:
        with anyio.fail_after(settings.request_timeout_seconds):
            return await anyio.to_thread.run_sync(read_service_stats, state.db, float(settings.lease_seconds),
                                                  abandon_on_cancel=True)
    except Exception:  # noqa: BLE001 - a scrape reports the database as down instead of failing
        return None


async def _queue_messages(request: Request) -> int | None:
    state = request.app.state

    def llen() -> int:
        return int(state.redis_sync().llen(state.settings.queue_name))

    try:
        with anyio.fail_after(_REDIS_SECONDS + 1):
            return await anyio.to_thread.run_sync(llen, abandon_on_cancel=True)
    except Exception:  # noqa: BLE001 - reported as hcd_redis_up 0
        return None


def scrape_registry(collector: ServiceCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_mode():
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        for metric in (REQUESTS, LATENCY, IN_PROGRESS):
            registry.register(metric)
    registry.register(collector)
    return registry


async def metrics(request: Request) -> Response:
    collector = ServiceCollector(await _service_stats(request), await _queue_messages(request))
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    body = await anyio.to_thread.run_sync(lambda: encoder(scrape_registry(collector)))
    return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})


_METRICS_DESCRIPTION = (
    "HTTP requests by route template and status, with latency histograms (summed over every API process); "
    "jobs by status, queue depth, worker heartbeats, metrics lag, submit-to-start and duration histograms "
    "(read from Postgres at each scrape). No authentication: serve it on a private network only."
)
_METRICS_DOC: dict[int | str, dict[str, Any]] = {200: {
    "description": "Prometheus text format (OpenMetrics when the scraper asks for it).",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}}


def install_metrics(app: FastAPI) -> None:
    """The request middleware (outermost of the app's own) and `GET /metrics`."""
    app.add_middleware(RequestMetrics, routes=app.router.routes)
    app.add_api_route(METRICS_PATH, metrics, methods=["GET"], tags=["health"], response_class=Response,
                      summary="Prometheus metrics (no authentication: do not expose publicly)",
                      description=_METRICS_DESCRIPTION, responses=_METRICS_DOC)


def process_exiting() -> None:
    """An API process stops: its live gauges (requests in progress) leave the multiprocess sums."""
    if multiprocess_mode():
        mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
