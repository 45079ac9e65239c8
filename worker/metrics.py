"""Metric sink of a running attempt: Redis stream (throttled live tail) + Postgres (every point).

Stream entries (what SSE clients receive as `data`):
- `metrics`: {"step", "epoch", "ts", "values": {name: value}, "epochs", "total_steps"} (the last two once
  training has started; `epoch` is 0-based, `ts` is when the training loop made the points);
- `status`: {"status", "phase", "attempt"}, plus "step", "epoch", "epochs", "total_steps" once training
  has started. One is written at each status or phase change of the attempt, and one more when
  training starts (or its size changes), so that a client knows the run's length at once.
When an entry entered the stream is its entry id (the SSE event id): Redis' milliseconds, `<ms>-<seq>`.

The training thread only appends to in-memory buffers (microseconds); a background thread does the
I/O. Redis errors are logged and retried, never raised: the job goes on and Postgres keeps every
point. Postgres writes are batched, idempotent (ON CONFLICT (job_id, name, step) DO NOTHING) and
fenced by the attempt together with the job's progress and latest metrics.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import redis

from hcd_core.types import MetricPoint, Progress
from jobs.errors import FenceLost
from jobs.repository import JobRepository
from jobs.settings import Settings
from jobs.streams import xadd

_log = logging.getLogger("hcd.worker.metrics")

PG_FLUSH_INTERVAL = 1.0  # seconds between Postgres batches while training
_REDIS_BACKLOG_MAX = 2000  # stream entries kept while Redis is down (oldest dropped)
_REDIS_RETRY_SECONDS = 1.0
EPOCH_PREFIXES = ("val_", "best_")  # evaluation points: always streamed, never throttled


def is_epoch_point(name: str) -> bool:
    return name.startswith(EPOCH_PREFIXES)


class MetricsSink:
    """Collects the engine's MetricPoints and progress and writes them out."""

    def __init__(self, settings: Settings, repo: JobRepository, job_id: uuid.UUID | str, attempt: int,
                 on_fence_lost: Callable[[str], None] | None = None):
        self.settings, self.repo, self.job_id, self.attempt = settings, repo, str(job_id), attempt
        self.on_fence_lost = on_fence_lost
        self._lock = threading.Condition()
        self._pg_write = threading.Lock()  # one Postgres batch at a time, in order
        self._pg_pending: list[MetricPoint] = []
        self._stream_queue: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(
            maxlen=_REDIS_BACKLOG_MAX)
        self._held_step_entry: dict[str, Any] | None = None  # newest throttled per-step entry
        self._last_stream_at = 0.0
        self._latest: dict[str, float] = {}
        self._progress: dict[str, int] | None = None
        self._last_status: dict[str, Any] | None = None  # the attempt's last status entry (status, phase)
        self._announced_size: tuple[int, int] | None = None  # (epochs, total_steps) last put in the stream
        self._dirty_job = False
        self._closing = False
        self._redis_down_until = 0.0
        self._thread = threading.Thread(target=self._loop, name=f"metrics-{job_id}", daemon=True)
        self.stream_errors = 0

    # ------------------------------------------------------------------ training-thread side
    def start(self) -> MetricsSink:
        self._thread.start()
        return self

    @property
    def open(self) -> bool:
        return not self._closing

    def add(self, points: Iterable[MetricPoint]) -> None:
        points = list(points)
        if not points:
            return
        now = time.monotonic()
        with self._lock:
            self._pg_pending.extend(points)
            for p in points:
                self._latest[p.name] = float(p.value)
            self._dirty_job = True
            wake = False
            size = _size(self._progress)
            for entry in _group_entries(points):
                entry.update(size)
                urgent = any(is_epoch_point(n) for n in entry["values"])
                if urgent or now - self._last_stream_at >= self.settings.metrics_min_interval_seconds:
                    if not urgent and self._held_step_entry is not None:
                        self._held_step_entry = None  # superseded by this newer step
                    self._stream_queue.append(("metrics", entry))
                    self._last_stream_at = now
                    wake = True
                else:
                    self._held_step_entry = entry
            if wake:
                self._lock.notify()

    def progress(self, progress: Progress) -> None:
        with self._lock:
            self._progress = {
                "epoch": progress.epoch, "epochs": progress.epochs,
                "step": progress.step, "total_steps": progress.total_steps,
            }
            self._dirty_job = True
            size = (progress.epochs, progress.total_steps)
            if self._last_status is not None and size != self._announced_size:
                # Training started (or its size changed) after the last status entry: say so now, not
                # with the first metrics entry, so that a watching client shows the total at once.
                self._queue_status(self._last_status)

    def status_entry(self, status: str, phase: str | None) -> None:
        """A "status" stream entry, ordered after the metrics already queued."""
        with self._lock:
            self._last_status = {"status": str(status), "phase": phase, "attempt": self.attempt}
            self._queue_status(self._last_status)

    def _queue_status(self, status: dict[str, Any]) -> None:
        entry = dict(status)
        if self._progress is not None:
            entry.update(self._progress)
            self._announced_size = (self._progress["epochs"], self._progress["total_steps"])
        self._stream_queue.append(("status", entry))
        self._lock.notify()

    def close(self, timeout: float = 30.0) -> bool:
        """Stop the thread after a last flush; True when Postgres has every point."""
        with self._lock:
            self._closing = True
            if self._held_step_entry is not None:
                self._stream_queue.append(("metrics", self._held_step_entry))
                self._held_step_entry = None
            self._lock.notify()
        self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while self._pending_pg() and time.monotonic() < deadline:
            if self._flush_pg():
                break
            time.sleep(0.5)
        self._flush_redis(force=True)
        return not self._pending_pg()

    # ------------------------------------------------------------------ background side
    def _pending_pg(self) -> bool:
        with self._lock:
            return bool(self._pg_pending) or self._dirty_job

    def _loop(self) -> None:
        next_pg = time.monotonic() + PG_FLUSH_INTERVAL
        while True:
            with self._lock:
                now = time.monotonic()
                held_due = None
                if self._held_step_entry is not None:
                    held_due = self._last_stream_at + self.settings.metrics_min_interval_seconds
                    if now >= held_due:
                        self._stream_queue.append(("metrics", self._held_step_entry))
                        self._held_step_entry = None
                        self._last_stream_at = now
                        held_due = None
                wait = next_pg - now
                if held_due is not None:
                    wait = min(wait, held_due - now)
                if self._stream_queue:  # send now, or when Redis may be back
                    wait = min(wait, self._redis_down_until - now)
                if not self._closing and wait > 0:
                    self._lock.wait(wait)
                closing = self._closing
            self._flush_redis()
            if closing:
                self._flush_pg()
                return
            if time.monotonic() >= next_pg:
                self._flush_pg()
                next_pg = time.monotonic() + PG_FLUSH_INTERVAL

    def _flush_redis(self, force: bool = False) -> None:
        if not force and time.monotonic() < self._redis_down_until:
            return
        while True:
            with self._lock:
                if not self._stream_queue:
                    return
                type_, data = self._stream_queue[0]
            try:
                # The entry id Redis gives it is when it entered the stream (benchmarks/service.py
                # measures the metric latency from it); `ts` is when training made the points.
                xadd(self.settings, self.job_id, type_, data)
            except (redis.RedisError, OSError) as err:
                self.stream_errors += 1
                if self.stream_errors in (1, 10, 100) or self.stream_errors % 1000 == 0:
                    _log.warning("metrics stream of job %s unavailable (%s); will retry", self.job_id, err)
                self._redis_down_until = time.monotonic() + _REDIS_RETRY_SECONDS
                return
            with self._lock:
                if self._stream_queue and self._stream_queue[0][1] is data:
                    self._stream_queue.popleft()

    def persist(self, timeout: float) -> bool:
        """Write every point added so far to Postgres now, from the caller's thread, retrying for up
        to `timeout` s; True when done. Called before each checkpoint: a run resumed from that
        checkpoint will not report the earlier points again, so they must not sit in memory."""
        deadline = time.monotonic() + timeout
        while not self._flush_pg():
            if time.monotonic() >= deadline:
                _log.warning("metrics of job %s not persisted before its checkpoint", self.job_id)
                return False
            time.sleep(0.5)
        return True

    def _flush_pg(self) -> bool:
        """Write pending points + job progress in one fenced transaction; False on a DB error."""
        with self._pg_write:
            return self._write_pg_batch()

    def _write_pg_batch(self) -> bool:
        with self._lock:
            batch, self._pg_pending = self._pg_pending, []
            dirty, self._dirty_job = self._dirty_job, False
            latest = dict(self._latest)
            progress = dict(self._progress) if self._progress else None
        if not batch and not dirty:
            return True
        try:
            self.repo.write_progress(self.job_id, self.attempt, points=batch, latest_metrics=latest, progress=progress)
        except FenceLost as err:
            if self.on_fence_lost is not None:
                self.on_fence_lost(str(err))
            return False
        except Exception as err:  # noqa: BLE001 - keep the points; the next flush retries them
            _log.warning("metric batch of job %s not written yet: %s", self.job_id, err)
            with self._lock:
                self._pg_pending[:0] = batch
                self._dirty_job = True
            return False
        return True


def _size(progress: dict[str, int] | None) -> dict[str, int]:
    """{"epochs", "total_steps"} of the run once training has started, else {}."""
    if progress is None:
        return {}
    return {"epochs": progress["epochs"], "total_steps": progress["total_steps"]}


def _group_entries(points: list[MetricPoint]) -> list[dict[str, Any]]:
    """One stream entry per (step, epoch): {"step", "epoch", "ts", "values": {name: value}}."""
    entries: dict[tuple[int, int], dict[str, Any]] = {}
    for p in points:
        entry = entries.setdefault((int(p.step), int(p.epoch)), {
            "step": int(p.step), "epoch": int(p.epoch), "ts": float(p.ts), "values": {},
        })
        entry["values"][p.name] = float(p.value)
        entry["ts"] = max(entry["ts"], float(p.ts))
    return list(entries.values())
