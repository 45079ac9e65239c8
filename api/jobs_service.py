"""Job creation, cancellation and deletion: the rules of the service around the engine's spec."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb
from pydantic import ValidationError
from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.orm import Session

from api.db import driver_connection
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


# The hot paths (GET /jobs/{id}, POST /jobs) read these columns with plain SQL, in this order.
JOB_COLUMNS = (
    "id, status, phase, attempt, max_attempts, cancel_requested, progress, latest_metrics, result, "
    "error_code, error_message, metadata, spec, runtime_limit_seconds, created_at, updated_at, "
    "started_at, finished_at"
)


def job_row_to_dict(row: tuple) -> dict[str, Any]:
    """The job document (as job_to_dict) from a row of JOB_COLUMNS."""
    (id_, status, phase, attempt, max_attempts, cancel_requested, progress, latest_metrics, result,
     error_code, error_message, metadata, spec, runtime_limit_seconds, created_at, updated_at,
     started_at, finished_at) = row
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
    }


_SELECT_OWNED_JOB = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s AND owner = %s"


def fetch_owned_job(engine: Engine, owner: str, job_id: uuid.UUID) -> dict[str, Any]:
    """The job document, in one autocommit round trip; 404 when it is not the owner's."""
    with driver_connection(engine, autocommit=True) as conn:
        row = conn.execute(_SELECT_OWNED_JOB, (job_id, owner)).fetchone()
    if row is None:
        raise ProblemError(404, "not_found", "job not found")
    return job_row_to_dict(row)


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
_SELECT_BY_IDEMPOTENCY_KEY = (
    f"SELECT request_hash, {JOB_COLUMNS} FROM jobs WHERE owner = %s AND idempotency_key = %s"
)
_OWNER_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
_ACTIVE = ", ".join(f"'{status}'" for status in ACTIVE_STATUSES)
# One statement: count the owner's active jobs, insert the job when under the cap (a unique
# conflict - a concurrent request with the same Idempotency-Key - inserts nothing) and its
# 'queued' event. It runs after the owner lock in the same transaction, so under READ COMMITTED
# its snapshot (hence the count) already sees any competing submission committed meanwhile.
_INSERT_JOB = f"""
WITH active AS (
    SELECT count(*) AS n FROM jobs WHERE owner = %(owner)s AND status IN ({_ACTIVE})
), job AS (
    INSERT INTO jobs (id, owner, status, attempt, max_attempts, spec, metadata, progress, latest_metrics,
                      cancel_requested, runtime_limit_seconds, idempotency_key, request_hash)
    SELECT %(id)s, %(owner)s, 'queued', 0, %(max_attempts)s, %(spec)s, %(metadata)s, '{{}}', '{{}}',
           false, %(runtime_limit)s, %(key)s, %(hash)s
    FROM active WHERE active.n < %(cap)s
    ON CONFLICT DO NOTHING
    RETURNING {JOB_COLUMNS}
), event AS (
    INSERT INTO job_events (job_id, type, attempt, data)
    SELECT id, 'status', 0, '{{"status": "queued"}}'::jsonb FROM job
)
SELECT active.n, job.* FROM active LEFT JOIN job ON true
"""


def _replay_or_conflict(conn, owner: str, key: str, digest: str) -> dict[str, Any] | None:
    row = conn.execute(_SELECT_BY_IDEMPOTENCY_KEY, (owner, key)).fetchone()
    if row is None:
        return None
    if row[0] != digest:
        raise ProblemError(
            422, "idempotency_conflict",
            "this Idempotency-Key was already used with a different request body",
        )
    return job_row_to_dict(row[1:])


def _needs_teacher_lookup(spec: JobSpec) -> bool:
    return spec.teacher is not None and spec.teacher.weights.source in ("job", "model", "file")


def create_job(
    engine: Engine, settings: Settings, owner: str, body: Any, idempotency_key: str | None
) -> tuple[dict[str, Any], bool]:
    """Validate and insert a queued job (committed). Returns (job document, replayed).

    The common case is one round trip: BEGIN, owner lock, insert (job + event) and COMMIT are sent
    as one psycopg pipeline.
    """
    digest = request_hash(body)
    if idempotency_key is not None:
        with driver_connection(engine, autocommit=True) as conn:
            existing = _replay_or_conflict(conn, owner, idempotency_key, digest)
        if existing is not None:
            return existing, True
    spec, metadata = parse_submission(body)  # the only validation of the spec
    check_dataset_root(spec, settings)
    if _needs_teacher_lookup(spec):
        with Session(engine) as session:
            check_teacher(session, owner, spec)
    resolved = spec.resolved().model_dump(mode="json")

    params = {
        "id": uuid.uuid4(), "owner": owner, "max_attempts": settings.max_attempts,
        "spec": Jsonb(resolved), "metadata": Jsonb(metadata),
        "runtime_limit": settings.job_runtime_limit_seconds, "key": idempotency_key, "hash": digest,
        "cap": settings.max_active_jobs_per_owner,
    }
    with driver_connection(engine) as conn:
        with conn.pipeline():
            conn.execute(_OWNER_LOCK, (f"hcd-owner:{owner}",))
            cursor = conn.execute(_INSERT_JOB, params)
            conn.commit()
        row = cursor.fetchone()
        active, job = row[0], row[1:]
        if job[0] is not None:
            return job_row_to_dict(job), False
        if active >= settings.max_active_jobs_per_owner:
            raise ProblemError(
                429, "too_many_active_jobs",
                f"you have {active} active jobs (the limit is {settings.max_active_jobs_per_owner}); "
                "wait for one to finish or cancel one",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
    # A unique conflict: a concurrent request with the same Idempotency-Key won the race.
    existing = None
    if idempotency_key is not None:
        with driver_connection(engine, autocommit=True) as conn:
            existing = _replay_or_conflict(conn, owner, idempotency_key, digest)
    if existing is None:  # pragma: no cover - the winner's row must exist after the conflict
        raise ProblemError(409, "conflict", "concurrent submission; retry")
    return existing, True


def publish(settings: Settings, engine: Engine, job_id: uuid.UUID) -> bool:
    """Hand the committed job to the queue, then mark it published; on failure the sweep re-publishes
    it (published_at stays NULL). The same order as worker.publish.publish_job, with the mark done as
    one autocommit UPDATE on the API's pool (an ORM session there costs more CPU than the send)."""
    try:
        from worker.publish import send_job_message  # imported lazily: the worker package may be absent
    except ImportError:
        _log.warning("worker.publish unavailable; job %s left for the sweep", job_id)
        return False
    try:
        if not send_job_message(settings, job_id):
            return False
    except Exception:  # noqa: BLE001 - publishing must never fail a committed submission
        _log.exception("publishing job %s failed; the sweep will retry", job_id)
        return False
    try:
        with driver_connection(engine, autocommit=True) as conn:
            conn.execute(_MARK_PUBLISHED, (job_id,))
    except Exception as err:  # noqa: BLE001 - the message is out; the worst case is a harmless duplicate later
        _log.warning("job %s published but published_at not recorded: %s", job_id, err)
    return True


_MARK_PUBLISHED = "UPDATE jobs SET published_at = now() WHERE id = %s"


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
