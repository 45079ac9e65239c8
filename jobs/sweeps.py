"""Sweeps in the service: a grid x seeds of ordinary jobs, created together, followed and summarised
together. A sweep's status is derived from its jobs; its jobs change state through JobRepository only.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from hcd_core.sweep import metric_summary
from jobs.errors import InvalidState, NotFound
from jobs.repository import INSERT_JOBS, OWNER_LOCK, QUEUED_CHANNEL, JobRepository, NewJob, insert_params, inserted_jobs
from jobs.status import ACTIVE, OWNED, TERMINAL, JobStatus

_SWEEP_COLUMNS = "id, base, grid, seeds, cells, metadata, created_at"
_INSERT_SWEEP = f"""
INSERT INTO sweeps (id, owner, base, grid, seeds, cells, metadata, idempotency_key, request_hash)
VALUES (%(id)s, %(owner)s, %(base)s, %(grid)s, %(seeds)s, %(cells)s, %(metadata)s, %(key)s, %(hash)s)
ON CONFLICT DO NOTHING
RETURNING {_SWEEP_COLUMNS}
"""


@dataclass(frozen=True)
class NewSweep:
    owner: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    seeds: list[int]
    cells: list[dict[str, Any]]  # [{"index", "values"}]
    metadata: dict[str, str]
    request_hash: str
    idempotency_key: str | None = None


def sweep_status(counts: Counter[str]) -> JobStatus:
    """A sweep is running while any job runs or some wait after others ended; queued while all wait;
    then succeeded (all did), failed (any did) or cancelled."""
    if any(counts[s] for s in OWNED) or (counts[JobStatus.QUEUED] and sum(counts[s] for s in TERMINAL)):
        return JobStatus.RUNNING
    if counts[JobStatus.QUEUED]:
        return JobStatus.QUEUED
    if counts[JobStatus.FAILED]:
        return JobStatus.FAILED
    if counts[JobStatus.CANCELLED]:
        return JobStatus.CANCELLED
    return JobStatus.SUCCEEDED


def _metric(result: dict[str, Any] | None, group: str) -> float | None:
    value = ((result or {}).get(group) or {}).get("val_top1")
    return float(value) if isinstance(value, (int, float)) else None


class SweepRepository:
    """Creates a sweep with all its jobs in one transaction; reads, cancels and deletes it."""

    def __init__(self, jobs: JobRepository):
        self.jobs, self.db = jobs, jobs.db

    def find_replay(self, owner: str, idempotency_key: str) -> tuple[str, dict[str, Any]] | None:
        with self.db.connection(autocommit=True) as conn:
            row = conn.execute("SELECT request_hash, id FROM sweeps WHERE owner = %s AND idempotency_key = %s",
                               (owner, idempotency_key)).fetchone()
        return None if row is None else (row[0], self.get(owner, row[1]))

    def create(self, new: NewSweep, runs: Sequence[NewJob], *, max_attempts: int, runtime_limit_seconds: int,
               queued_cap: int) -> dict[str, Any] | None:
        """The sweep and every run as a queued job, committed together (relays woken); None on an
        Idempotency-Key conflict. Raises like JobRepository.create (cap of queued jobs, teacher gone)."""
        sweep_id = uuid.uuid4()
        with self.db.connection() as conn:
            conn.execute(OWNER_LOCK, (f"hcd-owner:{new.owner}",))
            created = conn.execute(_INSERT_SWEEP, {
                "id": sweep_id, "owner": new.owner, "base": Jsonb(new.base), "grid": Jsonb(new.grid),
                "seeds": Jsonb(new.seeds), "cells": Jsonb(new.cells), "metadata": Jsonb(new.metadata),
                "key": new.idempotency_key, "hash": new.request_hash,
            }).fetchone()
            if created is None:
                conn.rollback()
                return None
            rows = conn.execute(INSERT_JOBS, insert_params(
                runs, owner=new.owner, metadata=new.metadata, max_attempts=max_attempts,
                runtime_limit_seconds=runtime_limit_seconds, queued_cap=queued_cap, key=None, request_hash=None,
                sweep_id=sweep_id)).fetchall()
            try:
                inserted_jobs(rows, queued_cap, len(runs))
            except Exception:
                conn.rollback()
                raise
            conn.execute(f"NOTIFY {QUEUED_CHANNEL}")
            conn.commit()
        return self.get(new.owner, sweep_id)

    def _jobs(self, sweep_id: uuid.UUID) -> list[tuple[Any, ...]]:
        with self.db.connection(autocommit=True) as conn:
            return conn.execute(
                "SELECT id, sweep_cell, status, result FROM jobs WHERE sweep_id = %s ORDER BY sweep_cell, created_at",
                (sweep_id,)).fetchall()

    def _document(self, row: Sequence[Any], jobs: list[tuple[Any, ...]], *, with_cells: bool) -> dict[str, Any]:
        id_, base, grid, seeds, cells, metadata, created_at = row
        counts = Counter(str(status) for _, _, status, _ in jobs)
        doc: dict[str, Any] = {
            "id": id_, "object": "sweep", "status": sweep_status(counts).value, "base": base, "grid": grid,
            "seeds": seeds, "metadata": metadata, "created_at": created_at, "runs": len(jobs),
            "counts": {s.value: counts[s] for s in JobStatus if counts[s]},
        }
        if with_cells:
            by_cell: dict[int, list[tuple[Any, ...]]] = {}
            for job in jobs:
                by_cell.setdefault(job[1], []).append(job)
            doc["cells"] = []
            for cell in cells:
                members = by_cell.get(cell["index"], [])
                done = [job for job in members if job[2] == JobStatus.SUCCEEDED]
                doc["cells"].append({
                    "index": cell["index"], "values": cell["values"], "job_ids": [job[0] for job in members],
                    "n": len(members), "succeeded": len(done),
                    "val_top1": metric_summary(_metric(job[3], "final_metrics") for job in done),
                    "best_val_top1": metric_summary(_metric(job[3], "best_metrics") for job in done),
                })
        return doc

    def get(self, owner: str, sweep_id: uuid.UUID) -> dict[str, Any]:
        with self.db.connection(autocommit=True) as conn:
            row = conn.execute(f"SELECT {_SWEEP_COLUMNS} FROM sweeps WHERE id = %s AND owner = %s",
                               (sweep_id, owner)).fetchone()
        if row is None:
            raise NotFound("sweep not found")
        return self._document(row, self._jobs(sweep_id), with_cells=True)

    def list_sweeps(self, owner: str, *, before: tuple[datetime, uuid.UUID] | None,
                    limit: int) -> list[dict[str, Any]]:
        sql, args = f"SELECT {_SWEEP_COLUMNS} FROM sweeps WHERE owner = %s", list[Any]([owner])
        if before is not None:
            sql += " AND (created_at, id) < (%s, %s)"
            args.extend(before)
        sql += " ORDER BY created_at DESC, id DESC LIMIT %s"
        with self.db.connection(autocommit=True) as conn:
            rows = conn.execute(sql, [*args, limit]).fetchall()
        return [self._document(row, self._jobs(row[0]), with_cells=False) for row in rows]

    def cancel(self, owner: str, sweep_id: uuid.UUID) -> dict[str, Any]:
        """Cancel every job of the sweep that has not ended (each through JobRepository.cancel)."""
        self.get(owner, sweep_id)  # NotFound for another owner's
        for job_id, _, status, _ in self._jobs(sweep_id):
            if JobStatus(status) in ACTIVE and JobStatus(status) != JobStatus.CANCELLING:
                try:
                    self.jobs.cancel(owner, job_id)
                except InvalidState:
                    pass  # it ended meanwhile
        return self.get(owner, sweep_id)

    def delete(self, owner: str, sweep_id: uuid.UUID) -> list[uuid.UUID]:
        """Delete a sweep whose jobs have all ended, with its jobs (refused while any is the teacher of an
        active job); returns the deleted jobs' ids (their files go next)."""
        doc = self.get(owner, sweep_id)
        if doc["status"] not in {s.value for s in TERMINAL}:
            raise InvalidState(f"the sweep is {doc['status']}; cancel it and wait until its jobs end before deleting")
        job_ids = [job[0] for job in self._jobs(sweep_id)]
        self.jobs.refuse_if_teachers_in_use(job_ids)  # before deleting any of them
        for job_id in job_ids:
            self.jobs.delete(owner, job_id)
        with self.db.connection() as conn:
            conn.execute("DELETE FROM sweeps WHERE id = %s AND owner = %s", (sweep_id, owner))
            conn.commit()
        return job_ids
