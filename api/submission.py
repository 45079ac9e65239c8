"""`POST /jobs`: the request body checked field by field, then handed to the repository.

The spec is validated by the engine's own schema (hcd_core.spec), then against the service's rules:
dataset roots stay inside the datasets directory, the job's estimated memory fits the host budget,
and the teacher is a succeeded job or an uploaded model of the same owner (jobs.teachers).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from api.problems import ProblemError
from hcd_core.hashing import sha256_json
from hcd_core.resources import estimate_memory
from hcd_core.spec import JobSpec
from hcd_core.sweep import SweepError, expand
from hcd_core.validation import error_locations
from jobs.datasets import DatasetRef, resolve_dataset
from jobs.errors import InvalidInput
from jobs.jsonutil import all_strings_storable
from jobs.repository import JobRepository, NewJob
from jobs.settings import Settings
from jobs.storage import ArtifactStore
from jobs.sweeps import NewSweep, SweepRepository
from jobs.teachers import TeacherRef, resolve_teacher

MAX_METADATA_KEYS = 32
MAX_METADATA_KEY_LEN = 64
MAX_METADATA_VALUE_LEN = 512
_GIB = 1024**3
_SIGNIFICANT = 0.05  # parts of the memory estimate worth naming in a refusal


def parse_uuid(value: str, what: str = "job") -> uuid.UUID:
    """A path id; anything that is not a UUID names no resource, so it is a 404."""
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise ProblemError(404, "not_found", f"{what} not found") from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(raw: bytes) -> Any:
    """The JSON document of a request body: UTF-8 (RFC 8259), finite numbers, storable strings."""
    try:
        text = raw.decode("utf-8")
        body = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ProblemError(400, "invalid_json", "request body is not UTF-8 encoded JSON") from None
    except (ValueError, RecursionError) as err:  # JSONDecodeError, huge ints, NaN, deep nesting
        msg = str(err)[:200] if not isinstance(err, RecursionError) else "nested too deeply"
        raise ProblemError(400, "invalid_json", f"request body is not valid JSON: {msg}") from None
    # NUL and lone surrogates can only arrive as \u escapes; only then is the walk needed.
    if "\\u" in text and not all_strings_storable(body):
        raise ProblemError(400, "invalid_json", "strings must be valid Unicode without NUL (\\u0000) characters")
    return body


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
            errors.append({"loc": f"metadata.{key[:64]}",
                           "msg": f"values are strings of at most {MAX_METADATA_VALUE_LEN} characters"})
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
        errors = [{"loc": k or '""', "msg": "unknown field (the spec goes under 'spec')"} for k in unknown]
        if "spec" not in body:
            errors.append({"loc": "spec", "msg": "field required"})
        raise ProblemError(422, "validation_error", 'body must be {"spec": {...}, "metadata": {...}}', errors=errors)
    metadata = _check_metadata(body.get("metadata") or {})
    raw_spec = body["spec"]
    try:
        spec = JobSpec.model_validate(raw_spec)
    except ValidationError as err:
        errors = [{**e, "loc": e["loc"] or "spec"} for e in error_locations(err.errors(include_url=False), raw_spec)]
        names = ", ".join(dict.fromkeys(e["loc"] for e in errors))
        raise ProblemError(422, "invalid_spec", f"invalid spec: {names}", errors=errors) from None
    return spec, metadata


def _spec_error(loc: str, msg: str) -> InvalidInput:
    return InvalidInput(f"invalid spec: {loc}: {msg}", errors=[{"loc": loc, "msg": msg}])


def check_dataset_root(spec: JobSpec, settings: Settings) -> None:
    root = spec.dataset.root
    if root is None:
        return
    if "\x00" in root:
        raise _spec_error("dataset.root", "invalid path")
    base = settings.datasets_dir.resolve()
    candidate = Path(root)
    path = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if path != base and base not in path.parents:
        raise _spec_error("dataset.root", "must be a path inside the server's datasets directory "
                                          "(relative paths are taken from there)")


def check_memory(spec: JobSpec, settings: Settings) -> None:
    """Refuse a job whose data and batches alone would need more host memory than the budget; the
    error names the fields that drive the significant parts of the estimate, the largest first."""
    estimate = estimate_memory(spec)
    budget = settings.max_job_memory_gb * _GIB
    if estimate.total_bytes <= budget:
        return
    by_field: dict[str, list[tuple[str, int]]] = {}
    for part in estimate.parts:
        if part.bytes >= estimate.total_bytes * _SIGNIFICANT:
            for loc in part.fields:
                by_field.setdefault(loc, []).append((part.name, part.bytes))
    ranked = sorted(by_field.items(), key=lambda item: -sum(b for _, b in item[1]))
    total = f"the job needs at least {estimate.total_bytes / _GIB:.1f} GiB, the server allows " \
            f"{settings.max_job_memory_gb:g} GiB"
    errors = [{"loc": loc, "msg": f"drives {', '.join(f'{name} ({b / _GIB:.1f} GiB)' for name, b in parts)}; {total}"}
              for loc, parts in ranked]
    raise InvalidInput(f"the job would need more memory than this server allows: reduce "
                       f"{', '.join(loc for loc, _ in ranked)}", code="job_too_large", errors=errors)


def create_job(repo: JobRepository, store: ArtifactStore, settings: Settings, owner: str, body: Any,
               idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
    """Validate and insert a queued job (committed). Returns (job document, replayed)."""
    spec, metadata = parse_submission(body)  # first: only a valid body has finite numbers to hash
    digest = sha256_json(body)
    if idempotency_key is not None and (found := _replay(repo, owner, idempotency_key, digest)) is not None:
        return found, True
    check_dataset_root(spec, settings)
    check_memory(spec, settings)
    teacher = dataset = None
    with repo.db.session() as session:
        dataset = resolve_dataset(session, store, owner, spec)
        if spec.teacher is not None and spec.teacher.weights.source != "timm":
            teacher = resolve_teacher(session, store, owner, spec, allow_pending=True,
                                      num_classes=dataset.num_classes if dataset else None)
    new = NewJob(owner=owner, spec=spec.resolved().model_dump(mode="json"), metadata=metadata, request_hash=digest,
                 idempotency_key=idempotency_key, teacher_job_id=teacher.job_id if teacher else None,
                 teacher_model_id=teacher.model_id if teacher else None, dataset_id=dataset.id if dataset else None)
    job = repo.create(new, max_attempts=settings.max_attempts, runtime_limit_seconds=settings.job_runtime_limit_seconds,
                      queued_cap=settings.max_queued_jobs_per_owner)
    if job is not None:
        return job, False
    # An Idempotency-Key conflict: a concurrent request with the same key won the race.
    found = _replay(repo, owner, idempotency_key or "", digest)
    if found is None:  # pragma: no cover - the winner's row must exist after the conflict
        raise ProblemError(409, "conflict", "concurrent submission; retry")
    return found, True


def _replay(repo: JobRepository, owner: str, key: str, digest: str) -> dict[str, Any] | None:
    found = repo.find_replay(owner, key)
    if found is None:
        return None
    stored_hash, job = found
    if stored_hash != digest:
        raise ProblemError(422, "idempotency_conflict",
                           "this Idempotency-Key was already used with a different request body")
    return job


# --------------------------------------------------------------------------- sweeps
def _prefixed(err: InvalidInput, prefix: str) -> InvalidInput:
    """The same error about one run of a sweep: its locations under `cells.N.spec.`."""
    errors = [{**e, "loc": f"{prefix}.{e['loc']}"} for e in err.errors]
    names = ", ".join(dict.fromkeys(e["loc"] for e in errors))
    return InvalidInput(f"invalid sweep: {names}", code=err.code, errors=errors)


def _parse_sweep(body: Any) -> tuple[dict[str, Any], dict[str, list[Any]], list[int], dict[str, str]]:
    if not isinstance(body, dict):
        raise ProblemError(422, "validation_error", 'body must be an object {"base", "grid", "seeds", "metadata"}',
                           errors=[{"loc": "body", "msg": "must be a JSON object"}])
    unknown = sorted(set(body) - {"base", "grid", "seeds", "metadata"})
    errors = [{"loc": k or '""', "msg": "unknown field"} for k in unknown]
    base, grid, seeds = body.get("base"), body.get("grid", {}), body.get("seeds")
    if not isinstance(base, dict):
        errors.append({"loc": "base", "msg": "the base spec (an object) is required"})
    if not isinstance(grid, dict):
        errors.append({"loc": "grid", "msg": 'an object {"dotted.spec.path": [values]}'})
    if seeds is None and isinstance(base, dict):
        seeds = [base.get("seed", 42)]
    if not isinstance(seeds, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
        errors.append({"loc": "seeds", "msg": "a list of integer seeds"})
    if errors:
        raise ProblemError(422, "validation_error", "invalid sweep", errors=errors)
    metadata = _check_metadata(body.get("metadata") or {})
    return base, grid, seeds, metadata  # type: ignore[return-value]  # each checked just above


def create_sweep(sweeps: SweepRepository, store: ArtifactStore, settings: Settings, owner: str, body: Any,
                 idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
    """Validate every run of the grid, then create the sweep and its jobs. Returns (sweep, replayed)."""
    base, grid, seeds, metadata = _parse_sweep(body)
    try:
        cells = expand(base, grid, seeds)
    except SweepError as err:
        raise InvalidInput(f"invalid sweep: {err}", code="invalid_sweep", errors=err.errors) from None
    digest = sha256_json(body)
    if idempotency_key is not None and (found := sweeps.find_replay(owner, idempotency_key)) is not None:
        if found[0] != digest:
            raise ProblemError(422, "idempotency_conflict",
                               "this Idempotency-Key was already used with a different request body")
        return found[1], True
    runs: list[NewJob] = []
    teachers: dict[str, TeacherRef | None] = {}
    datasets: dict[str, DatasetRef | None] = {}
    with sweeps.db.session() as session:
        for cell in cells:
            for spec in cell.specs:
                try:
                    check_dataset_root(spec, settings)
                    check_memory(spec, settings)
                    data_key = str(spec.dataset.dataset_id)
                    if data_key not in datasets:
                        datasets[data_key] = resolve_dataset(session, store, owner, spec)
                    dataset = datasets[data_key]
                    # The teacher's check depends on the dataset (its class count): one per pair.
                    ref_key = (spec.teacher.model_dump_json() if spec.teacher else "") + spec.dataset.model_dump_json()
                    if ref_key not in teachers:
                        teachers[ref_key] = (resolve_teacher(session, store, owner, spec, allow_pending=True,
                                                             num_classes=dataset.num_classes if dataset else None)
                                             if spec.teacher and spec.teacher.weights.source != "timm" else None)
                except InvalidInput as err:
                    raise _prefixed(err, f"cells.{cell.index}.spec") from None
                teacher = teachers[ref_key]
                runs.append(NewJob(owner=owner, spec=spec.resolved().model_dump(mode="json"), metadata=metadata,
                                   sweep_cell=cell.index, teacher_job_id=teacher.job_id if teacher else None,
                                   teacher_model_id=teacher.model_id if teacher else None,
                                   dataset_id=dataset.id if dataset else None))
    new = NewSweep(owner=owner, base=base, grid=grid, seeds=seeds, metadata=metadata, request_hash=digest,
                   idempotency_key=idempotency_key,
                   cells=[{"index": cell.index, "values": cell.values} for cell in cells])
    doc = sweeps.create(new, runs, max_attempts=settings.max_attempts,
                        runtime_limit_seconds=settings.job_runtime_limit_seconds,
                        queued_cap=settings.max_queued_jobs_per_owner)
    if doc is not None:
        return doc, False
    found = sweeps.find_replay(owner, idempotency_key or "")
    if found is None:  # pragma: no cover - the winner's row must exist after the conflict
        raise ProblemError(409, "conflict", "concurrent submission; retry")
    return found[1], True
