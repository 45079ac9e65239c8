"""Exported files of a finished job: checksummed once, recorded in `artifacts` (the API serves them)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from api.settings import Settings
from api.tables import Artifact

_MEDIA_TYPES = {
    ".safetensors": "application/octet-stream",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
}
_CHUNK = 1 << 20


def job_output_dir(settings: Settings, job_id: uuid.UUID | str) -> Path:
    return settings.artifacts_dir / str(job_id)


def job_checkpoint_dir(settings: Settings, job_id: uuid.UUID | str) -> Path:
    return settings.checkpoints_dir / str(job_id)


def sha256_and_size(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def describe_artifacts(settings: Settings, files: dict[str, Path]) -> list[dict]:
    """One row per exported file (name -> path under artifacts_dir), hashing each file once."""
    root = settings.artifacts_dir.resolve()
    rows = []
    for name, path in sorted(files.items()):
        path = Path(path).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"artifact {name} at {path} is outside the artifact store {root}")
        sha, size = sha256_and_size(path)
        rows.append({
            "name": name, "path": str(path.relative_to(root)), "size": size, "sha256": sha,
            "media_type": _MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
        })
    return rows


def insert_artifacts(session: Session, job_id: uuid.UUID | str, rows: list[dict]) -> None:
    if not rows:
        return
    stmt = pg_insert(Artifact).values([{**r, "job_id": str(job_id)} for r in rows])
    stmt = stmt.on_conflict_do_update(
        index_elements=["job_id", "name"],
        set_={c: stmt.excluded[c] for c in ("path", "size", "sha256", "media_type")},
    )
    session.execute(stmt)
