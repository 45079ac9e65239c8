"""The artifact store: exported files, training checkpoints and uploaded teachers.

`ArtifactStore` is what the API and the worker use; `LocalStore` keeps everything in one directory
(`HCD_DATA_DIR`, shared by every host through a mount). Files are named by keys relative to their
area, never by absolute paths, so no server path reaches the database or a client.

    <data_dir>/artifacts/<job>/<name>     exported files (served)
    <data_dir>/checkpoints/<job>/         internal training state (never served)
    <data_dir>/uploads/<model>.safetensors   uploaded teachers
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hcd_core.hashing import sha256_file_and_size

_MEDIA_TYPES = {
    ".safetensors": "application/octet-stream",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
}


@dataclass(frozen=True)
class StoredFile:
    name: str
    key: str
    size: int
    sha256: str
    media_type: str


class ArtifactStore(Protocol):
    def output_dir(self, job_id: uuid.UUID | str) -> Path:
        """Where the engine writes a job's exported files."""
        ...

    def checkpoint_dir(self, job_id: uuid.UUID | str) -> Path:
        """Where the engine keeps a job's training checkpoint (every attempt resumes from it)."""
        ...

    def record(self, job_id: uuid.UUID | str, files: dict[str, Path]) -> list[StoredFile]:
        """The exported files as stored (checksummed once), ready to be recorded with the job."""
        ...

    def artifact_path(self, key: str) -> Path | None:
        """A stored artifact as a local file; None when it is missing."""
        ...

    def delete_job(self, job_id: uuid.UUID | str) -> None: ...

    def delete_checkpoints(self, job_id: uuid.UUID | str) -> None: ...

    def upload_staging_dir(self) -> Path:
        """Where uploads are received before they are checked."""
        ...

    def store_upload(self, staged: Path, model_id: uuid.UUID | str) -> str:
        """Move a checked upload into the store; returns its key."""
        ...

    def upload_path(self, key: str) -> Path | None: ...

    def delete_upload(self, key: str) -> None: ...


def _inside(root: Path, key: str) -> Path | None:
    """root/key when it is a regular file inside root (keys never escape it)."""
    if not key or "\x00" in key:
        return None
    root = root.resolve()
    path = (root / key).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


class LocalStore:
    """The store as a directory tree (the default, and what `hcd up` uses)."""

    def __init__(self, data_dir: Path):
        self.root = Path(data_dir)
        self.artifacts = self.root / "artifacts"
        self.checkpoints = self.root / "checkpoints"
        self.uploads = self.root / "uploads"

    def ensure_layout(self) -> None:
        for folder in (self.artifacts, self.checkpoints, self.uploads, self.root / "datasets"):
            folder.mkdir(parents=True, exist_ok=True)

    def output_dir(self, job_id: uuid.UUID | str) -> Path:
        return self.artifacts / str(job_id)

    def checkpoint_dir(self, job_id: uuid.UUID | str) -> Path:
        return self.checkpoints / str(job_id)

    def record(self, job_id: uuid.UUID | str, files: dict[str, Path]) -> list[StoredFile]:
        root = self.artifacts.resolve()
        stored = []
        for name, path in sorted(files.items()):
            path = Path(path).resolve()
            if not path.is_relative_to(root):
                raise ValueError(f"artifact {name!r} was written outside the artifact store")
            sha256, size = sha256_file_and_size(path)
            stored.append(StoredFile(name=name, key=str(path.relative_to(root)), size=size, sha256=sha256,
                                     media_type=_MEDIA_TYPES.get(path.suffix, "application/octet-stream")))
        return stored

    def artifact_path(self, key: str) -> Path | None:
        return _inside(self.artifacts, key)

    def delete_job(self, job_id: uuid.UUID | str) -> None:
        shutil.rmtree(self.output_dir(job_id), ignore_errors=True)
        self.delete_checkpoints(job_id)

    def delete_checkpoints(self, job_id: uuid.UUID | str) -> None:
        shutil.rmtree(self.checkpoint_dir(job_id), ignore_errors=True)

    def upload_staging_dir(self) -> Path:
        self.uploads.mkdir(parents=True, exist_ok=True)
        return self.uploads

    def store_upload(self, staged: Path, model_id: uuid.UUID | str) -> str:
        key = f"{model_id}.safetensors"
        staged.replace(self.uploads / key)
        return key

    def upload_path(self, key: str) -> Path | None:
        return _inside(self.uploads, key)

    def delete_upload(self, key: str) -> None:
        path = _inside(self.uploads, key)
        if path is not None:
            path.unlink(missing_ok=True)
