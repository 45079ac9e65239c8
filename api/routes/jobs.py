"""/jobs routes: submit, list, get, cancel, delete, events, metrics (history and live), artifacts.

Thin: each route checks its request, calls the repository in a database thread (api.deps.in_db_thread)
and shapes the answer.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from api.artifact_files import blob_response, in_store_thread, redirect_response
from api.bodies import read_body
from api.deps import in_db_thread, require_owner
from api.json_body import json_response
from api.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    decode_cursor,
    decode_newest_first,
    encode_cursor,
    newest_first_page,
)
from api.problems import ProblemError
from api.schemas import ArtifactList, EventList, JobList, JobOut, MetricList
from api.sse import ENTRY_ID, job_event_stream
from api.submission import create_job, parse_json_body, parse_uuid
from jobs.jsonutil import finite_or_none, storable_text
from jobs.status import JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])
Owner = Annotated[str, Depends(require_owner)]
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")

_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
_NON_FINITE_NOTE = (
    "JSON has no NaN or Infinity: a metric value that is not a finite number is sent as `null`."
)


def check_json_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise ProblemError(415, "unsupported_media_type", "send the request body as application/json")


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
        "Dataset roots are relative to the server's datasets directory. A job whose data and batches "
        "would need more memory than the server allows is refused (`job_too_large`). With `Idempotency-Key`, "
        "a repeat of the same body returns the stored job (header `Idempotent-Replayed: true`); "
        "another body with that key is a 422. " + _NON_FINITE_NOTE
    ),
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/SubmitJobRequest"}}}}},
    responses={400: _PROBLEM, 401: _PROBLEM, 408: _PROBLEM, 413: _PROBLEM, 415: _PROBLEM, 422: _PROBLEM,
               429: _PROBLEM, 503: _PROBLEM},
)
async def submit_job(
    request: Request,
    owner: Owner,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    state = request.app.state
    check_json_content_type(request)
    if idempotency_key is not None and not IDEMPOTENCY_KEY.match(idempotency_key):
        raise ProblemError(422, "validation_error", "Idempotency-Key must be 1..255 visible ASCII characters",
                           errors=[{"loc": "header.Idempotency-Key", "msg": "1..255 visible ASCII characters"}])
    body = parse_json_body(await read_body(request, state.settings.body_idle_timeout_seconds))
    job, replayed = await in_db_thread(request, create_job, state.repo, state.store, state.settings, owner, body,
                                       idempotency_key, hot=True)
    headers = {"Location": f"/jobs/{job['id']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    # No publishing here: the commit woke the workers' outbox relay (NOTIFY), which sends the message.
    return json_response(job, 202, headers)


@router.get("", response_model=JobList, summary="List your jobs, newest first", responses={503: _PROBLEM})
async def list_jobs(
    request: Request,
    owner: Owner,
    status: Annotated[list[JobStatus] | None, Query(description="Filter; repeat for several.")] = None,
    sweep_id: Annotated[str | None, Query(max_length=64, description="Only the runs of this sweep.")] = None,
    after: Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Response:
    before = decode_newest_first(after)
    sweep = parse_uuid(sweep_id, "sweep") if sweep_id else None
    rows = await in_db_thread(request, lambda: request.app.state.repo.list_jobs(
        owner, statuses=status or (), sweep_id=sweep, before=before, limit=limit + 1))
    return json_response(newest_first_page(rows, limit))


@router.get("/{job_id}", response_model=JobOut, response_class=JSONResponse, summary="Get a job",
            description=_NON_FINITE_NOTE, responses={404: _PROBLEM, 503: _PROBLEM})
async def get_job(job_id: str, request: Request, owner: Owner) -> Response:
    # The pollers' hot path: one thread hop, one autocommit SELECT, JSON built directly (the
    # response_model above documents the shape; it is not re-validated here).
    uid = parse_uuid(job_id)
    return json_response(await in_db_thread(request, request.app.state.repo.get, owner, uid, hot=True))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut, summary="Cancel a job",
             responses={404: _PROBLEM, 409: _PROBLEM, 503: _PROBLEM})
async def cancel_job(job_id: str, request: Request, owner: Owner) -> Response:
    uid = parse_uuid(job_id)
    return json_response(await in_db_thread(request, request.app.state.repo.cancel, owner, uid), 202)


@router.delete("/{job_id}", status_code=204, summary="Delete a finished job and its files",
               description="Refused (409 `teacher_in_use`) while a queued or running job uses it as its teacher.",
               responses={404: _PROBLEM, 409: _PROBLEM, 503: _PROBLEM})
async def delete_job(job_id: str, request: Request, owner: Owner) -> Response:
    uid = parse_uuid(job_id)
    state = request.app.state
    await in_db_thread(request, state.repo.delete, owner, uid)
    await in_store_thread(state.store.delete_job, uid)
    state.status_stream.forget(uid)  # the live tail goes with the job
    return Response(status_code=204)


@router.get("/{job_id}/events", response_model=EventList, summary="State transitions and notable events",
            responses={404: _PROBLEM, 503: _PROBLEM})
async def list_events(
    job_id: str, request: Request, owner: Owner,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
) -> Response:
    uid = parse_uuid(job_id)
    last = decode_cursor(after, (int,))[0] if after else None
    rows = await in_db_thread(request, lambda: request.app.state.repo.events(owner, uid, after=last, limit=limit + 1))
    page, has_more = rows[:limit], len(rows) > limit
    return json_response({
        "data": [{"id": e.id, "ts": e.ts, "type": e.type, "attempt": e.attempt, "data": e.data} for e in page],
        "has_more": has_more,
        "next_cursor": encode_cursor(page[-1].id) if has_more else None,
    })


@router.get("/{job_id}/metrics", response_model=MetricList, summary="Metric history (from Postgres)",
            description="Points ordered by (name, step); `after` continues from `next_cursor`. " + _NON_FINITE_NOTE,
            responses={404: _PROBLEM, 503: _PROBLEM})
async def list_metrics(
    job_id: str, request: Request, owner: Owner,
    name: Annotated[list[str] | None, Query(max_length=64, description="Metric name; repeat for several.")] = None,
    min_step: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    max_step: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    uid = parse_uuid(job_id)
    if name and not all(storable_text(n) for n in name):
        raise ProblemError(422, "validation_error", "invalid metric name",
                           errors=[{"loc": "query.name", "msg": "must not contain NUL characters"}])
    position = None
    if after:
        last_name, last_step = decode_cursor(after, (str, int))
        position = (last_name, last_step)
    rows = await in_db_thread(request, lambda: request.app.state.repo.metrics(
        owner, uid, names=(name or [])[:50], min_step=min_step, max_step=max_step, after=position, limit=limit + 1))
    page, has_more = rows[:limit], len(rows) > limit
    return json_response({
        "data": [{"name": p.name, "value": finite_or_none(p.value), "step": p.step, "epoch": p.epoch,
                  "timestamp": p.ts} for p in page],
        "has_more": has_more,
        "next_cursor": encode_cursor(page[-1].name, page[-1].step) if has_more else None,
    })


@router.get(
    "/{job_id}/metrics/stream",
    summary="Live metrics and status as Server-Sent Events",
    description=(
        "Events `metrics` ({step, epoch, epochs, total_steps, ts, values}), `status` ({status, phase, attempt, "
        "and step, epoch, epochs, total_steps once training started}) and a final `end` ({status}); each "
        "event's id is its Redis stream entry id (`<ms since the epoch>-<seq>`: when it was added). Resume with the "
        "`Last-Event-ID` header (or `?last_event_id=`). Keep-alive comments while idle."
    ),
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 404: _PROBLEM, 503: _PROBLEM},
)
async def stream_metrics(
    job_id: str,
    request: Request,
    owner: Owner,
    last_event_id_query: Annotated[str | None, Query(alias="last_event_id", max_length=64)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    state = request.app.state
    uid = parse_uuid(job_id)
    resume_from = (last_event_id or last_event_id_query or "0-0").strip()
    if not ENTRY_ID.match(resume_from):
        raise ProblemError(422, "validation_error", "Last-Event-ID must be a stream entry id like '1700000000000-0'",
                           errors=[{"loc": "header.Last-Event-ID", "msg": "not an event id from this stream"}])
    if await in_db_thread(request, state.repo.status_of, owner, uid) is None:
        raise ProblemError(404, "not_found", "job not found")

    async def job_status() -> JobStatus | None:
        return await in_db_thread(request, state.repo.status_of, owner, uid)

    events = job_event_stream(state.redis_async(), uid, resume_from, job_status,
                              keepalive_seconds=state.sse_keepalive_seconds)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{job_id}/artifacts", response_model=ArtifactList, summary="Exported files of a job",
            responses={404: _PROBLEM, 503: _PROBLEM})
async def list_artifacts(job_id: str, request: Request, owner: Owner) -> Response:
    uid = parse_uuid(job_id)
    rows = await in_db_thread(request, request.app.state.repo.artifacts, owner, uid)
    return json_response({"data": [
        {"name": a.name, "size": a.size, "sha256": a.sha256, "media_type": a.media_type,
         "url": f"/jobs/{uid}/artifacts/{a.name}", "created_at": a.created_at}
        for a in rows
    ]})


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download an exported file (ETag = sha256; Range and If-None-Match supported)",
    description=(
        "Streamed from the artifact store. With `redirect=true` and an object store (S3), the answer is a "
        "307 to a presigned URL of the object, valid for a few minutes (`HCD_PRESIGNED_URL_SECONDS`); with "
        "the local store the file is served as without it."
    ),
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, 206: {"description": "Partial content"},
               304: {"description": "Not modified"},
               307: {"description": "`redirect=true` with an object store: `Location` is a presigned URL"},
               404: _PROBLEM, 416: _PROBLEM, 503: _PROBLEM},
)
async def download_artifact(
    job_id: str, name: str, request: Request, owner: Owner,
    redirect: Annotated[bool, Query(description="answer 307 with a presigned URL of the store, when it has one")]
    = False,
) -> Response:
    uid = parse_uuid(job_id)
    if not storable_text(name) or len(name) > 128:
        raise ProblemError(404, "not_found", "artifact not found")
    store = request.app.state.store
    row = await in_db_thread(request, request.app.state.repo.artifact, owner, uid, name)
    if redirect:
        url = await in_store_thread(store.artifact_url, row.path, filename=row.name)
        if url is not None:
            return redirect_response(url, sha256=row.sha256)
    blob = await in_store_thread(store.open_artifact, row.path)
    if blob is None:
        raise ProblemError(404, "not_found", "artifact file is missing from the store")
    return blob_response(request, blob, sha256=row.sha256, media_type=row.media_type, filename=row.name)
