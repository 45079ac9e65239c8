"""Heartbeat of a running attempt (runs in the job's child process).

Every few seconds one fenced UPDATE renews the lease and reads the cancel flag. If the fence fails
(the sweep re-queued the job, another attempt claimed it, or it ended) the process exits at once,
writing nothing more; it also exits when its lease lapsed locally (Postgres unreachable for a whole
lease: the sweep may already have handed the job on) or when its parent worker died.
Together these keep two attempts of a job from ever running at the same time.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from typing import Callable

from sqlalchemy import literal_column

from api.db import session_scope
from api.settings import Settings
from worker.jobs_db import fenced_update

_log = logging.getLogger(__name__)

EXIT_LEASE_LOST = 75  # the attempt lost its job; the parent must not touch the job row either
_MAX_HEARTBEAT_INTERVAL = 2.0  # cancel is seen within this long, whatever the lease length
_WAKE_INTERVAL = 0.25  # how often the parent's liveness is checked


def lease_expiry_sql(settings: Settings):
    """now() + lease, computed by Postgres (one clock for every worker and the sweep)."""
    return literal_column(f"now() + make_interval(secs => {float(settings.lease_seconds)})")


def heartbeat_interval(settings: Settings) -> float:
    return min(settings.lease_seconds / 3.0, _MAX_HEARTBEAT_INTERVAL)


def _exit_now(reason: str) -> None:
    print(f"hcd worker child: {reason}; exiting without further writes", file=sys.stderr, flush=True)
    os._exit(EXIT_LEASE_LOST)


class LeaseKeeper(threading.Thread):
    """Daemon thread: renews the lease, mirrors cancel_requested, kills the process when fenced out."""

    def __init__(self, settings: Settings, job_id: uuid.UUID | str, attempt: int,
                 on_lost: Callable[[str], None] = _exit_now):
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.settings, self.job_id, self.attempt = settings, str(job_id), attempt
        self.on_lost = on_lost
        self.cancel_requested = threading.Event()
        self.interval = heartbeat_interval(settings)
        self._halt = threading.Event()
        self._parent = os.getppid()
        self._last_ok = time.monotonic()

    def renew(self) -> bool:
        """One heartbeat. True when renewed; calls on_lost when fenced out. DB errors return False."""
        try:
            with session_scope(self.settings.database_url) as session:
                row = fenced_update(session, self.job_id, self.attempt, {
                    "lease_expires_at": lease_expiry_sql(self.settings),
                })
        except Exception as err:  # Postgres unreachable: try again; the local lease check decides
            _log.warning("heartbeat of job %s failed: %s", self.job_id, err)
            return False
        if row is None:
            self.on_lost("the job is no longer owned by this attempt")
            return False
        self._last_ok = time.monotonic()
        if row["cancel_requested"] or row["status"] == "cancelling":
            self.cancel_requested.set()
        return True

    def run(self) -> None:
        next_beat = time.monotonic() + self.interval
        while not self._halt.wait(_WAKE_INTERVAL):
            if os.getppid() != self._parent:
                self.on_lost("the worker process died")
                return
            now = time.monotonic()
            if now - self._last_ok > self.settings.lease_seconds * 0.9:
                self.on_lost("the lease could not be renewed in time")
                return
            if now >= next_beat:
                self.renew()
                next_beat = time.monotonic() + self.interval

    def stop(self) -> None:
        self._halt.set()
