"""Handing queued jobs to the message queue (a transactional outbox) and recovering lost attempts.

Postgres is the source of truth; the queue only delivers job ids. A job row is committed first (with a
NOTIFY); the relay, which runs in every worker, wakes on it, marks the job published and sends its
message. Every few seconds the same loop also resends messages that got lost (Redis restarted) and
re-queues jobs whose attempt stopped renewing its lease. Each step takes rows with SKIP LOCKED, so
any number of workers can run it at once.

A lease is only declared lost after this process has seen the database healthy for a whole lease
period: a job that kept training through a database outage gets that long to renew its lease first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any, Protocol

import psycopg

from jobs.db import database_unavailable, libpq_url
from jobs.repository import QUEUED_CHANNEL, JobRepository
from jobs.settings import Settings

_log = logging.getLogger("hcd.outbox")
_RECONNECT_MAX_SECONDS = 5.0


class JobQueue(Protocol):
    """Where job messages go (the worker's Celery queue implements it)."""

    def send(self, job_id: str) -> None:
        """Send the message for this job; raises when the queue cannot take it."""
        ...

    def waiting(self) -> set[str] | None:
        """Ids of the messages waiting in the queue, or None when the queue cannot tell."""
        ...


class Housekeeper:
    """The relay and the lease sweep of one worker process."""

    def __init__(self, settings: Settings, repo: JobRepository, queue: JobQueue):
        self.settings, self.repo, self.queue = settings, repo, queue
        self._healthy_since: float | None = None  # when this process last saw the database come back
        self._next_sweep = 0.0

    # ------------------------------------------------------------------ one step each
    def _send(self, job_ids: list[str]) -> int:
        sent, failed = 0, []
        for job_id in job_ids:
            try:
                self.queue.send(job_id)
                sent += 1
            except Exception as err:  # noqa: BLE001 - the broker client raises many types
                _log.warning("could not publish job %s: %s", job_id, err)
                failed.append(job_id)
        if failed:
            self.repo.mark_unpublished(failed)
        return sent

    def relay(self) -> int:
        """Publish the queued jobs that were never published; the number sent."""
        return self._send(self.repo.take_unpublished())

    def resend_lost(self) -> int:
        """Resend queued jobs published a while ago whose message is not waiting in the queue."""
        stale = self.repo.take_stale_published(self.settings.publish_grace_seconds)
        if not stale:
            return 0
        waiting = self.queue.waiting()
        return self._send([j for j in stale if waiting is None or j not in waiting])

    def sweep(self) -> Counter[str]:
        """One housekeeping round: lost leases (counted by the status they led to), then the relay."""
        counts: Counter[str] = Counter()
        now = time.monotonic()
        if self._healthy_since is not None and now - self._healthy_since >= self.settings.lease_seconds:
            counts.update(change.status.value for change in self.repo.requeue_expired())
        counts["published"] = self.relay() + self.resend_lost()
        if any(counts.values()):
            _log.info("housekeeping: %s", dict(counts))
        return counts

    def _database_ok(self) -> None:
        if self._healthy_since is None:
            self._healthy_since = time.monotonic()

    def _database_failed(self) -> None:
        self._healthy_since = None

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set: wake on NOTIFY (relay) and every sweep interval (sweep)."""
        backoff = 0.5
        while not stop.is_set():
            try:
                with psycopg.connect(libpq_url(self.settings.database_url or ""), autocommit=True,
                                     connect_timeout=self.settings.db_connect_timeout_seconds) as conn:
                    conn.execute(f"LISTEN {QUEUED_CHANNEL}")
                    self._database_ok()
                    backoff = 0.5
                    self._listen(conn, stop)
            except Exception as err:  # noqa: BLE001 - keep the loop alive whatever happens
                self._database_failed()
                if not database_unavailable(err):
                    _log.exception("housekeeping failed")
                else:
                    _log.warning("housekeeping: database unavailable (%s); retrying", err)
                stop.wait(backoff)
                backoff = min(backoff * 2, _RECONNECT_MAX_SECONDS)

    def _listen(self, conn: psycopg.Connection[Any], stop: threading.Event) -> None:
        while not stop.is_set():
            now = time.monotonic()
            if now >= self._next_sweep:
                self.sweep()
                self._next_sweep = time.monotonic() + self.settings.sweep_interval_seconds
            timeout = max(0.0, min(self._next_sweep - time.monotonic(), 1.0))
            woken = False
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                woken = True
            if woken:
                self.relay()
