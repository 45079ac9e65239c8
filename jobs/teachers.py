"""Teacher references of the service: one resolution path, used by the API to validate a submission
and by the worker to find the files to load.

A spec names its teacher's weights as a succeeded job of the same owner (`job`), an uploaded model of
the same owner (`model`) or timm's pretrained weights (`timm`); a local file (`file`) is for the CLI.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from hcd_core.spec import DatasetSpec, JobSpec
from hcd_core.types import CARD_NAME, WEIGHTS_NAME
from jobs.errors import InvalidInput
from jobs.status import ACTIVE, JobStatus
from jobs.storage import ArtifactStore
from jobs.tables import Artifact, Job, UploadedModel


class TeacherError(InvalidInput):
    """The spec's teacher cannot be used; `loc` names the spec field, `code` the problem."""

    def __init__(self, loc: str, reason: str, code: str = "invalid_spec"):
        super().__init__(f"invalid spec: {loc}: {reason}", code=code, errors=[{"loc": loc, "msg": reason}])
        self.loc, self.reason = loc, reason


@dataclass(frozen=True)
class TeacherRef:
    """A resolved teacher: which job or model it is, its weights file and its model card."""

    job_id: uuid.UUID | None = None
    model_id: uuid.UUID | None = None
    weights: Path | None = None  # None: timm's pretrained weights, or a teacher job not finished yet
    card: dict[str, Any] | None = None  # arch, num_classes, image_size, mean, std (what the engine reads)
    pending: bool = False  # a teacher job still queued or running: the student waits for it


def _parse_id(value: str, loc: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise TeacherError(loc, f"no such {what} of yours", "teacher_not_found") from None


def _classes(dataset: dict[str, Any]) -> int | None:
    try:
        return DatasetSpec.model_validate(dataset).known_num_classes()
    except ValidationError:
        return None


def resolve_teacher(
    session: Session, store: ArtifactStore, owner: str, spec: JobSpec, *, read_card: bool = False,
    allow_pending: bool = False,
) -> TeacherRef | None:
    """The spec's teacher as a TeacherRef (None for a method without one); raises TeacherError.

    With `allow_pending` (a submission), a teacher job still queued or running is accepted: the student
    waits for it. A worker resolves only succeeded teachers (the claim never starts a waiting job)."""
    teacher = spec.teacher
    if teacher is None:
        return None
    weights = teacher.weights
    classes = spec.dataset.known_num_classes()
    if weights.source == "file":
        raise TeacherError("teacher.weights.source", "'file' is for the local CLI only; use 'job', 'model' or 'timm'")
    if weights.source == "timm":
        return TeacherRef()
    if weights.source == "job":
        loc = "teacher.weights.job_id"
        job_id = _parse_id(weights.job_id, loc, "job")
        row = session.execute(
            select(Job.status, Job.spec).where(Job.id == job_id, Job.owner == owner)
        ).one_or_none()
        if row is None:
            raise TeacherError(loc, "no such job of yours", "teacher_not_found")
        pending = allow_pending and JobStatus(row.status) in ACTIVE
        if row.status != JobStatus.SUCCEEDED and not pending:
            raise TeacherError(loc, f"the teacher job has status {row.status!r}, not {JobStatus.SUCCEEDED.value!r}")
        keys = dict(session.execute(
            select(Artifact.name, Artifact.path)
            .where(Artifact.job_id == job_id, Artifact.name.in_((WEIGHTS_NAME, CARD_NAME)))
        ).all())
        trained = row.spec.get("student", {}).get("arch")
        if trained != teacher.arch:
            raise TeacherError("teacher.arch", f"the teacher job trained {trained!r}, not {teacher.arch!r}")
        teacher_classes = _classes(row.spec.get("dataset", {}))
        if classes is not None and teacher_classes is not None and teacher_classes != classes:
            raise TeacherError(loc, f"the teacher job has {teacher_classes} classes, the dataset {classes}")
        if pending:
            return TeacherRef(job_id=job_id, pending=True)
        if WEIGHTS_NAME not in keys:
            raise TeacherError(loc, f"the teacher job has no exported {WEIGHTS_NAME}")
        path = store.artifact_path(keys[WEIGHTS_NAME])
        if path is None:
            raise TeacherError(loc, "the teacher job's weights are missing from the artifact store",
                               "teacher_unavailable")
        card = None
        if read_card and CARD_NAME in keys and (card_path := store.artifact_path(keys[CARD_NAME])) is not None:
            card = json.loads(card_path.read_text())
        return TeacherRef(job_id=job_id, weights=path, card=card)
    loc = "teacher.weights.model_id"
    model_id = _parse_id(weights.model_id, loc, "uploaded model")
    model = session.execute(
        select(UploadedModel).where(UploadedModel.id == model_id, UploadedModel.owner == owner)
    ).scalar_one_or_none()
    if model is None:
        raise TeacherError(loc, "no such uploaded model of yours", "teacher_not_found")
    if model.arch != teacher.arch:
        raise TeacherError("teacher.arch", f"the uploaded model is a {model.arch!r}, not {teacher.arch!r}")
    if classes is not None and model.num_classes != classes:
        raise TeacherError(loc, f"the uploaded model has {model.num_classes} classes, the dataset {classes}")
    path = store.upload_path(model.path)
    if path is None:
        raise TeacherError(loc, "the uploaded model's file is missing from the artifact store", "teacher_unavailable")
    model_card: dict[str, Any] = {"arch": model.arch, "num_classes": model.num_classes}
    if model.image_size:
        model_card["image_size"] = model.image_size
    if model.mean and model.std:
        model_card["mean"], model_card["std"] = list(model.mean), list(model.std)
    return TeacherRef(model_id=model_id, weights=path, card=model_card)
