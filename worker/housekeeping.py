"""The housekeeping thread of every worker: the outbox relay and the lease sweep (jobs.outbox)."""

from __future__ import annotations

import threading

from jobs.db import database
from jobs.outbox import Housekeeper
from jobs.repository import JobRepository
from jobs.settings import Settings
from jobs.streams import StatusStream
from worker.celery_app import CeleryQueue


class HousekeepingThread(threading.Thread):
    """Runs `Housekeeper.run` until stopped (it survives database and Redis outages on its own)."""

    def __init__(self, settings: Settings):
        super().__init__(name="hcd-housekeeping", daemon=True)
        repo = JobRepository(database(settings), notify=StatusStream(settings))
        self.housekeeper = Housekeeper(settings, repo, CeleryQueue(settings))
        self._halt = threading.Event()

    def run(self) -> None:
        self.housekeeper.run(self._halt)

    def stop(self) -> None:
        self._halt.set()
