"""/models: upload a teacher as safetensors (checked against its architecture), list, get, delete."""

from __future__ import annotations

import json
import math
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.artifact_files import in_store_thread
from api.bodies import body_chunks
from api.deps import in_db_thread, require_owner
from api.json_body import json_response
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode_newest_first, newest_first_page
from api.schemas import ModelList, ModelOut
from api.submission import parse_uuid
from api.uploads import check_fits_model, invalid_upload, keep_upload, receive_upload
from hcd_core.models import ALLOWED_ARCHS
from jobs.tables import UploadedModel

router = APIRouter(prefix="/models", tags=["models"])
Owner = Annotated[str, Depends(require_owner)]
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}

_UPLOAD_FORM = {
    "type": "object",
    "required": ["file", "arch", "num_classes"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "safetensors weights (nothing else)"},
        "arch": {"type": "string", "enum": list(ALLOWED_ARCHS)},
        "num_classes": {"type": "integer", "minimum": 1, "maximum": 100000},
        "image_size": {"type": "integer", "minimum": 16, "maximum": 1024,
                       "description": "input size it was trained at (needed for ViT-like models)"},
        "mean": {"type": "string", "description": "normalisation mean, JSON list or 'a,b,c'"},
        "std": {"type": "string", "description": "normalisation std, JSON list or 'a,b,c'"},
    },
}


def model_to_dict(m: UploadedModel) -> dict[str, Any]:
    return {
        "id": m.id, "object": "model", "arch": m.arch, "num_classes": m.num_classes,
        "image_size": m.image_size, "mean": m.mean, "std": m.std, "filename": m.filename,
        "size": m.size, "sha256": m.sha256, "created_at": m.created_at,
    }


def _int_field(fields: dict[str, str], name: str, low: int, high: int, required: bool) -> int | None:
    raw = fields.get(name)
    if raw is None or raw == "":
        if required:
            raise invalid_upload(f"form field {name!r} is required", name)
        return None
    try:
        value = int(raw)
    except ValueError:
        raise invalid_upload(f"{name} must be an integer", name) from None
    if not low <= value <= high:
        raise invalid_upload(f"{name} must be between {low} and {high}", name)
    return value


def _triple(fields: dict[str, str], name: str, positive: bool) -> list[float] | None:
    raw = fields.get(name)
    if not raw:
        return None
    try:
        values = json.loads(raw) if raw.lstrip().startswith("[") else [float(v) for v in raw.split(",")]
        values = [float(v) for v in values]
    except (ValueError, TypeError):
        raise invalid_upload(f"{name} must be three numbers", name) from None
    if len(values) != 3 or not all(math.isfinite(v) and abs(v) <= 1e3 for v in values) or (
        positive and not all(v > 0 for v in values)
    ):
        raise invalid_upload(f"{name} must be three finite numbers{' > 0' if positive else ''}", name)
    return values


@router.post(
    "",
    status_code=201,
    response_model=ModelOut,
    summary="Upload a teacher model (safetensors only)",
    description="multipart/form-data with `file` (safetensors), `arch` (allow-listed), `num_classes`, "
                "optional `image_size`, `mean`, `std`. Pickled files are rejected, nothing is unpickled.",
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _UPLOAD_FORM}}}},
    responses={401: _PROBLEM, 408: _PROBLEM, 413: _PROBLEM, 415: _PROBLEM, 422: _PROBLEM, 503: _PROBLEM},
)
async def upload_model(request: Request, owner: Owner) -> Response:
    state = request.app.state
    settings, store = state.settings, state.store
    parsed = await receive_upload(request.headers.get("content-type", ""),
                                  body_chunks(request, settings.body_idle_timeout_seconds),
                                  store.upload_staging_dir(), settings.max_upload_bytes)
    assert parsed.file_path is not None
    try:
        fields = parsed.fields
        arch = fields.get("arch", "")
        if arch not in ALLOWED_ARCHS:
            allowed = ", ".join(ALLOWED_ARCHS)
            raise invalid_upload(f"arch {arch[:100]!r} is not allowed; choose one of: {allowed}", "arch")
        num_classes = _int_field(fields, "num_classes", 1, 100_000, True)
        assert num_classes is not None
        image_size = _int_field(fields, "image_size", 16, 1024, False)
        mean, std = _triple(fields, "mean", False), _triple(fields, "std", True)
        await run_in_threadpool(check_fits_model, parsed.file_path, arch, num_classes, image_size)
        model_id = uuid.uuid4()
        row = await keep_upload(request, parsed.file_path, model_id, ".safetensors", lambda key: state.repo.add_model(
            UploadedModel(
                id=model_id, owner=owner, arch=arch, num_classes=num_classes, image_size=image_size,
                mean=mean, std=std, filename=parsed.filename or "model.safetensors",
                path=key, size=parsed.size, sha256=parsed.sha256,
            )))
    finally:
        parsed.file_path.unlink(missing_ok=True)
    body = ModelOut.model_validate(model_to_dict(row)).model_dump(mode="json")
    return json_response(body, 201, {"Location": f"/models/{row.id}"})


@router.get("", response_model=ModelList, summary="List your uploaded models, newest first",
            responses={503: _PROBLEM})
async def list_models(
    request: Request, owner: Owner,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Response:
    before = decode_newest_first(after)
    rows = await in_db_thread(request, lambda: request.app.state.repo.list_models(owner, before=before,
                                                                                 limit=limit + 1))
    return json_response(newest_first_page(rows, limit, model_to_dict))


@router.get("/{model_id}", response_model=ModelOut, summary="Get an uploaded model",
            responses={404: _PROBLEM, 503: _PROBLEM})
async def get_model(model_id: str, request: Request, owner: Owner) -> Response:
    uid = parse_uuid(model_id, "model")
    return json_response(model_to_dict(await in_db_thread(request, request.app.state.repo.get_model, owner, uid)))


@router.delete("/{model_id}", status_code=204, summary="Delete an uploaded model and its file",
               description="Refused (409 `teacher_in_use`) while a queued or running job uses it as its teacher.",
               responses={404: _PROBLEM, 409: _PROBLEM, 503: _PROBLEM})
async def delete_model(model_id: str, request: Request, owner: Owner) -> Response:
    uid = parse_uuid(model_id, "model")
    state = request.app.state
    key = await in_db_thread(request, state.repo.delete_model, owner, uid)
    await in_store_thread(state.store.delete_upload, key)
    return Response(status_code=204)
