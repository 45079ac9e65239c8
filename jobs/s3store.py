"""The artifact store in an S3-compatible bucket, through fsspec/s3fs (AWS S3, MinIO, Ceph RGW, R2...).

Chosen by `HCD_STORAGE_URL=s3://bucket/prefix`; credentials, region and endpoint come from the standard
`AWS_*` variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`)
or any other source botocore reads. Objects, under `s3://bucket/prefix/`:

    artifacts/<job>/attempt-<n>/<name>               exported files of the attempt that succeeded
    checkpoints/<job>/attempt-<n>/checkpoint.pt      the latest checkpoint of attempt n...
    checkpoints/<job>/attempt-<n>/metrics.jsonl      ...and the metrics log as it was when it was saved
    uploads/<model>.safetensors                      uploaded teachers
    uploads/<dataset>.zip | .tar.gz                  uploaded datasets

Local files (`HCD_WORK_DIR`, default `HCD_DATA_DIR/work`), this host's only:

    jobs/<job>/attempt-<n>/output/, checkpoint/      what a running attempt writes (the engine's dirs)
    cache/<sha256>                                   teachers and datasets fetched from the store, by content
    datasets/<sha256>/                               uploaded datasets, unpacked (jobs.datasets)
    uploads/                                         uploads being received and checked (API)

Fencing: an attempt only ever writes objects under its own `attempt-<n>/`, and only once its checkpoint
guard (the ownership check) passed. Attempt numbers only grow (each claim takes the next), so "the
latest checkpoint" is the one of the highest attempt that has one: a stale attempt that wakes up after a
newer one took over can only overwrite its own, older, folder, never the newer attempt's. No pointer to
keep consistent and no conditional write needed (not every S3-compatible store has them). Exported files
are attempt-scoped for the same reason: the keys recorded with the job are the winning attempt's.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hcd_core.hashing import sha256_file_and_size
from hcd_core.types import METRICS_NAME
from jobs.storage import CHUNK_BYTES, StorageError, StoredFile, media_type, read_range

_log = logging.getLogger("hcd.storage")

_ATTEMPT_DIR = re.compile(r"^attempt-(\d+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_READ_BLOCK = 8 * 1024 * 1024  # a download reads ahead this much per GET
_CACHE_GRACE_SECONDS = 600  # a cached teacher used this recently is never trimmed (a job may be loading it)


def attempt_dir(attempt: int) -> str:
    return f"attempt-{attempt:06d}"


@contextmanager
def _failures_as_storage_error(what: str) -> Iterator[None]:
    """Any failure of the store inside the block is a StorageError naming `what`, not the bucket."""
    try:
        yield
    except StorageError:
        raise
    except Exception as err:
        raise StorageError(f"the object store could not {what} ({type(err).__name__})") from err


def _valid_key(key: str) -> bool:
    parts = key.split("/")
    return bool(key) and "\x00" not in key and "\\" not in key and all(p not in ("", ".", "..") for p in parts)


class S3Blob:
    """An object being served: ranged reads, one GET per read-ahead block."""

    def __init__(self, fs: Any, path: str, size: int):
        self.fs, self.path, self.size = fs, path, size

    def iter_range(self, start: int, length: int) -> Iterator[bytes]:
        block = max(CHUNK_BYTES, min(length, _READ_BLOCK))
        with _failures_as_storage_error("read a file"):
            with self.fs.open(self.path, "rb", block_size=block, cache_type="readahead", size=self.size) as handle:
                yield from read_range(handle, start, length)


class S3Workspace:
    """One attempt's local staging directories, and its checkpoints' and exports' way to the bucket."""

    def __init__(self, store: S3Store, job_id: uuid.UUID | str, attempt: int):
        self.store, self.job_id, self.attempt = store, str(job_id), attempt
        self.root = store.work_dir / "jobs" / self.job_id / attempt_dir(attempt)
        self.output_dir = self.root / "output"
        self.checkpoint_dir = self.root / "checkpoint"
        self._checkpoints = store.path("checkpoints", self.job_id)
        self._mine = f"{self._checkpoints}/{attempt_dir(attempt)}"
        self._older_removed = False

    def restore_checkpoint(self) -> bool:
        from hcd_core.checkpoint import CHECKPOINT_NAME

        # Whatever an earlier attempt left on this host is stale: the store has the latest.
        shutil.rmtree(self.root.parent, ignore_errors=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        for _, folder in self._attempt_folders():
            # The checkpoint first, then the log: the log is uploaded before its checkpoint, so it is
            # at least as recent (the engine drops the points past the checkpoint's step).
            if not self.store.download(f"{folder}/{CHECKPOINT_NAME}", self.checkpoint_dir / CHECKPOINT_NAME):
                continue  # this attempt never stored a whole checkpoint
            self.store.download(f"{folder}/{METRICS_NAME}", self.output_dir / METRICS_NAME)
            _log.info("job %s attempt %d: checkpoint of %s fetched from the store", self.job_id, self.attempt,
                      folder.rsplit("/", 1)[-1])
            return True
        return False

    def _attempt_folders(self) -> list[tuple[int, str]]:
        """(attempt, folder) of the job's checkpoint folders in the store, the newest first."""
        with _failures_as_storage_error("list checkpoints"):
            try:
                entries = self.store.fs.ls(self._checkpoints, detail=False)
            except FileNotFoundError:
                entries = []
        found = []
        for entry in entries:
            match = _ATTEMPT_DIR.match(str(entry).rstrip("/").rsplit("/", 1)[-1])
            if match:
                found.append((int(match.group(1)), f"{self._checkpoints}/{match.group(0)}"))
        return sorted(found, reverse=True)

    def checkpoint_saved(self, checkpoint: Path) -> None:
        try:
            with _failures_as_storage_error("upload a checkpoint"):
                metrics = self.output_dir / METRICS_NAME
                if metrics.is_file():
                    self.store.fs.put_file(str(metrics), f"{self._mine}/{METRICS_NAME}")
                self.store.fs.put_file(str(checkpoint), f"{self._mine}/{checkpoint.name}")
        except StorageError as err:
            # Training goes on; the next checkpoint tries again (meanwhile a resume elsewhere would
            # start from the previous stored one).
            _log.warning("job %s attempt %d: checkpoint not stored: %s", self.job_id, self.attempt, err)
            return
        if not self._older_removed:
            # This attempt's checkpoint is newer than any earlier attempt's (it resumed from the latest).
            self._older_removed = True
            for number, folder in self._attempt_folders():
                if number < self.attempt:
                    self.store.remove(folder)

    def publish(self, files: dict[str, Path]) -> list[StoredFile]:
        stored = []
        for name, path in sorted(files.items()):
            sha256, size = sha256_file_and_size(path)
            key = f"{self.job_id}/{attempt_dir(self.attempt)}/{name}"
            with _failures_as_storage_error("upload an exported file"):
                self.store.fs.put_file(str(path), self.store.path("artifacts", key), ContentType=media_type(name))
            stored.append(StoredFile(name=name, key=key, size=size, sha256=sha256, media_type=media_type(name)))
        return stored

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            self.root.parent.rmdir()  # the job's folder, unless another attempt on this host uses it
        except OSError:
            pass


class S3Store:
    """The store in `s3://bucket/prefix` (see the module's docstring)."""

    def __init__(self, url: str, work_dir: Path, *, public_endpoint_url: str | None = None,
                 presigned_url_seconds: int = 300, cache_max_bytes: int = 20 * 1024**3):
        rest = url.split("://", 1)[1].strip("/")
        bucket, _, prefix = rest.partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.base = f"{bucket}/{self.prefix}" if self.prefix else bucket
        self.work_dir = Path(work_dir)
        self.cache_dir = self.work_dir / "cache"
        self.public_endpoint_url = public_endpoint_url
        self.presigned_url_seconds = presigned_url_seconds
        self.cache_max_bytes = cache_max_bytes
        self._lock = threading.Lock()
        self._fs: Any = None
        self._signer: Any = None

    # ------------------------------------------------------------------ clients (made on first use:
    # after any fork, in the process that uses them)
    @staticmethod
    def _filesystem(endpoint_url: str | None = None) -> Any:
        import s3fs

        fs = s3fs.S3FileSystem(
            skip_instance_cache=True, use_listings_cache=False,
            client_kwargs={"endpoint_url": endpoint_url} if endpoint_url else {},
            config_kwargs={"signature_version": "s3v4", "connect_timeout": 10, "read_timeout": 120,
                           "retries": {"max_attempts": 3, "mode": "standard"}},  # AWS SDKs' default
        )
        # botocore retries (above); s3fs's own loop around them (5 by default) would multiply them, and an
        # unreachable store would hold a request for ~25 attempts before its 503.
        fs.retries = 1
        return fs

    @property
    def fs(self) -> Any:
        if self._fs is None:
            with self._lock:
                if self._fs is None:
                    self._fs = self._filesystem()
        return self._fs

    @property
    def signer(self) -> Any:
        """Presigns URLs for the endpoint clients reach (signing needs no request to the store)."""
        if not self.public_endpoint_url:
            return self.fs
        if self._signer is None:
            with self._lock:
                if self._signer is None:
                    self._signer = self._filesystem(self.public_endpoint_url)
        return self._signer

    # ------------------------------------------------------------------ helpers
    def path(self, area: str, key: str) -> str:
        if not _valid_key(key):
            raise ValueError("invalid storage key")
        return f"{self.base}/{area}/{key}"

    def _file_size(self, path: str) -> int | None:
        with _failures_as_storage_error("read a file"):
            try:
                info = self.fs.info(path)
            except FileNotFoundError:
                return None
        return int(info["size"]) if info.get("type") == "file" else None

    def download(self, path: str, target: Path) -> bool:
        """Copy the object to `target` (whole or not at all); False when it does not exist."""
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        try:
            with _failures_as_storage_error("download a file"):
                try:
                    self.fs.get_file(path, str(partial))
                except FileNotFoundError:
                    return False
            os.replace(partial, target)
            return True
        finally:
            partial.unlink(missing_ok=True)

    def remove(self, path: str) -> None:
        """Remove an object or a folder of them; best effort (logged)."""
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        except Exception as err:  # noqa: BLE001 - deletions never fail the caller: the rows are gone
            _log.warning("could not delete %s from the object store: %s", path.removeprefix(self.base + "/"),
                         type(err).__name__)

    def _fetch(self, path: str, sha256: str) -> Path | None:
        """The object as a local file in the cache, checked against its sha256; None when missing."""
        if not _SHA256.match(sha256):
            raise StorageError("the stored file has no valid sha256 to check it against")
        cached = self.cache_dir / sha256
        if cached.is_file():
            os.utime(cached)  # recently used: the last to be trimmed
            return cached
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = self.cache_dir / f".{sha256}.{uuid.uuid4().hex}.part"
        try:
            if not self.download(path, partial):
                return None
            if sha256_file_and_size(partial)[0] != sha256:
                raise StorageError("a file downloaded from the object store does not match its sha256")
            os.replace(partial, cached)
        finally:
            partial.unlink(missing_ok=True)
        self._trim_cache(keep=cached)
        return cached

    def _trim_cache(self, keep: Path) -> None:
        """Least recently used teachers go while the cache is over its size (never one in use)."""
        try:
            files = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.cache_dir.iterdir()
                     if p.is_file() and not p.name.startswith(".")]
        except OSError:
            return
        total = sum(size for _, size, _ in files)
        recent = time.time() - _CACHE_GRACE_SECONDS
        for mtime, size, path in sorted(files):
            if total <= self.cache_max_bytes:
                break
            if path == keep or mtime > recent:
                continue
            path.unlink(missing_ok=True)
            total -= size

    # ------------------------------------------------------------------ ArtifactStore
    def ensure_layout(self) -> None:
        for folder in (self.work_dir / "jobs", self.cache_dir, self.work_dir / "uploads"):
            folder.mkdir(parents=True, exist_ok=True)

    def workspace(self, job_id: uuid.UUID | str, attempt: int) -> S3Workspace:
        return S3Workspace(self, job_id, attempt)

    def delete_job(self, job_id: uuid.UUID | str) -> None:
        self.remove(self.path("artifacts", str(job_id)))
        self.delete_checkpoints(job_id)

    def delete_checkpoints(self, job_id: uuid.UUID | str) -> None:
        self.remove(self.path("checkpoints", str(job_id)))

    def artifact_exists(self, key: str) -> bool:
        return _valid_key(key) and self._file_size(self.path("artifacts", key)) is not None

    def open_artifact(self, key: str) -> S3Blob | None:
        if not _valid_key(key):
            return None
        path = self.path("artifacts", key)
        size = self._file_size(path)
        return S3Blob(self.fs, path, size) if size is not None else None

    def artifact_url(self, key: str, *, filename: str) -> str | None:
        if not _valid_key(key):
            return None
        disposition = f'attachment; filename="{filename}"'
        with _failures_as_storage_error("sign a download URL"):
            url: str = self.signer.sign(self.path("artifacts", key), expiration=self.presigned_url_seconds,
                                        ResponseContentDisposition=disposition)
        return url

    def read_artifact(self, key: str) -> bytes | None:
        if not _valid_key(key):
            return None
        with _failures_as_storage_error("read a file"):
            try:
                data: bytes = self.fs.cat_file(self.path("artifacts", key))
            except FileNotFoundError:
                return None
        return data

    def fetch_artifact(self, key: str, sha256: str) -> Path | None:
        return self._fetch(self.path("artifacts", key), sha256) if _valid_key(key) else None

    def upload_staging_dir(self) -> Path:
        folder = self.work_dir / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def store_upload(self, staged: Path, upload_id: uuid.UUID | str, suffix: str = ".safetensors") -> str:
        key = f"{upload_id}{suffix}"
        with _failures_as_storage_error("store an upload"):
            self.fs.put_file(str(staged), self.path("uploads", key), ContentType="application/octet-stream")
        staged.unlink(missing_ok=True)
        return key

    def upload_exists(self, key: str) -> bool:
        return _valid_key(key) and self._file_size(self.path("uploads", key)) is not None

    def fetch_upload(self, key: str, sha256: str) -> Path | None:
        return self._fetch(self.path("uploads", key), sha256) if _valid_key(key) else None

    def delete_upload(self, key: str) -> None:
        if _valid_key(key):
            self.remove(self.path("uploads", key))
