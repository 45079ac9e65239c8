"""Teacher references of the service: one resolution path, used by the API to validate a submission
and by the worker to find the files to load.

A spec names its teacher's weights as a succeeded job of the same owner (`job`), an uploaded model of
the same owner (`model`) or timm's pretrained weights (`timm`); a local file (`file`) is for the CLI.

`resolve_teacher` reads the database (and checks that the file is in the store); `fetch_teacher`, called
by the worker outside any database session, makes the weights a local file (the store's cache, by
sha256, when the store is remote) and reads the teacher job's model card.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
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

_MISSING_JOB_WEIGHTS = "the teacher job's weights are missing from the artifact store"
_MISSING_UPLOAD = "the uploaded model's file is missing from the artifact store"


class TeacherError(InvalidInput):
    """The spec's teacher cannot be used; `loc` names the spec field, `code` the problem."""

    def __init__(self, loc: str, reason: str, code: str = "invalid_spec"):
        super().__init__(f"invalid spec: {loc}: {reason}", code=code, errors=[{"loc": loc, "msg": reason}])
        self.loc, self.reason = loc, reason


@dataclass(frozen=True)
class TeacherRef:
    """A resolved teacher: which job or model it is, where its weights are stored, and (once fetched)
    its weights as a local file and its model card."""

    job_id: uuid.UUID | None = None
    model_id: uuid.UUID | None = None
    weights: Path | None = None  # a local file, set by fetch_teacher (None: timm, or not fetched yet)
    card: dict[str, Any] | None = None  # arch, num_classes, image_size, mean, std (what the engine reads)
    pending: bool = False  # a teacher job still queued or running: the student waits for it
    weights_key: str | None = None  # the store's key: an artifact (job) or an upload (model)
    weights_sha256: str | None = None
    card_key: str | None = None  # a teacher job's model_card.json artifact, if it has one


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
    session: Session, store: ArtifactStore, owner: str, spec: JobSpec, *, allow_pending: bool = False,
    num_classes: int | None = None,
) -> TeacherRef | None:
    """The spec's teacher as a TeacherRef (None for a method without one); raises TeacherError, and
    StorageError when the store cannot be asked whether the weights are there.

    With `allow_pending` (a submission), a teacher job still queued or running is accepted: the student
    waits for it. A worker resolves only succeeded teachers (the claim never starts a waiting job).
    `num_classes`: the dataset's, when the spec alone does not tell (an uploaded dataset)."""
    teacher = spec.teacher
    if teacher is None:
        return None
    weights = teacher.weights
    classes = num_classes or spec.dataset.known_num_classes()
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
        stored = {a.name: a for a in session.execute(
            select(Artifact.name, Artifact.path, Artifact.sha256)
            .where(Artifact.job_id == job_id, Artifact.name.in_((WEIGHTS_NAME, CARD_NAME)))
        ).all()}
        trained = row.spec.get("student", {}).get("arch")
        if trained != teacher.arch:
            raise TeacherError("teacher.arch", f"the teacher job trained {trained!r}, not {teacher.arch!r}")
        teacher_classes = _classes(row.spec.get("dataset", {}))
        if classes is not None and teacher_classes is not None and teacher_classes != classes:
            raise TeacherError(loc, f"the teacher job has {teacher_classes} classes, the dataset {classes}")
        if pending:
            return TeacherRef(job_id=job_id, pending=True)
        if WEIGHTS_NAME not in stored:
            raise TeacherError(loc, f"the teacher job has no exported {WEIGHTS_NAME}")
        weights_row = stored[WEIGHTS_NAME]
        if not store.artifact_exists(weights_row.path):
            raise TeacherError(loc, _MISSING_JOB_WEIGHTS, "teacher_unavailable")
        return TeacherRef(job_id=job_id, weights_key=weights_row.path, weights_sha256=weights_row.sha256,
                          card_key=stored[CARD_NAME].path if CARD_NAME in stored else None)
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
    if not store.upload_exists(model.path):
        raise TeacherError(loc, _MISSING_UPLOAD, "teacher_unavailable")
    model_card: dict[str, Any] = {"arch": model.arch, "num_classes": model.num_classes}
    if model.image_size:
        model_card["image_size"] = model.image_size
    if model.mean and model.std:
        model_card["mean"], model_card["std"] = list(model.mean), list(model.std)
    return TeacherRef(model_id=model_id, card=model_card, weights_key=model.path, weights_sha256=model.sha256)


def fetch_teacher(store: ArtifactStore, ref: TeacherRef) -> TeacherRef:
    """`ref` with its weights as a local file and, for a teacher job, its model card; raises TeacherError
    (`teacher_unavailable`) when they are gone from the store, StorageError when the store fails.
    Call it outside any database session: with an object store it may download gigabytes."""
    if ref.weights_key is None or ref.weights_sha256 is None:
        return ref  # timm's pretrained weights: nothing to fetch
    if ref.job_id is not None:
        path = store.fetch_artifact(ref.weights_key, ref.weights_sha256)
        if path is None:
            raise TeacherError("teacher.weights.job_id", _MISSING_JOB_WEIGHTS, "teacher_unavailable")
        card = ref.card
        if ref.card_key is not None and (raw := store.read_artifact(ref.card_key)) is not None:
            card = json.loads(raw)
        return replace(ref, weights=path, card=card)
    path = store.fetch_upload(ref.weights_key, ref.weights_sha256)
    if path is None:
        raise TeacherError("teacher.weights.model_id", _MISSING_UPLOAD, "teacher_unavailable")
    return replace(ref, weights=path)
