"""Small helpers shared by the API tests (not fixtures)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from jobs.db import database
from jobs.storage import LocalStore
from jobs.tables import Artifact, Job

PROBLEM = "application/problem+json"


def ce_spec(**dataset) -> dict:
    """A tiny, valid `ce` spec (synthetic data, timm's test_resnet)."""
    ds = {"name": "synthetic", "image_size": 16, "num_classes": 4, "train_size": 32, "val_size": 16}
    ds.update(dataset)
    return {
        "method": {"name": "ce"},
        "student": {"arch": "test_resnet"},
        "dataset": ds,
        "training": {"recipe": "quick", "epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2},
        "seed": 1,
    }


def hcd_spec(weights: dict, teacher_arch: str = "test_resnet", num_classes: int = 4) -> dict:
    spec = ce_spec(num_classes=num_classes)
    spec["method"] = {"name": "hcd"}
    spec["student"] = {"arch": "test_convnext"}
    spec["teacher"] = {"arch": teacher_arch, "weights": weights}
    return spec


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert body["status"] == status and body["code"] == code, body
    assert body["title"] and body["detail"] and body["type"]
    return body


def insert_job(settings, owner: str, status: str = "queued", spec: dict | None = None, **values) -> uuid.UUID:
    """A job row written directly (states the API cannot produce by itself, e.g. succeeded)."""
    job_id = uuid.uuid4()
    terminal = status in ("succeeded", "failed", "cancelled")
    row = dict(
        id=job_id, owner=owner, status=status, attempt=1 if status != "queued" else 0,
        max_attempts=3, spec=spec or ce_spec(), job_metadata={}, progress={}, latest_metrics={},
        runtime_limit_seconds=3600, finished_at=datetime.now(timezone.utc) if terminal else None,
    )
    row.update(values)
    with database(settings).sessionmaker() as session:
        session.add(Job(**row))
        session.commit()
    return job_id


def add_artifact(settings, job_id: uuid.UUID, name: str, content: bytes, media_type: str) -> str:
    import hashlib

    folder = LocalStore(settings.data_dir).artifacts / str(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    with database(settings).sessionmaker() as session:
        session.add(Artifact(job_id=job_id, name=name, path=f"{job_id}/{name}", size=len(content),
                             sha256=digest, media_type=media_type))
        session.commit()
    return digest
