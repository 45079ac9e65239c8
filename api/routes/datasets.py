"""/datasets: upload an image-folder dataset as an archive (checked before it is accepted), list, get, delete."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.artifact_files import in_store_thread
from api.bodies import body_chunks
from api.deps import in_db_thread, require_owner
from api.json_body import json_response
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT, decode_newest_first, newest_first_page
from api.schemas import DatasetList, DatasetOut
from api.submission import parse_uuid
from api.uploads import invalid_upload, keep_upload, receive_upload
from jobs.archives import ArchiveLimits, DatasetSummary, archive_kind, unpack_dataset
from jobs.datasets import ARCHIVE_SUFFIXES, archive_limits
from jobs.tables import UploadedDataset

router = APIRouter(prefix="/datasets", tags=["datasets"])
Owner = Annotated[str, Depends(require_owner)]
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
_NAME_CHARS = 128

_UPLOAD_FORM = {
    "type": "object",
    "required": ["file", "name"],
    "properties": {
        "file": {"type": "string", "format": "binary",
                 "description": "a .zip or .tar.gz of train/<class>/<image> and val/<class>/<image>"},
        "name": {"type": "string", "maxLength": _NAME_CHARS, "description": "a name to know it by"},
    },
}


def dataset_to_dict(d: UploadedDataset) -> dict[str, Any]:
    return {
        "id": d.id, "object": "dataset", "name": d.name, "classes": d.classes, "num_classes": len(d.classes),
        "num_train": d.num_train, "num_val": d.num_val, "filename": d.filename, "size": d.size,
        "sha256": d.sha256, "created_at": d.created_at,
    }


def _check(archive: Path, scratch: Path, limits: ArchiveLimits) -> tuple[str, DatasetSummary]:
    """The archive's kind and summary, unpacked into a scratch folder that is then removed."""
    try:
        return archive_kind(archive), unpack_dataset(archive, scratch, limits)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    summary="Upload a dataset (an image-folder archive)",
    description="multipart/form-data with `file` (a .zip or .tar.gz holding `train/<class>/<image>` and "
                "`val/<class>/<image>`, optionally inside one folder) and `name`. Checked before it is "
                "accepted: the layout, the same classes in both splits, every file a decodable image, caps on "
                "size, file count and compression ratio, and no absolute paths, `..`, links or device files. "
                "Use it in a spec as `{\"name\": \"imagefolder\", \"dataset_id\": ...}`.",
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _UPLOAD_FORM}}}},
    responses={401: _PROBLEM, 408: _PROBLEM, 413: _PROBLEM, 415: _PROBLEM, 422: _PROBLEM, 503: _PROBLEM},
)
async def upload_dataset(request: Request, owner: Owner) -> Response:
    state = request.app.state
    settings, store = state.settings, state.store
    staging = store.upload_staging_dir()
    parsed = await receive_upload(request.headers.get("content-type", ""),
                                  body_chunks(request, settings.body_idle_timeout_seconds),
                                  staging, settings.max_dataset_bytes)
    assert parsed.file_path is not None
    try:
        name = parsed.fields.get("name", "").strip()
        if not name or len(name) > _NAME_CHARS or not name.isprintable():
            raise invalid_upload(f"form field 'name' is required: 1 to {_NAME_CHARS} printable characters", "name")
        scratch = staging / f".check-{uuid.uuid4().hex}"
        kind, summary = await run_in_threadpool(_check, parsed.file_path, scratch, archive_limits(settings))
        dataset_id, suffix = uuid.uuid4(), ARCHIVE_SUFFIXES[kind]
        row = await keep_upload(request, parsed.file_path, dataset_id, suffix, lambda key: state.repo.add_dataset(
            UploadedDataset(
                id=dataset_id, owner=owner, name=name, filename=parsed.filename or f"dataset{suffix}",
                path=key, size=parsed.size, sha256=parsed.sha256, classes=summary.classes,
                num_train=summary.num_train, num_val=summary.num_val,
            )))
    finally:
        parsed.file_path.unlink(missing_ok=True)
    body = DatasetOut.model_validate(dataset_to_dict(row)).model_dump(mode="json")
    return json_response(body, 201, {"Location": f"/datasets/{row.id}"})


@router.get("", response_model=DatasetList, summary="List your datasets, newest first", responses={503: _PROBLEM})
async def list_datasets(
    request: Request, owner: Owner,
    after: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Response:
    before = decode_newest_first(after)
    rows = await in_db_thread(request, lambda: request.app.state.repo.list_datasets(owner, before=before,
                                                                                   limit=limit + 1))
    return json_response(newest_first_page(rows, limit, dataset_to_dict))


@router.get("/{dataset_id}", response_model=DatasetOut, summary="Get a dataset",
            responses={404: _PROBLEM, 503: _PROBLEM})
async def get_dataset(dataset_id: str, request: Request, owner: Owner) -> Response:
    uid = parse_uuid(dataset_id, "dataset")
    return json_response(dataset_to_dict(await in_db_thread(request, request.app.state.repo.get_dataset, owner, uid)))


@router.delete("/{dataset_id}", status_code=204, summary="Delete a dataset and its archive",
               description="Refused (409 `dataset_in_use`) while a queued or running job reads it.",
               responses={404: _PROBLEM, 409: _PROBLEM, 503: _PROBLEM})
async def delete_dataset(dataset_id: str, request: Request, owner: Owner) -> Response:
    uid = parse_uuid(dataset_id, "dataset")
    state = request.app.state
    key = await in_db_thread(request, state.repo.delete_dataset, owner, uid)
    await in_store_thread(state.store.delete_upload, key)
    return Response(status_code=204)
