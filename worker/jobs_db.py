"""Job-row writes of the worker side: fenced by attempt, each transition with a job_events row."""

from __future__ import annotations

import uuid
from typing import Any, Iterable

from sqlalchemy import func, insert, update
from sqlalchemy.orm import Session

from api.tables import Job, JobEvent

RUNNING_STATUSES = ("running", "cancelling")


class FenceLost(RuntimeError):
    """Another attempt owns the job now (or it was ended): this attempt must stop writing at once."""


def record_event(session: Session, job_id: uuid.UUID | str, attempt: int, type_: str, data: dict) -> None:
    session.execute(insert(JobEvent).values(job_id=str(job_id), attempt=attempt, type=type_, data=data))


def fenced_update(
    session: Session, job_id: uuid.UUID | str, attempt: int, values: dict[str, Any],
    statuses: Iterable[str] = RUNNING_STATUSES,
) -> dict | None:
    """UPDATE the job only while this attempt owns it; returns (status, phase, cancel_requested) or None."""
    row = session.execute(
        update(Job)
        .where(Job.id == str(job_id), Job.attempt == attempt, Job.status.in_(tuple(statuses)))
        .values(**values, updated_at=func.now())
        .returning(Job.status, Job.phase, Job.cancel_requested)
    ).first()
    return None if row is None else {"status": row[0], "phase": row[1], "cancel_requested": row[2]}


def require_fenced_update(session: Session, job_id, attempt: int, values: dict[str, Any], **kw) -> dict:
    row = fenced_update(session, job_id, attempt, values, **kw)
    if row is None:
        raise FenceLost(f"job {job_id} is no longer owned by attempt {attempt}")
    return row
