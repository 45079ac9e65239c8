"""The job repository: the only place a job's state changes, and the queries the service reads with.

Every state change is one transaction that checks its transition against `jobs.status.TRANSITIONS`
(the SQL fences are derived from it), records a `job_events` row, and, once committed, is handed
to `notify` (the live stream). Changes made by an attempt are fenced by its attempt number: a stale
attempt changes nothing and learns it (`FenceLost` or a None result).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from psycopg.types.json import Jsonb
from sqlalchemy import and_, delete, func, insert, literal_column, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from hcd_core.types import MetricPoint
from jobs.db import Database
from jobs.errors import FenceLost, InUse, InvalidInput, InvalidState, LimitExceeded, NotFound
from jobs.jsonutil import json_safe
from jobs.status import ACTIVE, OWNED, TERMINAL, JobPhase, JobStatus, check_transition, ordered, sources, sql_in
from jobs.storage import StoredFile
from jobs.streams import Transition
from jobs.tables import Artifact, Job, JobEvent, UploadedDataset, UploadedModel
from jobs.tables import MetricPoint as MetricRow

QUEUED_CHANNEL = "hcd_job_queued"  # NOTIFY'd when a job becomes queued: the outbox relay wakes at once
METRIC_BATCH_ROWS = 2000
_OWNED = tuple(s.value for s in ordered(OWNED))
# A teacher job a new student may name: it succeeded, or it may still (the student waits for it).
_TEACHER_USABLE = ACTIVE | {JobStatus.SUCCEEDED}
# A queued job a worker may take: not waiting for its teacher.
_READY = (Job.status == JobStatus.QUEUED.value, Job.phase.is_distinct_from(JobPhase.WAITING_FOR_TEACHER.value))
_READY_SQL = " AND ".join(str(c.compile(compile_kwargs={"literal_binds": True})) for c in _READY)
_ACTIVE = tuple(s.value for s in ordered(ACTIVE))

UploadT = TypeVar("UploadT", UploadedModel, UploadedDataset)

# The hot paths read these columns with plain SQL, in this order (see job_document).
JOB_COLUMNS = (
    "id, status, phase, attempt, max_attempts, cancel_requested, progress, latest_metrics, result, "
    "error_code, error_message, metadata, spec, runtime_limit_seconds, created_at, updated_at, "
    "started_at, finished_at, sweep_id"
)


def job_document(row: Sequence[Any]) -> dict[str, Any]:
    """The job as the API shows it, from a row of JOB_COLUMNS."""
    (id_, status, phase, attempt, max_attempts, cancel_requested, progress, latest_metrics, result,
     error_code, error_message, metadata, spec, runtime_limit_seconds, created_at, updated_at,
     started_at, finished_at, sweep_id) = row
    return {
        "id": id_,
        "object": "job",
        "status": status,
        "phase": phase,
        "attempt": attempt,
        "max_attempts": max_attempts,
        "cancel_requested": cancel_requested,
        "progress": progress or {},
        "latest_metrics": latest_metrics or {},
        "result": result,
        "error": {"code": error_code, "message": error_message} if error_code else None,
        "metadata": metadata or {},
        "spec": spec,
        "runtime_limit_seconds": runtime_limit_seconds,
        "created_at": created_at,
        "updated_at": updated_at,
        "started_at": started_at,
        "finished_at": finished_at,
        "sweep_id": sweep_id,
    }


@dataclass(frozen=True)
class NewJob:
    owner: str
    spec: dict[str, Any]  # the resolved spec
    metadata: dict[str, str]
    request_hash: str | None = None
    idempotency_key: str | None = None
    teacher_job_id: uuid.UUID | None = None
    teacher_model_id: uuid.UUID | None = None
    dataset_id: uuid.UUID | None = None
    sweep_cell: int | None = None


@dataclass(frozen=True)
class Lease:
    """What a heartbeat learns: the job's status and whether its owner asked to cancel it."""

    status: JobStatus
    cancel_requested: bool


@dataclass(frozen=True)
class AttemptJob:
    """What an attempt needs to know about its job."""

    id: uuid.UUID
    owner: str
    status: JobStatus
    attempt: int
    spec: dict[str, Any]
    started_at: datetime | None
    runtime_limit_seconds: int


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: succeeded, failed (with an error) or cancelled."""

    status: JobStatus
    error_code: str | None = None
    error_message: str | None = None


class ReferenceGone(InvalidInput):
    """The teacher (or the dataset) a submission names was deleted while the job was being created."""

    def __init__(self, what: str = "teacher") -> None:
        loc = "teacher.weights" if what == "teacher" else "dataset.dataset_id"
        reason = f"the {what} was deleted while the job was being submitted"
        super().__init__(f"invalid spec: {loc}: {reason}", code=f"{what}_not_found",
                         errors=[{"loc": loc, "msg": reason}])


def insert_params(new: Sequence[NewJob], *, owner: str, metadata: dict[str, str], max_attempts: int,
                   runtime_limit_seconds: int, queued_cap: int, key: str | None, request_hash: str | None,
                   sweep_id: uuid.UUID | None) -> dict[str, Any]:
    return {
        "ids": [uuid.uuid4() for _ in new], "specs": [Jsonb(n.spec) for n in new],
        "cells": [n.sweep_cell for n in new], "teacher_jobs": [n.teacher_job_id for n in new],
        "teacher_models": [n.teacher_model_id for n in new], "datasets": [n.dataset_id for n in new],
        "count": len(new),
        "owner": owner, "metadata": Jsonb(metadata), "max_attempts": max_attempts,
        "runtime_limit": runtime_limit_seconds, "cap": queued_cap, "key": key, "hash": request_hash,
        "sweep": sweep_id,
    }


def inserted_jobs(rows: Sequence[Sequence[Any]], queued_cap: int, count: int) -> list[dict[str, Any]]:
    """The job documents INSERT_JOBS returned; raises when it inserted nothing for a reason."""
    queued, gone = rows[0][0], rows[0][1]
    jobs = [job_document(row[2:]) for row in rows if row[2] is not None]
    if jobs:
        return jobs
    if gone is not None:
        raise ReferenceGone(gone)
    if queued + count > queued_cap:
        raise LimitExceeded(
            f"you have {queued} queued jobs and the limit is {queued_cap}; wait for some to start or cancel some",
            code="too_many_queued_jobs")
    return []  # an Idempotency-Key conflict


def _lease_expiry(seconds: float) -> Any:
    """now() + lease, computed by Postgres (one clock for every worker and the sweep)."""
    return literal_column(f"now() + make_interval(secs => {float(seconds)})")


def _event(job_id: uuid.UUID | str, attempt: int, type_: str, data: dict[str, Any]) -> Any:
    return insert(JobEvent).values(job_id=uuid.UUID(str(job_id)), attempt=attempt, type=type_, data=data)


# Inserts the new jobs (arrays, one element per job) unless the owner's queued jobs would exceed the
# cap. It runs after the owner's advisory lock in the same transaction, so under READ COMMITTED the
# count already sees any competing submission committed meanwhile. The teacher jobs, models and uploaded
# datasets the specs name are locked FOR KEY SHARE (they cannot be deleted until this transaction ends;
# one deleted just before makes `usable.gone` name it). A teacher job that has not succeeded yet is
# fine: the student waits.
INSERT_JOBS = f"""
WITH new AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(specs)s::jsonb[], %(cells)s::int[], %(teacher_jobs)s::uuid[],
                         %(teacher_models)s::uuid[], %(datasets)s::uuid[])
                  AS new(id, spec, cell, teacher_job, teacher_model, dataset)
), queued AS (
    SELECT count(*) AS n FROM jobs WHERE owner = %(owner)s AND {sql_in([JobStatus.QUEUED])}
), teacher_jobs AS (
    SELECT id, status FROM jobs WHERE id IN (SELECT teacher_job FROM new) AND owner = %(owner)s
      AND {sql_in(_TEACHER_USABLE)} FOR KEY SHARE
), teacher_models AS (
    SELECT id FROM uploaded_models WHERE id IN (SELECT teacher_model FROM new) AND owner = %(owner)s FOR KEY SHARE
), datasets AS (
    SELECT id FROM datasets WHERE id IN (SELECT dataset FROM new) AND owner = %(owner)s FOR KEY SHARE
), usable AS (
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM new
                     WHERE (teacher_job IS NOT NULL AND teacher_job NOT IN (SELECT id FROM teacher_jobs))
                        OR (teacher_model IS NOT NULL AND teacher_model NOT IN (SELECT id FROM teacher_models)))
            THEN 'teacher'
        WHEN EXISTS (SELECT 1 FROM new WHERE dataset IS NOT NULL AND dataset NOT IN (SELECT id FROM datasets))
            THEN 'dataset'
    END AS gone
), job AS (
    INSERT INTO jobs (id, owner, status, phase, attempt, max_attempts, spec, metadata, progress, latest_metrics,
                      cancel_requested, runtime_limit_seconds, idempotency_key, request_hash,
                      teacher_job_id, teacher_model_id, dataset_id, sweep_id, sweep_cell)
    SELECT new.id, %(owner)s, '{JobStatus.QUEUED.value}',
           CASE WHEN tj.status IS NULL OR tj.status = '{JobStatus.SUCCEEDED.value}' THEN NULL
                ELSE '{JobPhase.WAITING_FOR_TEACHER.value}' END,
           0, %(max_attempts)s, new.spec, %(metadata)s, '{{}}', '{{}}', false, %(runtime_limit)s, %(key)s,
           %(hash)s, new.teacher_job, new.teacher_model, new.dataset, %(sweep)s, new.cell
    FROM new LEFT JOIN teacher_jobs tj ON tj.id = new.teacher_job CROSS JOIN queued CROSS JOIN usable
    WHERE queued.n + %(count)s <= %(cap)s AND usable.gone IS NULL
    ON CONFLICT DO NOTHING
    RETURNING {JOB_COLUMNS}
), event AS (
    INSERT INTO job_events (job_id, type, attempt, data)
    SELECT id, 'status', 0, jsonb_build_object('status', status, 'phase', phase) FROM job
)
SELECT queued.n, usable.gone, job.* FROM queued CROSS JOIN usable LEFT JOIN job ON true
"""
OWNER_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
# One claim at a time (claims are rare: one per job start), so the fair order and the per-owner running
# cap see every other claim.
_CLAIM_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('hcd-claim', 0))"
_SELECT_BY_IDEMPOTENCY_KEY = f"SELECT request_hash, {JOB_COLUMNS} FROM jobs WHERE owner = %s AND idempotency_key = %s"
_SELECT_OWNED_JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s AND owner = %s"

# What a user's cancel does, by status (the rest cannot be cancelled).
_CANCEL = {JobStatus.QUEUED: JobStatus.CANCELLED, JobStatus.RUNNING: JobStatus.CANCELLING}
for _source, _target in [*_CANCEL.items(), (JobStatus.QUEUED, JobStatus.RUNNING)]:  # the claim
    check_transition(_source, _target)
_CANCEL_STATUS = "CASE " + " ".join(f"WHEN status = '{s.value}' THEN '{t.value}'" for s, t in _CANCEL.items()) + " END"
_ENDS_AT_ONCE = sql_in(s for s, t in _CANCEL.items() if t in TERMINAL)
_CANCEL_FINISHED_AT = f"CASE WHEN {_ENDS_AT_ONCE} THEN now() ELSE finished_at END"
_CANCEL_PHASE = f"CASE WHEN {_ENDS_AT_ONCE} THEN NULL ELSE phase END"


class JobRepository:
    """Jobs, their events, metrics and artifacts in Postgres."""

    def __init__(self, db: Database, *, notify: Callable[[Transition], None] | None = None):
        self.db = db
        self.notify = notify or (lambda change: None)

    # ------------------------------------------------------------------ helpers
    def _announce(self, changes: Iterable[Transition]) -> None:
        for change in changes:
            self.notify(change)

    @staticmethod
    def _fenced_update(session: Session, job_id: uuid.UUID | str, attempt: int, values: dict[str, Any],
                       statuses: Iterable[JobStatus] = OWNED) -> tuple[Lease, str] | None:
        """UPDATE the job only while `attempt` owns it in one of `statuses`; (lease, owner) or None."""
        row = session.execute(
            update(Job)
            .where(Job.id == uuid.UUID(str(job_id)), Job.attempt == attempt,
                   Job.status.in_([s.value for s in statuses]))
            .values(**values, updated_at=func.now())
            .returning(Job.status, Job.cancel_requested, Job.owner)
        ).first()
        return None if row is None else (Lease(JobStatus(row[0]), bool(row[1])), str(row[2]))

    @classmethod
    def _consequences(cls, session: Session, job_id: uuid.UUID, owner: str, was: JobStatus,
                      now: JobStatus) -> list[Transition]:
        """What a job's change means for the others (same transaction): a freed running slot wakes the
        owner's next queued job; a teacher that succeeded releases its waiting students; one that failed
        or was cancelled fails them (`teacher_failed`), and their own students in turn."""
        changes: list[Transition] = []
        if was in OWNED and now not in OWNED:
            cls._wake(session, select(Job.id).where(Job.owner == owner, *_READY).order_by(Job.created_at).limit(1))
        if now == JobStatus.SUCCEEDED:
            released = cls._wake(session, select(Job.id).where(
                Job.teacher_job_id == job_id, Job.status == JobStatus.QUEUED.value,
                Job.phase == JobPhase.WAITING_FOR_TEACHER.value), phase_done=True)
            for student in released:
                session.execute(_event(student, 0, "teacher_ready", {"teacher_job_id": str(job_id)}))
                changes.append(Transition(str(student), JobStatus.QUEUED, 0))
        elif now in TERMINAL:
            students = session.execute(
                select(Job.id, Job.owner).where(Job.teacher_job_id == job_id, Job.status == JobStatus.QUEUED.value)
                .with_for_update()
            ).all()
            for student, student_owner in students:
                check_transition(JobStatus.QUEUED, JobStatus.FAILED)
                message = f"its teacher job {job_id} ended {now.value}"
                session.execute(update(Job).where(Job.id == student).values(
                    status=JobStatus.FAILED.value, phase=None, error_code="teacher_failed", error_message=message,
                    finished_at=func.now(), updated_at=func.now()))
                failed = {"status": JobStatus.FAILED.value, "error_code": "teacher_failed", "error_message": message}
                session.execute(_event(student, 0, "status", failed))
                changes.append(Transition(str(student), JobStatus.FAILED, 0))
                changes += cls._consequences(session, student, student_owner, JobStatus.QUEUED, JobStatus.FAILED)
        return changes

    @staticmethod
    def _wake(session: Session, which: Any, *, phase_done: bool = False) -> list[uuid.UUID]:
        """Mark queued jobs unpublished (and NOTIFY): a relay sends them a message now."""
        values: dict[str, Any] = {"published_at": None}
        if phase_done:
            values["phase"] = None
        ids = list(session.execute(
            update(Job).where(Job.id.in_(which))
            .values(**values).returning(Job.id)
        ).scalars())
        if ids:
            session.execute(text(f"NOTIFY {QUEUED_CHANNEL}"))
        return ids

    # ------------------------------------------------------------------ create
    def find_replay(self, owner: str, idempotency_key: str) -> tuple[str, dict[str, Any]] | None:
        """(request hash, job) of the owner's job submitted with this Idempotency-Key, if any."""
        with self.db.connection(autocommit=True) as conn:
            row = conn.execute(_SELECT_BY_IDEMPOTENCY_KEY, (owner, idempotency_key)).fetchone()
        return None if row is None else (row[0], job_document(row[1:]))

    def create(self, new: NewJob, *, max_attempts: int, runtime_limit_seconds: int,
               queued_cap: int) -> dict[str, Any] | None:
        """Insert a queued job (committed, relays woken) and return it; None on an Idempotency-Key conflict
        (a concurrent request with the same key won). Raises LimitExceeded at the owner's cap of queued
        jobs and ReferenceGone when the named teacher or dataset stopped being usable meanwhile.

        One round trip in the common case: BEGIN, owner lock, insert (job + event), NOTIFY and COMMIT
        go out as one psycopg pipeline.
        """
        with self.db.connection() as conn:
            with conn.pipeline():
                conn.execute(OWNER_LOCK, (f"hcd-owner:{new.owner}",))
                cursor = conn.execute(INSERT_JOBS, insert_params(
                    [new], owner=new.owner, metadata=new.metadata, max_attempts=max_attempts,
                    runtime_limit_seconds=runtime_limit_seconds, queued_cap=queued_cap,
                    key=new.idempotency_key, request_hash=new.request_hash, sweep_id=None))
                conn.execute(f"NOTIFY {QUEUED_CHANNEL}")
                conn.commit()
            rows = cursor.fetchall()
        jobs = inserted_jobs(rows, queued_cap, 1)
        return jobs[0] if jobs else None

    # ------------------------------------------------------------------ reads (API)
    def get(self, owner: str, job_id: uuid.UUID) -> dict[str, Any]:
        """The owner's job, in one autocommit round trip; NotFound otherwise."""
        with self.db.connection(autocommit=True) as conn:
            row = conn.execute(_SELECT_OWNED_JOB, (job_id, owner)).fetchone()
        if row is None:
            raise NotFound("job not found")
        return job_document(row)

    def status_of(self, owner: str, job_id: uuid.UUID) -> JobStatus | None:
        with self.db.connection(autocommit=True) as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = %s AND owner = %s", (job_id, owner)).fetchone()
        return None if row is None else JobStatus(row[0])

    def list_jobs(self, owner: str, *, statuses: Sequence[JobStatus] = (), sweep_id: uuid.UUID | None = None,
                  before: tuple[datetime, uuid.UUID] | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The owner's jobs, newest first, after the keyset position `before` (created_at, id)."""
        sql = f"SELECT {JOB_COLUMNS} FROM jobs WHERE owner = %s"
        args: list[Any] = [owner]
        if sweep_id is not None:
            sql += " AND sweep_id = %s"
            args.append(sweep_id)
        if statuses:
            sql += " AND status = ANY(%s)"
            args.append([s.value for s in statuses])
        if before is not None:
            sql += " AND (created_at, id) < (%s, %s)"
            args.extend(before)
        sql += " ORDER BY created_at DESC, id DESC LIMIT %s"
        args.append(limit)
        with self.db.connection(autocommit=True) as conn:
            return [job_document(row) for row in conn.execute(sql, args).fetchall()]

    def _require_owned(self, session: Session, owner: str, job_id: uuid.UUID) -> None:
        if session.execute(select(Job.id).where(Job.id == job_id, Job.owner == owner)).first() is None:
            raise NotFound("job not found")

    def events(self, owner: str, job_id: uuid.UUID, *, after: int | None, limit: int) -> list[JobEvent]:
        with self.db.session() as session:
            self._require_owned(session, owner, job_id)
            query = select(JobEvent).where(JobEvent.job_id == job_id)
            if after is not None:
                query = query.where(JobEvent.id > after)
            return list(session.execute(query.order_by(JobEvent.id).limit(limit)).scalars())

    def metrics(self, owner: str, job_id: uuid.UUID, *, names: Sequence[str] = (), min_step: int | None = None,
                max_step: int | None = None, after: tuple[str, int] | None = None,
                limit: int = 100) -> list[MetricRow]:
        """Metric points ordered by (name, step), after the keyset position `after`."""
        with self.db.session() as session:
            self._require_owned(session, owner, job_id)
            query = select(MetricRow).where(MetricRow.job_id == job_id)
            if names:
                query = query.where(MetricRow.name.in_(list(names)))
            if min_step is not None:
                query = query.where(MetricRow.step >= min_step)
            if max_step is not None:
                query = query.where(MetricRow.step <= max_step)
            if after is not None:
                query = query.where(or_(MetricRow.name > after[0],
                                        and_(MetricRow.name == after[0], MetricRow.step > after[1])))
            return list(session.execute(query.order_by(MetricRow.name, MetricRow.step).limit(limit)).scalars())

    def artifacts(self, owner: str, job_id: uuid.UUID) -> list[Artifact]:
        with self.db.session() as session:
            self._require_owned(session, owner, job_id)
            return list(session.execute(
                select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)).scalars())

    def artifact(self, owner: str, job_id: uuid.UUID, name: str) -> Artifact:
        with self.db.session() as session:
            row = session.execute(
                select(Artifact).join(Job, Job.id == Artifact.job_id)
                .where(Artifact.job_id == job_id, Artifact.name == name, Job.owner == owner)
            ).scalar_one_or_none()
        if row is None:
            raise NotFound("artifact not found")
        return row

    # ------------------------------------------------------------------ user actions
    def cancel(self, owner: str, job_id: uuid.UUID) -> dict[str, Any]:
        """queued -> cancelled now; running -> cancelling (the attempt stops); cancelling stays; else 409."""
        with self.db.session() as session:
            row = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.owner == owner, Job.status.in_([s.value for s in _CANCEL]))
                .values(status=text(_CANCEL_STATUS), finished_at=text(_CANCEL_FINISHED_AT),
                        phase=text(_CANCEL_PHASE), cancel_requested=True, updated_at=func.now())
                .returning(Job.status, Job.attempt)
            ).one_or_none()
            changes: list[Transition] = []
            if row is not None:
                session.execute(_event(job_id, row.attempt, "status",
                                       {"status": row.status, "reason": "cancel requested by user"}))
                changes = [Transition(str(job_id), JobStatus(row.status), row.attempt)]
                changes += self._consequences(session, job_id, owner, JobStatus.QUEUED, JobStatus(row.status))
        self._announce(changes)
        job = self.get(owner, job_id)
        if row is None and job["status"] != JobStatus.CANCELLING:
            raise InvalidState(f"job is {job['status']}; only queued or running jobs can be cancelled")
        return job

    def delete(self, owner: str, job_id: uuid.UUID) -> None:
        """Remove a finished job's rows (events, metrics and artifact records cascade).

        Refused while the job runs, or while an active job uses it as its teacher. The row is locked
        first, then the students are looked up in a new statement: a submission naming this teacher
        holds a key-share lock until it commits, so it is either seen here or sees the job gone.
        """
        with self.db.session() as session:
            status = session.execute(
                select(Job.status).where(Job.id == job_id, Job.owner == owner).with_for_update()
            ).scalar_one_or_none()
            if status is None:
                raise NotFound("job not found")
            if JobStatus(status) in ACTIVE:
                raise InvalidState(f"job is {status}; cancel it and wait until it ends before deleting")
            self._refuse_if_teacher_in_use(session, Job.teacher_job_id == job_id, "job")
            session.execute(delete(Job).where(Job.id == job_id))

    def refuse_if_teachers_in_use(self, job_ids: Sequence[uuid.UUID]) -> None:
        """InUse when an active job outside `job_ids` distils from one of them."""
        with self.db.session() as session:
            self._refuse_if_teacher_in_use(
                session, and_(Job.teacher_job_id.in_(list(job_ids)), Job.id.not_in(list(job_ids))), "job")

    @staticmethod
    def _refuse_if_teacher_in_use(session: Session, condition: Any, what: str) -> None:
        students = session.execute(
            select(Job.id).where(condition, Job.status.in_(_ACTIVE)).order_by(Job.created_at).limit(5)
        ).scalars().all()
        if students:
            ids = ", ".join(str(s) for s in students)
            raise InUse(f"this {what} is the teacher of active jobs ({ids}); wait for them or cancel them",
                        code="teacher_in_use")

    # ------------------------------------------------------------------ uploads (models, datasets)
    def _add_upload(self, row: UploadT) -> UploadT:
        with self.db.session() as session:
            session.add(row)
            session.flush()
            session.refresh(row)
        return row

    def _list_uploads(self, kind: type[UploadT], owner: str, before: tuple[datetime, uuid.UUID] | None,
                      limit: int) -> list[UploadT]:
        """An owner's uploads of one kind, newest first, after the cursor `before`."""
        query = select(kind).where(kind.owner == owner)
        if before is not None:
            query = query.where(tuple_(kind.created_at, kind.id) < tuple_(*before))
        with self.db.session() as session:
            return list(session.execute(query.order_by(kind.created_at.desc(), kind.id.desc()).limit(limit)).scalars())

    def _get_upload(self, kind: type[UploadT], owner: str, upload_id: uuid.UUID, what: str) -> UploadT:
        with self.db.session() as session:
            row = session.execute(select(kind).where(kind.id == upload_id, kind.owner == owner)).scalar_one_or_none()
        if row is None:
            raise NotFound(f"{what} not found")
        return row

    # ------------------------------------------------------------------ uploaded models
    def add_model(self, model: UploadedModel) -> UploadedModel:
        return self._add_upload(model)

    def list_models(self, owner: str, *, before: tuple[datetime, uuid.UUID] | None, limit: int) -> list[UploadedModel]:
        return self._list_uploads(UploadedModel, owner, before, limit)

    def get_model(self, owner: str, model_id: uuid.UUID) -> UploadedModel:
        return self._get_upload(UploadedModel, owner, model_id, "model")

    def delete_model(self, owner: str, model_id: uuid.UUID) -> str:
        """Remove an uploaded model's row (refused while an active job uses it); returns its file's key."""
        with self.db.session() as session:
            key = session.execute(
                select(UploadedModel.path).where(UploadedModel.id == model_id, UploadedModel.owner == owner)
                .with_for_update()
            ).scalar_one_or_none()
            if key is None:
                raise NotFound("model not found")
            self._refuse_if_teacher_in_use(session, Job.teacher_model_id == model_id, "model")
            session.execute(delete(UploadedModel).where(UploadedModel.id == model_id))
        return key

    # ------------------------------------------------------------------ uploaded datasets
    def add_dataset(self, dataset: UploadedDataset) -> UploadedDataset:
        return self._add_upload(dataset)

    def list_datasets(self, owner: str, *, before: tuple[datetime, uuid.UUID] | None,
                      limit: int) -> list[UploadedDataset]:
        return self._list_uploads(UploadedDataset, owner, before, limit)

    def get_dataset(self, owner: str, dataset_id: uuid.UUID) -> UploadedDataset:
        return self._get_upload(UploadedDataset, owner, dataset_id, "dataset")

    def delete_dataset(self, owner: str, dataset_id: uuid.UUID) -> str:
        """Remove a dataset's row (refused while an active job reads it); returns its archive's key."""
        with self.db.session() as session:
            key = session.execute(
                select(UploadedDataset.path)
                .where(UploadedDataset.id == dataset_id, UploadedDataset.owner == owner).with_for_update()
            ).scalar_one_or_none()
            if key is None:
                raise NotFound("dataset not found")
            readers = session.execute(
                select(Job.id).where(Job.dataset_id == dataset_id, Job.status.in_(_ACTIVE))
                .order_by(Job.created_at).limit(5)
            ).scalars().all()
            if readers:
                raise InUse(f"this dataset is read by active jobs ({', '.join(str(j) for j in readers)}); wait for "
                            "them or cancel them", code="dataset_in_use")
            session.execute(delete(UploadedDataset).where(UploadedDataset.id == dataset_id))
        return key

    # ------------------------------------------------------------------ an attempt's life (worker)
    def claim_next(
        self, worker_id: str, lease_seconds: float, running_cap: int, max_devices: int = 1
    ) -> tuple[uuid.UUID, int] | None:
        """queued -> running for the next job by the fair order; (job id, attempt), or None when no job
        can start. Owners take turns: the owner with the fewest running jobs goes first, then the one
        served least recently, then the oldest job; so one owner's long queue never starves another's
        single job. An owner runs at most `running_cap` jobs at once; a job waiting for its teacher is
        skipped, and so is a job that needs more devices (`training.devices`) than `max_devices`."""
        with self.db.session() as session:
            session.execute(text(_CLAIM_LOCK))
            row = session.execute(text(f"""
                WITH running AS (
                    SELECT owner, count(*) AS n FROM jobs WHERE {sql_in(OWNED)} GROUP BY owner
                ), served AS (
                    SELECT owner, max(started_at) AS last FROM jobs
                    WHERE owner IN (SELECT owner FROM jobs WHERE {_READY_SQL}) GROUP BY owner
                ), candidate AS (
                    SELECT jobs.id FROM jobs
                    LEFT JOIN running ON running.owner = jobs.owner
                    LEFT JOIN served ON served.owner = jobs.owner
                    WHERE {_READY_SQL} AND coalesce(running.n, 0) < :cap
                        AND coalesce((jobs.spec -> 'training' ->> 'devices')::int, 1) <= :devices
                    ORDER BY coalesce(running.n, 0), served.last NULLS FIRST, jobs.created_at, jobs.id
                    LIMIT 1 FOR UPDATE OF jobs SKIP LOCKED
                )
                UPDATE jobs SET status = :to_status, attempt = attempt + 1, worker_id = :worker, phase = NULL,
                    progress = '{{}}', lease_expires_at = now() + make_interval(secs => :lease),
                    cancel_requested = false, started_at = coalesce(started_at, now()), updated_at = now()
                FROM candidate WHERE jobs.id = candidate.id
                RETURNING jobs.id, jobs.attempt
            """), {"cap": running_cap, "to_status": JobStatus.RUNNING.value, "worker": worker_id,
                   "lease": float(lease_seconds), "devices": max_devices}).one_or_none()
            if row is None:
                return None
            job_id, attempt = row
            session.execute(_event(job_id, attempt, "status", {"status": JobStatus.RUNNING.value,
                                                               "worker_id": worker_id}))
        self._announce([Transition(str(job_id), JobStatus.RUNNING, attempt)])
        return job_id, int(attempt)

    def load_attempt(self, job_id: uuid.UUID) -> AttemptJob | None:
        with self.db.session() as session:
            job = session.execute(select(Job).where(Job.id == job_id)).scalar_one_or_none()
        if job is None:
            return None
        return AttemptJob(job.id, job.owner, JobStatus(job.status), job.attempt, job.spec, job.started_at,
                          job.runtime_limit_seconds)

    def renew_lease(self, job_id: uuid.UUID | str, attempt: int, lease_seconds: float) -> Lease | None:
        """The heartbeat: extend the lease and read the cancel flag; None once the attempt lost the job."""
        with self.db.session() as session:
            row = self._fenced_update(session, job_id, attempt, {"lease_expires_at": _lease_expiry(lease_seconds)})
        return None if row is None else row[0]

    def is_owner(self, job_id: uuid.UUID | str, attempt: int) -> bool:
        """Whether `attempt` still owns the job (the fence checked before a checkpoint is renamed)."""
        with self.db.connection(autocommit=True) as conn:
            row = conn.execute("SELECT 1 FROM jobs WHERE id = %s AND attempt = %s AND status = ANY(%s)",
                               (uuid.UUID(str(job_id)), attempt, list(_OWNED))).fetchone()
        return row is not None

    def set_phase(self, job_id: uuid.UUID | str, attempt: int, phase: JobPhase) -> None:
        """Record the attempt's phase (and an event); raises FenceLost."""
        with self.db.session() as session:
            row = self._fenced_update(session, job_id, attempt, {"phase": phase.value})
            if row is None:
                raise FenceLost(f"job {job_id} is no longer owned by attempt {attempt}")
            session.execute(_event(job_id, attempt, "phase", {"phase": phase.value}))
        self._announce([Transition(str(job_id), row[0].status, attempt, phase.value)])

    def add_event(self, job_id: uuid.UUID | str, attempt: int, type_: str, data: dict[str, Any]) -> None:
        """A notable event that changes no state (e.g. `resumed` from a checkpoint)."""
        with self.db.session() as session:
            session.execute(_event(job_id, attempt, type_, data))

    def write_progress(self, job_id: uuid.UUID | str, attempt: int, *, points: Sequence[MetricPoint],
                       latest_metrics: dict[str, float], progress: dict[str, Any] | None) -> None:
        """Metric points (idempotent per (name, step)) and the job's progress, in one fenced transaction."""
        values: dict[str, Any] = {"latest_metrics": json_safe(latest_metrics)}
        if progress is not None:
            values["progress"] = progress
        with self.db.session() as session:
            if self._fenced_update(session, job_id, attempt, values) is None:
                raise FenceLost(f"job {job_id} is no longer owned by attempt {attempt}")
            rows = [{"job_id": uuid.UUID(str(job_id)), "name": p.name, "step": int(p.step), "value": float(p.value),
                     "epoch": int(p.epoch), "ts": datetime.fromtimestamp(float(p.ts), tz=timezone.utc)}
                    for p in points]
            for start in range(0, len(rows), METRIC_BATCH_ROWS):
                session.execute(
                    pg_insert(MetricRow).on_conflict_do_nothing(index_elements=["job_id", "name", "step"]),
                    rows[start:start + METRIC_BATCH_ROWS],
                )

    def finish(self, job_id: uuid.UUID | str, attempt: int, outcome: Outcome, *,
               result: dict[str, Any] | None = None, files: Sequence[StoredFile] = (),
               progress: dict[str, Any] | None = None) -> bool:
        """The attempt's end: succeeded, failed or cancelled (with its files); False when fenced out."""
        target = outcome.status
        values: dict[str, Any] = {"status": target.value, "phase": None, "lease_expires_at": None,
                                  "finished_at": func.now()}
        data: dict[str, Any] = {"status": target.value}
        if outcome.error_code:
            values.update(error_code=outcome.error_code, error_message=outcome.error_message)
            data.update(error_code=outcome.error_code, error_message=outcome.error_message)
        if result is not None:
            values["result"] = json_safe(result)
        if progress is not None:
            values["progress"] = progress
        with self.db.session() as session:
            row = session.execute(
                select(Job.status, Job.owner)
                .where(Job.id == uuid.UUID(str(job_id)), Job.attempt == attempt,
                       Job.status.in_([s.value for s in OWNED & sources(target)]))
                .with_for_update()
            ).one_or_none()
            if row is None:
                return False
            session.execute(update(Job).where(Job.id == uuid.UUID(str(job_id))).values(**values, updated_at=func.now()))
            if files:
                stmt = pg_insert(Artifact).values([
                    {"job_id": uuid.UUID(str(job_id)), "name": f.name, "path": f.key, "size": f.size,
                     "sha256": f.sha256, "media_type": f.media_type} for f in files])
                session.execute(stmt.on_conflict_do_update(
                    index_elements=["job_id", "name"],
                    set_={c: stmt.excluded[c] for c in ("path", "size", "sha256", "media_type")}))
            session.execute(_event(job_id, attempt, "status", data))
            changes = [Transition(str(job_id), target, attempt)]
            changes += self._consequences(session, uuid.UUID(str(job_id)), row.owner, JobStatus(row.status), target)
        self._announce(changes)
        return True

    def hand_back(self, job_id: uuid.UUID | str, attempt: int, *, reason: str,
                  error: tuple[str, str] | None = None) -> JobStatus | None:
        """The attempt gives the job up: back to the queue (a cancelling job ends cancelled).

        With `error` (code, message) the lost attempt counts like a lost worker: once the job used all
        its attempts it fails with that error instead. None when the attempt no longer owns the job.
        """
        with self.db.session() as session:
            row = session.execute(
                select(Job.status, Job.max_attempts, Job.owner)
                .where(Job.id == uuid.UUID(str(job_id)), Job.attempt == attempt, Job.status.in_(_OWNED))
                .with_for_update()
            ).one_or_none()
            if row is None:
                return None
            changes = self._give_up(session, uuid.UUID(str(job_id)), row.owner, JobStatus(row.status), attempt,
                                    row.max_attempts, reason=reason, error=error)
        self._announce(changes)
        return changes[0].status

    @classmethod
    def _give_up(cls, session: Session, job_id: uuid.UUID, owner: str, status: JobStatus, attempt: int,
                 max_attempts: int, *, reason: str, error: tuple[str, str] | None) -> list[Transition]:
        """The transitions when a job's attempt ended without finishing (row locked by the caller): the
        job's own first, then its consequences for other jobs."""
        if status == JobStatus.CANCELLING:
            target = JobStatus.CANCELLED
        elif error is not None and attempt >= max_attempts:
            target = JobStatus.FAILED
        else:
            target = JobStatus.QUEUED
        check_transition(status, target)
        values: dict[str, Any] = {"status": target.value, "phase": None, "lease_expires_at": None,
                                  "worker_id": None, "updated_at": func.now()}
        data: dict[str, Any] = {"status": target.value, "reason": reason}
        if target == JobStatus.QUEUED:
            values.update(cancel_requested=False, published_at=None)
            data["attempts_used"] = attempt
            session.execute(_event(job_id, attempt, "requeued", data))
            session.execute(text(f"NOTIFY {QUEUED_CHANNEL}"))
        else:
            values["finished_at"] = func.now()
            if target == JobStatus.FAILED and error is not None:
                values.update(error_code=error[0], error_message=error[1])
                data.update(error_code=error[0], error_message=error[1])
            session.execute(_event(job_id, attempt, "status", data))
        session.execute(update(Job).where(Job.id == job_id).values(**values))
        return [Transition(str(job_id), target, attempt), *cls._consequences(session, job_id, owner, status, target)]

    # ------------------------------------------------------------------ housekeeping (every worker)
    def requeue_expired(self, *, limit: int = 200) -> list[Transition]:
        """Jobs whose lease expired lost their worker: re-queued while attempts remain, else failed
        `worker_lost` (a cancelling one ends cancelled). Rows are taken with SKIP LOCKED."""
        with self.db.session() as session:
            rows = session.execute(
                select(Job.id, Job.owner, Job.status, Job.attempt, Job.max_attempts)
                .where(Job.status.in_(_OWNED), Job.lease_expires_at < func.now())
                .order_by(Job.lease_expires_at).limit(limit).with_for_update(skip_locked=True)
            ).all()
            changes = []
            for job_id, owner, status, attempt, max_attempts in rows:
                message = f"the worker stopped renewing its lease; {attempt} of {max_attempts} attempts used"
                changes += self._give_up(session, job_id, owner, JobStatus(status), attempt, max_attempts,
                                         reason="lease_expired", error=("worker_lost", message))
        self._announce(changes)
        return [c for c in changes if c.job_id in {str(r[0]) for r in rows}]

    def take_unpublished(self, *, limit: int = 200) -> list[str]:
        """Queued jobs never handed to the queue, marked published now (so no other relay takes them)."""
        with self.db.session() as session:
            ids = session.execute(text(
                "UPDATE jobs SET published_at = now() WHERE id IN ("
                f" SELECT id FROM jobs WHERE {_READY_SQL} AND published_at IS NULL"
                " ORDER BY created_at LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING id"
            ), {"n": limit}).scalars().all()
        return [str(i) for i in ids]

    def take_stale_published(self, grace_seconds: float, *, limit: int = 200) -> list[str]:
        """Queued jobs published more than `grace_seconds` ago (their message may be lost), marked
        published again now; the caller resends those whose message is not waiting in the queue."""
        with self.db.session() as session:
            ids = session.execute(text(
                "UPDATE jobs SET published_at = now() WHERE id IN ("
                f" SELECT id FROM jobs WHERE {_READY_SQL}"
                " AND published_at < now() - make_interval(secs => :grace)"
                " ORDER BY created_at LIMIT :n FOR UPDATE SKIP LOCKED) RETURNING id"
            ), {"grace": float(grace_seconds), "n": limit}).scalars().all()
        return [str(i) for i in ids]

    def mark_unpublished(self, job_ids: Sequence[str]) -> None:
        """The queue refused these messages: leave the jobs for the next relay round."""
        if not job_ids:
            return
        with self.db.session() as session:
            session.execute(
                update(Job).where(Job.id.in_([uuid.UUID(j) for j in job_ids]), Job.status == JobStatus.QUEUED.value)
                .values(published_at=None))
