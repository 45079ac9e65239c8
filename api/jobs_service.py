"""Job creation, cancellation and deletion: the rules of the service around the engine's spec."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from api.problems import ProblemError, pydantic_errors
from api.settings import Settings
from api.tables import ACTIVE_STATUSES, TERMINAL_STATUSES, Artifact, Job, JobEvent, UploadedModel
from hcd_core.spec import JobSpec

_log = logging.getLogger(__name__)

MAX_METADATA_KEYS = 32
MAX_METADATA_KEY_LEN = 64
MAX_METADATA_VALUE_LEN = 512
RETRY_AFTER_SECONDS = 30  # told to owners at their active-job cap
_FIXED_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10}
_SYNTHETIC_DEFAULT_CLASSES = 10  # hcd_core.data.SYNTHETIC_DEFAULTS (not imported: it pulls in torch)


# --------------------------------------------------------------------------- serialisation
def job_to_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "job",
        "status": job.status,
        "phase": job.phase,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "cancel_requested": job.cancel_requested,
        "progress": job.progress or {},
        "latest_metrics": job.latest_metrics or {},
        "result": job.result,
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "metadata": job.job_metadata or {},
        "spec": job.spec,
        "runtime_limit_seconds": job.runtime_limit_seconds,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def parse_uuid(value: str, what: str = "job") -> uuid.UUID:
    """A path id; anything that is not a UUID names no resource, so it is a 404."""
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise ProblemError(404, "not_found", f"{what} not found") from None


# --------------------------------------------------------------------------- submission parsing
def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def storable_text(value: str) -> bool:
    """False for strings Postgres cannot store: NUL characters and lone UTF-16 surrogates."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _all_strings_storable(node: Any) -> bool:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not storable_text(item):
                return False
        elif isinstance(item, dict):
            for key, value in item.items():
                if not storable_text(key):
                    return False
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return True


def parse_json_body(raw: bytes) -> Any:
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, huge ints, NaN, deep nesting
        msg = str(err)[:200] if not isinstance(err, RecursionError) else "nested too deeply"
        raise ProblemError(400, "invalid_json", f"request body is not valid JSON: {msg}") from None
    # Such characters can only arrive as \u escapes; only then is the walk needed.
    if b"\\u" in raw and not _all_strings_storable(body):
        raise ProblemError(400, "invalid_json", "strings must be valid Unicode without NUL (\\u0000) characters")
    return body


def request_hash(body: Any) -> str:
    """sha256 of the canonical form of the submitted document (key order and spacing do not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_metadata(metadata: Any) -> dict[str, str]:
    errors = []
    if not isinstance(metadata, dict):
        raise ProblemError(422, "validation_error", "metadata must be an object of strings",
                           errors=[{"loc": "metadata", "msg": "must be an object of string values"}])
    if len(metadata) > MAX_METADATA_KEYS:
        errors.append({"loc": "metadata", "msg": f"at most {MAX_METADATA_KEYS} keys"})
    for key, value in metadata.items():
        if not (1 <= len(key) <= MAX_METADATA_KEY_LEN):
            errors.append({"loc": f"metadata.{key[:64]}", "msg": f"keys are 1..{MAX_METADATA_KEY_LEN} characters"})
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE_LEN:
            errors.append({"loc": f"metadata.{key[:64]}", "msg": f"values are strings of at most {MAX_METADATA_VALUE_LEN} characters"})
    if errors:
        raise ProblemError(422, "validation_error", "invalid metadata", errors=errors)
    return metadata


def parse_submission(body: Any) -> tuple[JobSpec, dict[str, str]]:
    """The body's spec (validated by the engine's schema) and metadata."""
    if not isinstance(body, dict):
        raise ProblemError(422, "validation_error", 'body must be an object {"spec": {...}, "metadata": {...}}',
                           errors=[{"loc": "body", "msg": "must be a JSON object"}])
    unknown = sorted(set(body) - {"spec", "metadata"})
    if unknown or "spec" not in body:
        errors = [{"loc": k, "msg": "unknown field (the spec goes under 'spec')"} for k in unknown]
        if "spec" not in body:
            errors.append({"loc": "spec", "msg": "field required"})
        raise ProblemError(422, "validation_error", 'body must be {"spec": {...}, "metadata": {...}}', errors=errors)
    metadata = _check_metadata(body.get("metadata") or {})
    raw_spec = body["spec"]
    try:
        spec = JobSpec.model_validate(raw_spec)
    except ValidationError as err:
        errors = pydantic_errors(err.errors(include_url=False), raw_spec)
        names = ", ".join(dict.fromkeys(e["loc"] or "spec" for e in errors))
        raise ProblemError(422, "invalid_spec", f"invalid spec: {names}", errors=errors) from None
    return spec, metadata


# --------------------------------------------------------------------------- service rules
def dataset_num_classes(dataset: dict[str, Any]) -> int | None:
    """Classes of a (resolved spec's) dataset, when known without reading it."""
    name = dataset.get("name")
    if name == "synthetic":
        return dataset.get("num_classes") or _SYNTHETIC_DEFAULT_CLASSES
    return _FIXED_CLASSES.get(name)


def _spec_error(loc: str, msg: str, code: str = "invalid_spec", status: int = 422) -> ProblemError:
    return ProblemError(status, code, f"invalid spec: {loc}: {msg}", errors=[{"loc": loc, "msg": msg}])


def check_dataset_root(spec: JobSpec, settings: Settings) -> None:
    root = spec.dataset.root
    if root is None:
        return
    base = settings.datasets_dir.resolve()
    candidate = Path(root)
    if "\x00" in root:
        raise _spec_error("dataset.root", "invalid path")
    path = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if path != base and base not in path.parents:
        raise _spec_error("dataset.root", "must be a path inside the server's datasets directory (relative paths are taken from there)")


def check_teacher(session: Session, owner: str, spec: JobSpec) -> None:
    """Teacher weights must be a succeeded job or an uploaded model of the caller, matching the spec."""
    teacher = spec.teacher
    if teacher is None:
        return
    weights = teacher.weights
    classes = dataset_num_classes(spec.dataset.model_dump())
    if weights.source == "file":
        raise _spec_error("teacher.weights.source", "'file' is for the local CLI only; use 'job', 'model' or 'timm'")
    if weights.source == "job":
        missing = _spec_error("teacher.weights.job_id", "no such job of yours", code="teacher_not_found")
        try:
            job_id = uuid.UUID(weights.job_id)
        except ValueError:
            raise missing from None
        row = session.execute(
            select(Job.status, Job.spec).where(Job.id == job_id, Job.owner == owner)
        ).one_or_none()
        if row is None:
            raise missing
        if row.status != "succeeded":
            raise _spec_error("teacher.weights.job_id", f"the teacher job has status {row.status!r}, not 'succeeded'")
        has_weights = session.execute(
            select(Artifact.name).where(Artifact.job_id == job_id, Artifact.name == "student.safetensors")
        ).first()
        if has_weights is None:
            raise _spec_error("teacher.weights.job_id", "the teacher job has no exported student.safetensors")
        src_arch = row.spec.get("student", {}).get("arch")
        if src_arch != teacher.arch:
            raise _spec_error("teacher.arch", f"the teacher job trained {src_arch!r}, not {teacher.arch!r}")
        src_classes = dataset_num_classes(row.spec.get("dataset", {}))
        if classes is not None and src_classes is not None and src_classes != classes:
            raise _spec_error("teacher.weights.job_id", f"the teacher job has {src_classes} classes, the dataset {classes}")
    elif weights.source == "model":
        missing = _spec_error("teacher.weights.model_id", "no such uploaded model of yours", code="teacher_not_found")
        try:
            model_id = uuid.UUID(weights.model_id)
        except ValueError:
            raise missing from None
        row = session.execute(
            select(UploadedModel.arch, UploadedModel.num_classes)
            .where(UploadedModel.id == model_id, UploadedModel.owner == owner)
        ).one_or_none()
        if row is None:
            raise missing
        if row.arch != teacher.arch:
            raise _spec_error("teacher.arch", f"the uploaded model is a {row.arch!r}, not {teacher.arch!r}")
        if classes is not None and row.num_classes != classes:
            raise _spec_error("teacher.weights.model_id", f"the uploaded model has {row.num_classes} classes, the dataset {classes}")


# --------------------------------------------------------------------------- create
def _replay_or_conflict(session: Session, owner: str, key: str, digest: str) -> Job | None:
    job = session.execute(
        select(Job).where(Job.owner == owner, Job.idempotency_key == key)
    ).scalar_one_or_none()
    if job is not None and job.request_hash != digest:
        raise ProblemError(
            422, "idempotency_conflict",
            "this Idempotency-Key was already used with a different request body",
        )
    return job


def _lock_and_count_active(session: Session, owner: str) -> int:
    """Takes the owner's submission lock (so the active-job cap holds under concurrency), then counts
    the owner's active jobs. Two statements on purpose: under READ COMMITTED the count must take its
    snapshot after the lock is held, to see a competing submission committed meanwhile."""
    session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"hcd-owner:{owner}"})
    return session.execute(
        select(func.count()).select_from(Job).where(Job.owner == owner, Job.status.in_(ACTIVE_STATUSES))
    ).scalar_one()


def create_job(
    session: Session, settings: Settings, owner: str, body: Any, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Validate and insert a queued job (committed). Returns (job, replayed)."""
    digest = request_hash(body)
    if idempotency_key is not None:
        existing = _replay_or_conflict(session, owner, idempotency_key, digest)
        if existing is not None:
            return existing, True
    spec, metadata = parse_submission(body)
    check_dataset_root(spec, settings)
    check_teacher(session, owner, spec)
    resolved = spec.resolved().model_dump(mode="json")

    active = _lock_and_count_active(session, owner)
    if active >= settings.max_active_jobs_per_owner:
        session.rollback()
        raise ProblemError(
            429, "too_many_active_jobs",
            f"you have {active} active jobs (the limit is {settings.max_active_jobs_per_owner}); "
            "wait for one to finish or cancel one",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    job_id = uuid.uuid4()
    values = dict(
        id=job_id, owner=owner, status="queued", attempt=0, max_attempts=settings.max_attempts,
        spec=resolved, job_metadata=metadata, progress={}, latest_metrics={}, cancel_requested=False,
        runtime_limit_seconds=settings.job_runtime_limit_seconds, idempotency_key=idempotency_key,
        request_hash=digest,
    )
    stmt = insert(Job).values(**values)
    if idempotency_key is not None:
        # A concurrent request with the same key may have won the race: the unique index decides.
        stmt = stmt.on_conflict_do_nothing(
            index_elements=["owner", "idempotency_key"], index_where=text("idempotency_key IS NOT NULL")
        )
    job = session.execute(stmt.returning(Job)).scalar_one_or_none()
    if job is None:
        session.rollback()
        existing = _replay_or_conflict(session, owner, idempotency_key, digest)
        if existing is None:  # pragma: no cover - the winner's row must exist after the conflict
            raise ProblemError(409, "conflict", "concurrent submission; retry")
        return existing, True
    session.execute(insert(JobEvent).values(job_id=job_id, type="status", attempt=0, data={"status": "queued"}))
    session.commit()
    return job, False


def publish(settings: Settings, job_id: uuid.UUID) -> bool:
    """Hand the committed job to the queue; on failure the sweep re-publishes it (published_at NULL)."""
    try:
        from worker.publish import publish_job  # imported lazily: the worker package may be absent
    except ImportError:
        _log.warning("worker.publish unavailable; job %s left for the sweep", job_id)
        return False
    try:
        return bool(publish_job(settings, job_id))
    except Exception:  # noqa: BLE001 - publishing must never fail a committed submission
        _log.exception("publishing job %s failed; the sweep will retry", job_id)
        return False


# --------------------------------------------------------------------------- cancel / delete
def get_owned_job(session: Session, owner: str, job_id: uuid.UUID) -> Job:
    job = session.execute(select(Job).where(Job.id == job_id, Job.owner == owner)).scalar_one_or_none()
    if job is None:
        raise ProblemError(404, "not_found", "job not found")
    return job


def cancel_job(session: Session, owner: str, job_id: uuid.UUID) -> Job:
    """queued -> cancelled now; running -> cancelling (the worker stops); cancelling stays; terminal -> 409."""
    new_status = text("CASE WHEN status = 'queued' THEN 'cancelled' ELSE 'cancelling' END")
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.owner == owner, Job.status.in_(("queued", "running")))
        .values(
            status=new_status,
            cancel_requested=True,
            finished_at=text("CASE WHEN status = 'queued' THEN now() ELSE finished_at END"),
            phase=text("CASE WHEN status = 'queued' THEN NULL ELSE phase END"),
        )
        .returning(Job.status, Job.attempt)
    ).one_or_none()
    if row is not None:
        session.add(JobEvent(job_id=job_id, type="status", attempt=row.attempt,
                             data={"status": row.status, "reason": "cancel requested by user"}))
        session.commit()
        return get_owned_job(session, owner, job_id)
    job = get_owned_job(session, owner, job_id)
    if job.status == "cancelling":
        return job
    raise ProblemError(409, "invalid_state", f"job is {job.status}; only queued or running jobs can be cancelled")


def delete_job(session: Session, settings: Settings, owner: str, job_id: uuid.UUID) -> None:
    """Remove a terminal job: its rows (cascading), exported artifacts and checkpoints."""
    deleted = session.execute(
        delete(Job).where(Job.id == job_id, Job.owner == owner, Job.status.in_(TERMINAL_STATUSES))
        .returning(Job.id)
    ).scalar_one_or_none()
    if deleted is None:
        job = get_owned_job(session, owner, job_id)
        raise ProblemError(409, "invalid_state", f"job is {job.status}; cancel it and wait until it ends before deleting")
    session.commit()
    for root in (settings.artifacts_dir, settings.checkpoints_dir):
        shutil.rmtree(root / str(job_id), ignore_errors=True)
