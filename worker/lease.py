"""Heartbeat of a running attempt (runs in the job's child process).

Every few seconds one fenced UPDATE renews the lease and reads the cancel flag. If the fence fails
(the sweep re-queued the job, another attempt claimed it, or it ended) the process exits at once,
writing nothing more; it also exits when its parent worker died.

While the database is unreachable the job keeps training and the keeper keeps trying; once the
database answers, the lease is renewed (unless fencing shows another attempt took the job meanwhile:
the housekeeping sweep gives a live attempt a whole lease period after an outage before declaring
its lease lost). Only an outage longer than `max_db_outage_seconds` makes the attempt give up.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import NoReturn

from jobs.repository import JobRepository
from jobs.settings import Settings
from jobs.status import JobStatus

_log = logging.getLogger("hcd.worker.lease")

EXIT_LEASE_LOST = 75  # the attempt lost its job; the parent must not touch the job row either
_MAX_HEARTBEAT_INTERVAL = 2.0  # cancel is seen within this long, whatever the lease length
_WAKE_INTERVAL = 0.25  # how often the parent's liveness is checked


def heartbeat_interval(settings: Settings) -> float:
    return min(settings.lease_seconds / 3.0, _MAX_HEARTBEAT_INTERVAL)


def exit_fenced(reason: str) -> NoReturn:
    """Leave at once, writing nothing more (the job belongs to another attempt or has ended)."""
    _log.error("%s; exiting without further writes", reason)
    logging.shutdown()  # flush every handler: os._exit skips the interpreter's teardown
    os._exit(EXIT_LEASE_LOST)


class LeaseKeeper(threading.Thread):
    """Daemon thread: renews the lease, mirrors the cancel flag, ends the process when fenced out."""

    def __init__(self, settings: Settings, repo: JobRepository, job_id: uuid.UUID | str, attempt: int,
                 on_lost: Callable[[str], None] = exit_fenced):
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.settings, self.repo, self.job_id, self.attempt = settings, repo, str(job_id), attempt
        self.on_lost = on_lost
        self.cancel_requested = threading.Event()
        self.interval = heartbeat_interval(settings)
        self._halt = threading.Event()
        self._parent = os.getppid()
        self._last_ok = time.monotonic()
        self._outage_since: float | None = None

    def renew(self) -> bool:
        """One heartbeat. True when renewed; calls on_lost when fenced out; False while the database is out."""
        try:
            lease = self.repo.renew_lease(self.job_id, self.attempt, self.settings.lease_seconds)
        except Exception as err:  # noqa: BLE001 - the database is unreachable: keep training, keep trying
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                _log.warning("job %s: the lease cannot be renewed (%s); training goes on", self.job_id, err)
            return False
        if lease is None:
            self.on_lost("the job is no longer owned by this attempt")
            return False
        self._last_ok = time.monotonic()
        if self._outage_since is not None:
            outage = round(self._last_ok - self._outage_since, 1)
            self._outage_since = None
            _log.warning("job %s: lease re-established after %.1f s without the database", self.job_id, outage)
            try:
                self.repo.add_event(self.job_id, self.attempt, "lease_restored", {"outage_seconds": outage})
            except Exception:  # noqa: BLE001 - an event is not worth more than the job
                pass
        if lease.cancel_requested or lease.status == JobStatus.CANCELLING:
            self.cancel_requested.set()
        return True

    def run(self) -> None:
        next_beat = time.monotonic() + self.interval
        while not self._halt.wait(_WAKE_INTERVAL):
            if os.getppid() != self._parent:
                self.on_lost("the worker process died")
                return
            now = time.monotonic()
            if now - self._last_ok > self.settings.max_db_outage_seconds:
                self.on_lost(f"the database was unreachable for over {self.settings.max_db_outage_seconds:g} s")
                return
            if now >= next_beat:
                self.renew()
                next_beat = time.monotonic() + self.interval

    def stop(self) -> None:
        self._halt.set()
