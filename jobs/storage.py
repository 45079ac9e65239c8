"""The artifact store: exported files, training checkpoints and uploaded teachers.

`ArtifactStore` is what the API and the worker use, with two implementations chosen by
`HCD_STORAGE_URL` (`open_store`):

- `LocalStore` (unset, the default and what `hcd up` uses): one directory, `HCD_DATA_DIR`, shared by
  every host through a mount. The engine writes straight into it.
- `jobs.s3store.S3Store` (`s3://bucket/prefix`): an S3-compatible object store (AWS, MinIO, Ceph, R2).
  The engine still writes local files: each attempt stages them in this host's work directory and its
  `JobWorkspace` moves them to the store (checkpoints at each save, the exports at the end).

Files are named by keys relative to their area, never by absolute paths, so no server path reaches the
database or a client. The layout is the same in both (docs/storage.md):

    artifacts/<job>/<name>                 exported files (served); in S3 `<job>/attempt-<n>/<name>`
    checkpoints/<job>/                     internal training state (never served)
    uploads/<model>.safetensors            uploaded teachers
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from hcd_core.hashing import sha256_file_and_size
from jobs.errors import DomainError

if TYPE_CHECKING:
    from jobs.settings import Settings

_log = logging.getLogger("hcd.storage")

CHUNK_BYTES = 256 * 1024  # what a download streams at a time
MEDIA_TYPES = {
    ".safetensors": "application/octet-stream",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
}


def media_type(name: str) -> str:
    return MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")


class StorageError(DomainError):
    """The store could not be read or written (unreachable, refused, corrupt transfer): the
    infrastructure's fault, worth a retry (the API answers 503). Its message names no server path,
    bucket or endpoint."""

    code = "storage_unavailable"


@dataclass(frozen=True)
class StoredFile:
    name: str
    key: str
    size: int
    sha256: str
    media_type: str


class Blob(Protocol):
    """A stored file being served: its size, and its bytes by range."""

    @property
    def size(self) -> int: ...

    def iter_range(self, start: int, length: int) -> Iterator[bytes]:
        """`length` bytes from `start`, in chunks of at most CHUNK_BYTES (blocking: run it in a thread)."""
        ...


class JobWorkspace(Protocol):
    """Where one attempt of one job writes (local directories the engine uses), and how its files reach
    the store. Used by the worker only."""

    output_dir: Path  # the engine's output_dir
    checkpoint_dir: Path  # the engine's checkpoint_dir

    def restore_checkpoint(self) -> bool:
        """Put the job's latest stored checkpoint in checkpoint_dir (and the metrics log written up to it
        in output_dir) before the engine starts; True when there is one to resume from."""
        ...

    def checkpoint_saved(self, checkpoint: Path) -> None:
        """The engine wrote `checkpoint` (after the attempt's ownership check passed): store it.
        A failure is logged, not raised: training goes on and the next checkpoint tries again."""
        ...

    def publish(self, files: dict[str, Path]) -> list[StoredFile]:
        """Store the exported files (checksummed once); what is recorded with the job. StorageError."""
        ...

    def close(self) -> None:
        """The attempt is over: drop what it staged locally (the store keeps everything that matters)."""
        ...


class ArtifactStore(Protocol):
    def ensure_layout(self) -> None:
        """Create the local directories this process needs."""
        ...

    def workspace(self, job_id: uuid.UUID | str, attempt: int) -> JobWorkspace: ...

    # Deletions are best effort: a failure is logged, never raised (the rows are already gone).
    def delete_job(self, job_id: uuid.UUID | str) -> None:
        """A job's exported files and checkpoints."""
        ...

    def delete_checkpoints(self, job_id: uuid.UUID | str) -> None: ...

    # Exported files, by the key recorded with the job (StorageError when the store fails).
    def artifact_exists(self, key: str) -> bool: ...

    def open_artifact(self, key: str) -> Blob | None:
        """The artifact to serve; None when it is missing."""
        ...

    def artifact_url(self, key: str, *, filename: str) -> str | None:
        """A short-lived URL a client can download it from directly; None when the store has none (local)."""
        ...

    def read_artifact(self, key: str) -> bytes | None:
        """A small artifact's content (a model card); None when it is missing."""
        ...

    def fetch_artifact(self, key: str, sha256: str) -> Path | None:
        """The artifact as a local file, to read (the worker's teacher cache, by sha256); None when missing."""
        ...

    # Uploaded teachers.
    def upload_staging_dir(self) -> Path:
        """Where uploads are received (a local directory) before they are checked."""
        ...

    def store_upload(self, staged: Path, upload_id: uuid.UUID | str, suffix: str = ".safetensors") -> str:
        """Move a checked upload (a teacher, or a dataset's archive) into the store; returns its key."""
        ...

    def upload_exists(self, key: str) -> bool: ...

    def fetch_upload(self, key: str, sha256: str) -> Path | None:
        """The upload as a local file (cached by sha256 with an object store); None when missing."""
        ...

    def delete_upload(self, key: str) -> None: ...


def open_store(settings: Settings) -> ArtifactStore:
    """The store `HCD_STORAGE_URL` names: the local directory when unset, else the S3 bucket."""
    if not settings.storage_url:
        return LocalStore(settings.data_dir)
    from jobs.s3store import S3Store

    return S3Store(
        settings.storage_url, settings.local_work_dir, public_endpoint_url=settings.storage_public_endpoint_url,
        presigned_url_seconds=settings.presigned_url_seconds,
        cache_max_bytes=int(settings.teacher_cache_max_gb * 1024**3),
    )


# --------------------------------------------------------------------------- the local directory
def _inside(root: Path, key: str) -> Path | None:
    """root/key when it is a regular file inside root (keys never escape it)."""
    if not key or "\x00" in key:
        return None
    root = root.resolve()
    path = (root / key).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def read_range(handle: IO[bytes], start: int, length: int) -> Iterator[bytes]:
    """`length` bytes of an open file from `start`, in chunks of CHUNK_BYTES (fewer at its end)."""
    handle.seek(start)
    remaining = length
    while remaining > 0:
        chunk = handle.read(min(CHUNK_BYTES, remaining))
        if not chunk:
            break
        remaining -= len(chunk)
        yield chunk


@dataclass(frozen=True)
class LocalBlob:
    path: Path
    size: int

    def iter_range(self, start: int, length: int) -> Iterator[bytes]:
        with open(self.path, "rb") as handle:
            yield from read_range(handle, start, length)


class LocalWorkspace:
    """The engine writes straight into the shared directory: every attempt of a job uses the same
    checkpoint folder, whose rename the checkpoint guard fences."""

    def __init__(self, store: LocalStore, job_id: uuid.UUID | str):
        self.store, self.job_id = store, job_id
        self.output_dir = store.output_dir(job_id)
        self.checkpoint_dir = store.checkpoint_dir(job_id)

    def restore_checkpoint(self) -> bool:
        from hcd_core.checkpoint import CHECKPOINT_NAME

        return (self.checkpoint_dir / CHECKPOINT_NAME).is_file()

    def checkpoint_saved(self, checkpoint: Path) -> None:
        pass  # already in place

    def publish(self, files: dict[str, Path]) -> list[StoredFile]:
        return self.store.record(self.job_id, files)

    def close(self) -> None:
        pass


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

    def workspace(self, job_id: uuid.UUID | str, attempt: int) -> LocalWorkspace:
        return LocalWorkspace(self, job_id)

    def record(self, job_id: uuid.UUID | str, files: dict[str, Path]) -> list[StoredFile]:
        root = self.artifacts.resolve()
        stored = []
        for name, path in sorted(files.items()):
            path = Path(path).resolve()
            if not path.is_relative_to(root):
                raise ValueError(f"artifact {name!r} was written outside the artifact store")
            sha256, size = sha256_file_and_size(path)
            stored.append(StoredFile(name=name, key=str(path.relative_to(root)), size=size, sha256=sha256,
                                     media_type=media_type(path.name)))
        return stored

    def artifact_path(self, key: str) -> Path | None:
        return _inside(self.artifacts, key)

    def artifact_exists(self, key: str) -> bool:
        return self.artifact_path(key) is not None

    def open_artifact(self, key: str) -> LocalBlob | None:
        path = self.artifact_path(key)
        return LocalBlob(path, path.stat().st_size) if path is not None else None

    def artifact_url(self, key: str, *, filename: str) -> str | None:
        return None

    def read_artifact(self, key: str) -> bytes | None:
        path = self.artifact_path(key)
        return path.read_bytes() if path is not None else None

    def fetch_artifact(self, key: str, sha256: str) -> Path | None:
        return self.artifact_path(key)

    def delete_job(self, job_id: uuid.UUID | str) -> None:
        shutil.rmtree(self.output_dir(job_id), ignore_errors=True)
        self.delete_checkpoints(job_id)

    def delete_checkpoints(self, job_id: uuid.UUID | str) -> None:
        shutil.rmtree(self.checkpoint_dir(job_id), ignore_errors=True)

    def upload_staging_dir(self) -> Path:
        self.uploads.mkdir(parents=True, exist_ok=True)
        return self.uploads

    def store_upload(self, staged: Path, upload_id: uuid.UUID | str, suffix: str = ".safetensors") -> str:
        key = f"{upload_id}{suffix}"
        staged.replace(self.uploads / key)
        return key

    def upload_path(self, key: str) -> Path | None:
        return _inside(self.uploads, key)

    def upload_exists(self, key: str) -> bool:
        return self.upload_path(key) is not None

    def fetch_upload(self, key: str, sha256: str) -> Path | None:
        return self.upload_path(key)

    def delete_upload(self, key: str) -> None:
        path = _inside(self.uploads, key)
        if path is not None:
            path.unlink(missing_ok=True)
