"""Turns a spec's teacher reference into (weights file, model card) for run_job, inside the service.

Only references the service allows: a finished job of the same owner, an uploaded model of the
same owner, or timm's pretrained weights. A local file path is refused (the API rejects it too).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from sqlalchemy import select

from api.db import session_scope
from api.settings import Settings
from api.tables import Artifact, Job, UploadedModel
from hcd_core.spec import JobSpec

WEIGHTS_NAME = "student.safetensors"
CARD_NAME = "model_card.json"


class TeacherError(ValueError):
    """The teacher reference cannot be used (error code invalid_teacher)."""


def _as_uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise TeacherError(f"teacher {what} {value!r} is not a valid id") from None


def _inside(root: Path, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise TeacherError("teacher file lies outside the service's data directory")
    if not path.is_file():
        raise TeacherError(f"teacher file is missing from the store: {relative}")
    return path


def resolve_teacher(settings: Settings, owner: str, spec: JobSpec) -> tuple[Path | None, dict | None]:
    teacher = spec.teacher
    if teacher is None:
        return None, None
    ref = teacher.weights
    if ref.source == "timm":
        return None, None
    if ref.source == "file":
        raise TeacherError("teacher weights from a local file are not accepted by the service")
    with session_scope(settings.database_url) as session:
        if ref.source == "job":
            job_id = _as_uuid(ref.job_id, "job")
            job = session.execute(select(Job).where(Job.id == job_id, Job.owner == owner)).scalar_one_or_none()
            if job is None:
                raise TeacherError(f"teacher job {ref.job_id} not found")
            if job.status != "succeeded":
                raise TeacherError(f"teacher job {ref.job_id} has not succeeded (status {job.status})")
            files = {
                a.name: a.path for a in session.execute(
                    select(Artifact).where(Artifact.job_id == job_id, Artifact.name.in_((WEIGHTS_NAME, CARD_NAME)))
                ).scalars()
            }
            if WEIGHTS_NAME not in files:
                raise TeacherError(f"teacher job {ref.job_id} has no exported {WEIGHTS_NAME}")
            weights = _inside(settings.artifacts_dir, files[WEIGHTS_NAME])
            card = None
            if CARD_NAME in files:
                card = json.loads(_inside(settings.artifacts_dir, files[CARD_NAME]).read_text())
            return weights, card
        model_id = _as_uuid(ref.model_id, "model")
        model = session.execute(
            select(UploadedModel).where(UploadedModel.id == model_id, UploadedModel.owner == owner)
        ).scalar_one_or_none()
        if model is None:
            raise TeacherError(f"teacher model {ref.model_id} not found")
        card = {"arch": model.arch, "num_classes": model.num_classes}
        if model.image_size:
            card["image_size"] = model.image_size
        if model.mean and model.std:
            card["mean"], card["std"] = list(model.mean), list(model.std)
        return _inside(settings.uploads_dir, model.path), card
