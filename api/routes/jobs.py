"""/jobs routes: submit, list, get, cancel, delete, events, metrics (history and live), artifacts."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from redis.exceptions import RedisError
from sqlalchemy import and_, or_, select, tuple_
from sqlalchemy.orm import Session

from api import jobs_service
from api.artifact_files import file_response
from api.deps import get_session, in_db_thread, require_owner
from api.json_body import finite_or_none, json_response
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode_cursor, encode_cursor
from api.problems import ProblemError
from api.schemas import (
    ArtifactList, EventList, JobList, JobOut, JobStatus, MetricList,
)
from api.sse import ENTRY_ID, job_event_stream, stream_key
from api.tables import Artifact, Job, JobEvent, MetricPoint

router = APIRouter(prefix="/jobs", tags=["jobs"])
Owner = Annotated[str, Depends(require_owner)]
DB = Annotated[Session, Depends(get_session)]
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")

_PROBLEM = {"content": {"application/problem+json": {}}}
_NON_FINITE_NOTE = (
    "JSON has no NaN or Infinity: a metric value that is not a finite number is sent as `null`."
)


async def _read_capped_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProblemError(413, "payload_too_large", f"request body exceeds {limit} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ProblemError(413, "payload_too_large", f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _job_json(job: Job, status_code: int = 200, headers: dict | None = None) -> Response:
    return json_response(jobs_service.job_to_dict(job), status_code, headers)


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    response_class=JSONResponse,
    summary="Submit a distillation job",
    description=(
        'Body: `{"spec": <JobSpec>, "metadata": {"key": "value"}}`. The spec is the same document '
        "`hcd train` accepts. Teacher weights: `{\"source\": \"job\", \"job_id\"}` (a succeeded job of "
        "yours), `{\"source\": \"model\", \"model_id\"}` (an uploaded model) or `{\"source\": \"timm\"}`. "
        "Dataset roots are relative to the server's datasets directory. With `Idempotency-Key`, "
        "a repeat of the same body returns the stored job (header `Idempotent-Replayed: true`); "
        "another body with that key is a 422. " + _NON_FINITE_NOTE
    ),
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/SubmitJobRequest"}}}}},
    responses={400: _PROBLEM, 401: _PROBLEM, 413: _PROBLEM, 415: _PROBLEM, 422: _PROBLEM, 429: _PROBLEM},
)
async def submit_job(
    request: Request,
    owner: Owner,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
):
    settings = request.app.state.settings
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ProblemError(415, "unsupported_media_type", "send the job as application/json")
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise ProblemError(422, "validation_error", "Idempotency-Key must be 1..255 visible ASCII characters",
                           errors=[{"loc": "header.Idempotency-Key", "msg": "1..255 visible ASCII characters"}])
    raw = await _read_capped_body(request, settings.max_request_bytes)
    body = jobs_service.parse_json_body(raw)
    engine = request.app.state.engine
    job, replayed = await in_db_thread(request, jobs_service.create_job, engine, settings, owner, body,
                                       idempotency_key)
    headers = {"Location": f"/jobs/{job['id']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
        return json_response(job, 202, headers)
    # Published after the commit and after the response went out (the client does not wait for
    # Redis); should this process die in between, the sweep publishes the job (published_at NULL).
    response = json_response(job, 202, headers)
    response.background = BackgroundTask(in_db_thread, request, jobs_service.publish, settings, engine, job["id"])
    return response


@router.get("", response_model=JobList, summary="List your jobs, newest first")
def list_jobs(
    owner: Owner,
    session: DB,
    status: Annotated[list[JobStatus] | None, Query(description="Filter; repeat for several.")] = None,
    after: Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
):
    query = select(Job).where(Job.owner == owner)
    if status:
        query = query.where(Job.status.in_(status))
    if after:
        created_iso, job_id = decode_cursor(after, (str, str))
        try:
            created = datetime.fromisoformat(created_iso)
            cursor_id = jobs_service.parse_uuid(job_id)
        except (ValueError, ProblemError):
            raise ProblemError(422, "validation_error", "invalid cursor",
                               errors=[{"loc": "query.after", "msg": "not a cursor from this API"}]) from None
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(created, cursor_id))
    rows = session.execute(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).scalars().all()
    page, has_more = rows[:limit], len(rows) > limit
    cursor = encode_cursor(page[-1].created_at.isoformat(), str(page[-1].id)) if has_more else None
    return {"data": [jobs_service.job_to_dict(j) for j in page], "has_more": has_more, "next_cursor": cursor}


@router.get("/{job_id}", response_model=JobOut, response_class=JSONResponse, summary="Get a job",
            description=_NON_FINITE_NOTE, responses={404: _PROBLEM})
async def get_job(job_id: str, request: Request, owner: Owner):
    # The pollers' hot path: one thread hop, one autocommit SELECT, JSON built directly (the
    # response_model above documents the shape; it is not re-validated here).
    uid = jobs_service.parse_uuid(job_id)
    job = await in_db_thread(request, jobs_service.fetch_owned_job, request.app.state.engine, owner, uid)
    return json_response(job)


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut, summary="Cancel a job",
             responses={404: _PROBLEM, 409: _PROBLEM})
def cancel_job(job_id: str, owner: Owner, session: DB):
    job = jobs_service.cancel_job(session, owner, jobs_service.parse_uuid(job_id))
    return _job_json(job, 202)


@router.delete("/{job_id}", status_code=204, summary="Delete a finished job and its files",
               responses={404: _PROBLEM, 409: _PROBLEM})
def delete_job(job_id: str, request: Request, owner: Owner, session: DB):
    uid = jobs_service.parse_uuid(job_id)
    jobs_service.delete_job(session, request.app.state.settings, owner, uid)
    try:
        request.app.state.redis_sync().delete(stream_key(uid))  # the live tail goes with the job
    except RedisError:
        pass  # it expires on its own
    return Response(status_code=204)


def _owned_job_id(session: Session, owner: str, job_id: str):
    uid = jobs_service.parse_uuid(job_id)
    if session.execute(select(Job.id).where(Job.id == uid, Job.owner == owner)).first() is None:
        raise ProblemError(404, "not_found", "job not found")
    return uid


@router.get("/{job_id}/events", response_model=EventList, summary="State transitions and notable events",
            responses={404: _PROBLEM})
def list_events(
    job_id: str, owner: Owner, session: DB,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
):
    uid = _owned_job_id(session, owner, job_id)
    query = select(JobEvent).where(JobEvent.job_id == uid)
    if after:
        (last,) = decode_cursor(after, (int,))
        query = query.where(JobEvent.id > last)
    rows = session.execute(query.order_by(JobEvent.id).limit(limit + 1)).scalars().all()
    page, has_more = rows[:limit], len(rows) > limit
    return {
        "data": [{"id": e.id, "ts": e.ts, "type": e.type, "attempt": e.attempt, "data": e.data} for e in page],
        "has_more": has_more,
        "next_cursor": encode_cursor(page[-1].id) if has_more else None,
    }


@router.get("/{job_id}/metrics", response_model=MetricList, summary="Metric history (from Postgres)",
            description="Points ordered by (name, step); `after` continues from `next_cursor`. " + _NON_FINITE_NOTE, responses={404: _PROBLEM})
def list_metrics(
    job_id: str, owner: Owner, session: DB,
    name: Annotated[list[str] | None, Query(max_length=64, description="Metric name; repeat for several.")] = None,
    min_step: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    max_step: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
):
    """Points ordered by (name, step); `after` continues from `next_cursor`."""
    uid = _owned_job_id(session, owner, job_id)
    query = select(MetricPoint).where(MetricPoint.job_id == uid)
    if name:
        if not all(jobs_service.storable_text(n) for n in name):
            raise ProblemError(422, "validation_error", "invalid metric name",
                               errors=[{"loc": "query.name", "msg": "must not contain NUL characters"}])
        query = query.where(MetricPoint.name.in_(name[:50]))
    if min_step is not None:
        query = query.where(MetricPoint.step >= min_step)
    if max_step is not None:
        query = query.where(MetricPoint.step <= max_step)
    if after:
        last_name, last_step = decode_cursor(after, (str, int))
        query = query.where(or_(MetricPoint.name > last_name,
                                and_(MetricPoint.name == last_name, MetricPoint.step > last_step)))
    rows = session.execute(query.order_by(MetricPoint.name, MetricPoint.step).limit(limit + 1)).scalars().all()
    page, has_more = rows[:limit], len(rows) > limit
    return {
        "data": [{"name": p.name, "value": finite_or_none(p.value), "step": p.step, "epoch": p.epoch, "timestamp": p.ts}
                 for p in page],
        "has_more": has_more,
        "next_cursor": encode_cursor(page[-1].name, page[-1].step) if has_more else None,
    }


@router.get(
    "/{job_id}/metrics/stream",
    summary="Live metrics and status as Server-Sent Events",
    description=(
        "Events `metrics` ({step, epoch, ts, values}), `status` ({status, phase, attempt}) and a final "
        "`end` ({status}); each event's id is its Redis stream entry id. Resume with the "
        "`Last-Event-ID` header (or `?last_event_id=`). Keep-alive comments while idle."
    ),
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 404: _PROBLEM},
)
async def stream_metrics(
    job_id: str,
    request: Request,
    owner: Owner,
    last_event_id_query: Annotated[str | None, Query(alias="last_event_id", max_length=64)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
):
    state = request.app.state
    uid = jobs_service.parse_uuid(job_id)
    resume_from = (last_event_id or last_event_id_query or "0-0").strip()
    if not ENTRY_ID.match(resume_from):
        raise ProblemError(422, "validation_error", "Last-Event-ID must be a stream entry id like '1700000000000-0'",
                           errors=[{"loc": "header.Last-Event-ID", "msg": "not an event id from this stream"}])

    def read_status() -> str | None:
        with state.sessionmaker() as session:
            return session.execute(select(Job.status).where(Job.id == uid, Job.owner == owner)).scalar_one_or_none()

    if await run_in_threadpool(read_status) is None:
        raise ProblemError(404, "not_found", "job not found")

    async def job_status() -> str | None:
        return await run_in_threadpool(read_status)

    events = job_event_stream(state.redis_async(), uid, resume_from, job_status,
                              keepalive_seconds=state.sse_keepalive_seconds)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{job_id}/artifacts", response_model=ArtifactList, summary="Exported files of a job",
            responses={404: _PROBLEM})
def list_artifacts(job_id: str, owner: Owner, session: DB):
    uid = _owned_job_id(session, owner, job_id)
    rows = session.execute(select(Artifact).where(Artifact.job_id == uid).order_by(Artifact.name)).scalars().all()
    return {"data": [
        {"name": a.name, "size": a.size, "sha256": a.sha256, "media_type": a.media_type,
         "url": f"/jobs/{uid}/artifacts/{a.name}", "created_at": a.created_at}
        for a in rows
    ]}


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download an exported file (ETag = sha256; Range and If-None-Match supported)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, 206: {"description": "Partial content"},
               304: {"description": "Not modified"}, 404: _PROBLEM, 416: _PROBLEM},
)
def download_artifact(job_id: str, name: str, request: Request, owner: Owner, session: DB):
    uid = jobs_service.parse_uuid(job_id)
    if not jobs_service.storable_text(name) or len(name) > 128:
        raise ProblemError(404, "not_found", "artifact not found")
    row = session.execute(
        select(Artifact).join(Job, Job.id == Artifact.job_id)
        .where(Artifact.job_id == uid, Artifact.name == name, Job.owner == owner)
    ).scalar_one_or_none()
    if row is None:
        raise ProblemError(404, "not_found", "artifact not found")
    root = request.app.state.settings.artifacts_dir.resolve()
    path = (root / row.path).resolve()
    if root not in path.parents or not path.is_file():
        raise ProblemError(404, "not_found", "artifact file is missing from the store")
    return file_response(request, path, sha256=row.sha256, media_type=row.media_type, filename=row.name)
