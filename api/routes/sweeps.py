"""/sweeps: a grid of spec values x seeds, run as ordinary jobs and summarised per cell."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from api.artifact_files import in_store_thread
from api.bodies import read_body
from api.deps import in_db_thread, require_owner
from api.json_body import json_response
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode_newest_first, newest_first_page
from api.problems import ProblemError
from api.routes.jobs import IDEMPOTENCY_KEY, check_json_content_type
from api.schemas import SweepList, SweepOut
from api.submission import create_sweep, parse_json_body, parse_uuid

router = APIRouter(prefix="/sweeps", tags=["sweeps"])
Owner = Annotated[str, Depends(require_owner)]
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


@router.post(
    "", status_code=202, response_model=SweepOut, response_class=JSONResponse, summary="Submit a sweep",
    description=(
        'Body: `{"base": <JobSpec>, "grid": {"method.temperature": [1, 4]}, "seeds": [0, 1, 2], "metadata": {}}`. '
        "Every run is validated before any job is created (an invalid cell is a 422 whose `errors[].loc` "
        "names it: `cells.3.spec.method.temperature`); at most 256 runs. Each run is an ordinary job with "
        "this sweep's `sweep_id`. `Idempotency-Key` is honoured as for jobs."
    ),
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/SubmitSweepRequest"}}}}},
    responses={400: _PROBLEM, 401: _PROBLEM, 408: _PROBLEM, 413: _PROBLEM, 415: _PROBLEM, 422: _PROBLEM,
               429: _PROBLEM, 503: _PROBLEM},
)
async def submit_sweep(
    request: Request, owner: Owner,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    state = request.app.state
    check_json_content_type(request)
    if idempotency_key is not None and not IDEMPOTENCY_KEY.match(idempotency_key):
        raise ProblemError(422, "validation_error", "Idempotency-Key must be 1..255 visible ASCII characters",
                           errors=[{"loc": "header.Idempotency-Key", "msg": "1..255 visible ASCII characters"}])
    body = parse_json_body(await read_body(request, state.settings.body_idle_timeout_seconds))
    sweep, replayed = await in_db_thread(request, create_sweep, state.sweeps, state.store, state.settings, owner,
                                         body, idempotency_key)
    headers = {"Location": f"/sweeps/{sweep['id']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(sweep, 202, headers)


@router.get("", response_model=SweepList, summary="List your sweeps, newest first (without cells)",
            responses={503: _PROBLEM})
async def list_sweeps(
    request: Request, owner: Owner,
    after: Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Response:
    before = decode_newest_first(after)
    rows = await in_db_thread(request, lambda: request.app.state.sweeps.list_sweeps(owner, before=before,
                                                                                   limit=limit + 1))
    return json_response(newest_first_page(rows, limit))


@router.get("/{sweep_id}", response_model=SweepOut, summary="A sweep: status, and per cell its jobs and metrics",
            responses={404: _PROBLEM, 503: _PROBLEM})
async def get_sweep(sweep_id: str, request: Request, owner: Owner) -> Response:
    uid = parse_uuid(sweep_id, "sweep")
    return json_response(await in_db_thread(request, request.app.state.sweeps.get, owner, uid))


@router.post("/{sweep_id}/cancel", status_code=202, response_model=SweepOut, summary="Cancel every job of a sweep",
             responses={404: _PROBLEM, 503: _PROBLEM})
async def cancel_sweep(sweep_id: str, request: Request, owner: Owner) -> Response:
    uid = parse_uuid(sweep_id, "sweep")
    return json_response(await in_db_thread(request, request.app.state.sweeps.cancel, owner, uid), 202)


@router.delete("/{sweep_id}", status_code=204, summary="Delete a finished sweep with its jobs and their files",
               description="Refused (409) while any of its jobs is active or is the teacher of an active job.",
               responses={404: _PROBLEM, 409: _PROBLEM, 503: _PROBLEM})
async def delete_sweep(sweep_id: str, request: Request, owner: Owner) -> Response:
    uid = parse_uuid(sweep_id, "sweep")
    state = request.app.state
    for job_id in await in_db_thread(request, state.sweeps.delete, owner, uid):
        await in_store_thread(state.store.delete_job, job_id)
        state.status_stream.forget(job_id)
    return Response(status_code=204)
