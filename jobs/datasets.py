"""Uploaded datasets in a job: one resolution path (the API validates a submission with it, the worker
finds the archive with it) and the worker's unpacked copy, cached by sha256 on each host.

The archive was checked when it was uploaded (`jobs.archives`); the worker unpacks it with the same
checks again rather than trusting the store: `HCD_WORK_DIR/datasets/<sha256>/{train,val}/<class>/`.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from hcd_core.spec import JobSpec
from jobs.archives import ArchiveLimits, unpack_dataset
from jobs.errors import InvalidInput
from jobs.settings import Settings
from jobs.storage import ArtifactStore, StorageError
from jobs.tables import UploadedDataset

_log = logging.getLogger("hcd.datasets")
_LOC = "dataset.dataset_id"

# Suffixes of the stored archives, by kind (`jobs.archives.archive_kind`).
ARCHIVE_SUFFIXES = {"zip": ".zip", "tar.gz": ".tar.gz"}


@dataclass(frozen=True)
class DatasetRef:
    id: uuid.UUID
    key: str  # the archive's key in the store's uploads area
    sha256: str
    num_classes: int


def archive_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits(max_files=settings.max_dataset_files, max_bytes=settings.max_dataset_unpacked_bytes)


def dataset_error(reason: str, code: str = "dataset_not_found") -> InvalidInput:
    return InvalidInput(f"invalid spec: {_LOC}: {reason}", code=code, errors=[{"loc": _LOC, "msg": reason}])


def resolve_dataset(session: Session, store: ArtifactStore, owner: str, spec: JobSpec) -> DatasetRef | None:
    """The spec's uploaded dataset (None when it names none); InvalidInput when it is not the owner's or
    its archive is missing from the store."""
    dataset_id = spec.dataset.dataset_id
    if dataset_id is None:
        return None
    row = session.execute(
        select(UploadedDataset).where(UploadedDataset.id == dataset_id, UploadedDataset.owner == owner)
    ).scalar_one_or_none()
    if row is None:
        raise dataset_error("no such dataset of yours")
    if not store.upload_exists(row.path):
        raise dataset_error("the dataset's archive is missing from the artifact store", "dataset_unavailable")
    return DatasetRef(id=row.id, key=row.path, sha256=row.sha256, num_classes=len(row.classes))


def unpacked_dataset(store: ArtifactStore, ref: DatasetRef, settings: Settings) -> Path:
    """The dataset as a local folder (train/, val/), unpacked once per host and sha256. Workers on one
    host may race: each unpacks into its own temporary folder and the first rename wins."""
    folder = settings.local_work_dir / "datasets" / ref.sha256
    if folder.is_dir():
        os.utime(folder)
        return folder
    archive = store.fetch_upload(ref.key, ref.sha256)
    if archive is None:
        raise StorageError("the dataset's archive is missing from the artifact store")
    partial = folder.parent / f".{ref.sha256}.{uuid.uuid4().hex}.part"
    unpack_dataset(archive, partial, archive_limits(settings))
    try:
        os.rename(partial, folder)
    except OSError:  # another worker of this host was first (a non-empty folder is never replaced)
        shutil.rmtree(partial, ignore_errors=True)
        if not folder.is_dir():
            raise
    _log.info("dataset %s unpacked", ref.id)
    return folder
