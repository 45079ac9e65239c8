"""Service-wide figures read from Postgres when the API's `/metrics` is scraped (no state is shared
between API processes: whichever process answers reads the same rows).

- jobs by status; queued jobs ready to run and waiting for their teacher; the age of the oldest ready one;
- per worker holding a lease: seconds since its oldest lease renewal (renewal = expiry - lease period,
  so the API and the workers must share `HCD_LEASE_SECONDS`), and how many leases already expired;
- the metrics lag: for the running job most behind, seconds since its newest metric point (the point's
  own timestamp) or since its current attempt started, whichever is later (so a resumed attempt is not
  judged by its previous attempt's points, and one still loading its data counts from its start);
- two cumulative histograms over the jobs in the table: submit -> first start (`started_at -
  created_at`, which for a student includes waiting for its teacher) and first start -> end of the
  jobs that ended (by status). They are computed from the rows at each scrape, so they only grow as
  jobs start and end; deleting jobs lowers them (Prometheus' rate() reads that as a counter reset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.db import Database
from jobs.status import OWNED, TERMINAL, JobPhase, JobStatus, ordered

# Seconds. Queue waits: from instant to a day; durations: from seconds to the 7-day runtime cap.
QUEUE_WAIT_BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
DURATION_BUCKETS: tuple[float, ...] = (10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 259200,
                                       604800)

_OWNED_VALUES = [s.value for s in ordered(OWNED)]
_TERMINAL_VALUES = [s.value for s in ordered(TERMINAL)]
_WAITING = JobPhase.WAITING_FOR_TEACHER.value


@dataclass
class Histogram:
    """Cumulative counts: `counts[i]` jobs took at most `buckets[i]` seconds; `count` in all (+Inf)."""

    buckets: tuple[float, ...]
    counts: list[int]
    count: int = 0
    sum: float = 0.0


@dataclass
class ServiceStats:
    jobs_by_status: dict[str, int]
    queued_ready: int = 0
    queued_waiting_for_teacher: int = 0
    oldest_ready_age_seconds: float | None = None
    heartbeat_age_by_worker: dict[str, float] = field(default_factory=dict)
    leases_expired: int = 0
    metrics_lag_seconds: float | None = None
    queue_wait: Histogram = field(default_factory=lambda: Histogram(QUEUE_WAIT_BUCKETS, [0] * len(QUEUE_WAIT_BUCKETS)))
    duration_by_status: dict[str, Histogram] = field(default_factory=dict)


def _bucket_columns(expression: str, buckets: tuple[float, ...]) -> str:
    return ", ".join(f"count(*) FILTER (WHERE {expression} <= {float(b)!r})" for b in buckets)


_WAIT = "extract(epoch FROM started_at - created_at)::float8"
_DURATION = "extract(epoch FROM finished_at - started_at)::float8"

_QUEUED_SQL = f"""
    SELECT count(*) FILTER (WHERE phase IS DISTINCT FROM '{_WAITING}'),
           count(*) FILTER (WHERE phase = '{_WAITING}'),
           extract(epoch FROM now() - min(created_at) FILTER (WHERE phase IS DISTINCT FROM '{_WAITING}'))::float8
    FROM jobs WHERE status = '{JobStatus.QUEUED.value}'
"""
# Per running job: its worker, seconds since its last lease renewal, whether the lease expired, and the
# seconds since its newest metric point (the newest step of each name it reported: index lookups only)
# or since its attempt started (its status event), whichever is later.
_RUNNING_SQL = """
    SELECT coalesce(j.worker_id, ''),
           extract(epoch FROM now() - (j.lease_expires_at - make_interval(secs => %(lease)s)))::float8,
           j.lease_expires_at < now(),
           extract(epoch FROM now() - greatest(
               (SELECT max(p.ts) FROM jsonb_object_keys(j.latest_metrics) AS k(name)
                CROSS JOIN LATERAL (
                    SELECT mp.ts FROM metric_points mp WHERE mp.job_id = j.id AND mp.name = k.name
                    ORDER BY mp.step DESC LIMIT 1
                ) p),
               (SELECT max(e.ts) FROM job_events e
                WHERE e.job_id = j.id AND e.attempt = j.attempt AND e.type = 'status')
           ))::float8
    FROM jobs j WHERE j.status = ANY(%(owned)s) AND j.lease_expires_at IS NOT NULL
"""
_WAIT_SQL = f"""
    SELECT count(*), coalesce(sum({_WAIT}), 0), {_bucket_columns(_WAIT, QUEUE_WAIT_BUCKETS)}
    FROM jobs WHERE started_at IS NOT NULL
"""
_DURATION_SQL = f"""
    SELECT status, count(*), coalesce(sum({_DURATION}), 0), {_bucket_columns(_DURATION, DURATION_BUCKETS)}
    FROM jobs WHERE started_at IS NOT NULL AND finished_at IS NOT NULL AND status = ANY(%(terminal)s)
    GROUP BY status
"""


def _histogram(buckets: tuple[float, ...], row: tuple[Any, ...]) -> Histogram:
    count, total, *counts = row
    return Histogram(buckets, [int(c) for c in counts], int(count), float(total))


def read_service_stats(db: Database, lease_seconds: float) -> ServiceStats:
    """The figures above, read in a few index-backed queries (the histograms scan the started jobs)."""
    with db.connection(autocommit=True) as conn:
        by_status = {str(s): int(n) for s, n in conn.execute("SELECT status, count(*) FROM jobs GROUP BY status")}
        stats = ServiceStats({s.value: by_status.get(s.value, 0) for s in ordered(JobStatus)})
        queued = conn.execute(_QUEUED_SQL).fetchone()
        if queued is not None:
            stats.queued_ready, stats.queued_waiting_for_teacher = int(queued[0]), int(queued[1])
            stats.oldest_ready_age_seconds = None if queued[2] is None else max(0.0, float(queued[2]))
        lags = []
        for worker, age, expired, lag in conn.execute(_RUNNING_SQL, {"lease": float(lease_seconds),
                                                                     "owned": _OWNED_VALUES}):
            age = max(0.0, float(age))
            stats.heartbeat_age_by_worker[worker] = max(age, stats.heartbeat_age_by_worker.get(worker, 0.0))
            stats.leases_expired += bool(expired)
            if lag is not None:
                lags.append(max(0.0, float(lag)))
        stats.metrics_lag_seconds = max(lags) if lags else None
        wait = conn.execute(_WAIT_SQL).fetchone()
        if wait is not None:
            stats.queue_wait = _histogram(QUEUE_WAIT_BUCKETS, tuple(wait))
        for status, *row in conn.execute(_DURATION_SQL, {"terminal": _TERMINAL_VALUES}):
            stats.duration_by_status[str(status)] = _histogram(DURATION_BUCKETS, tuple(row))
    return stats
