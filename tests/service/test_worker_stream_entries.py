"""The metric sink's stream entries (what SSE clients get as `data`): the run's size from the start,
no internal fields."""

from __future__ import annotations

import time
import uuid

import worker.metrics as metrics
from hcd_core.types import MetricPoint, Progress
from jobs.settings import Settings
from jobs.status import JobStatus


class _Repo:
    def write_progress(self, *args, **kwargs) -> None:
        pass


def test_status_and_metrics_entries_carry_the_run_size(monkeypatch):
    sent: list[tuple[str, dict]] = []
    monkeypatch.setattr(metrics, "xadd", lambda settings, job_id, type_, data: sent.append((type_, dict(data))))
    settings = Settings(metrics_min_interval_seconds=0.0, _env_file=None)
    sink = metrics.MetricsSink(settings, _Repo(), uuid.uuid4(), attempt=2).start()
    now = time.time()
    sink.status_entry(JobStatus.RUNNING, "loading")
    sink.status_entry(JobStatus.RUNNING, "training")
    sink.progress(Progress(epoch=0, epochs=2, step=0, total_steps=10))  # training starts: its size is known
    sink.add([MetricPoint("loss", 1.5, step=1, epoch=0, ts=now)])
    sink.progress(Progress(epoch=0, epochs=2, step=1, total_steps=10))  # same size: no new status entry
    sink.status_entry(JobStatus.RUNNING, "evaluating")
    sink.add([MetricPoint("val_top1", 50.0, step=1, epoch=0, ts=now + 1)])
    assert sink.close(timeout=5)

    size = {"epochs": 2, "total_steps": 10}
    assert sent == [
        ("status", {"status": "running", "phase": "loading", "attempt": 2}),
        ("status", {"status": "running", "phase": "training", "attempt": 2}),
        ("status", {"status": "running", "phase": "training", "attempt": 2, "epoch": 0, "step": 0, **size}),
        ("metrics", {"step": 1, "epoch": 0, "ts": now, "values": {"loss": 1.5}, **size}),
        ("status", {"status": "running", "phase": "evaluating", "attempt": 2, "epoch": 0, "step": 1, **size}),
        ("metrics", {"step": 1, "epoch": 0, "ts": now + 1, "values": {"val_top1": 50.0}, **size}),
    ]
