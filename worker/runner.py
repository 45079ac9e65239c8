"""One attempt of one job, in a fresh child process: `python -m worker.runner JOB_ID ATTEMPT`.

The Celery parent claims the job and spawns this process, so CUDA is only ever initialised here
and all GPU memory goes back to the driver when it exits. Every write is fenced by the attempt.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select

from api.db import session_scope
from api.settings import Settings, get_settings
from api.tables import Job
from worker.artifacts import describe_artifacts, insert_artifacts, job_checkpoint_dir, job_output_dir
from worker.jobs_db import FenceLost, RUNNING_STATUSES, fenced_update, record_event, require_fenced_update
from worker.lease import EXIT_LEASE_LOST, LeaseKeeper
from worker.metrics import MetricsSink
from worker.streams import best_effort_status

_log = logging.getLogger("hcd.worker.runner")


def _die_fenced(reason: str) -> None:
    print(f"hcd worker child: {reason}; exiting without further writes", file=sys.stderr, flush=True)
    os._exit(EXIT_LEASE_LOST)


@dataclass
class Outcome:
    status: str  # succeeded | failed | cancelled | queued (handed back on worker shutdown)
    error_code: str | None = None
    error_message: str | None = None


class StopPolicy:
    """`should_stop` for the engine: cancel flag, runtime cap, or a worker shutdown (SIGTERM)."""

    def __init__(self, lease: LeaseKeeper, deadline: float):
        self.lease, self.deadline = lease, deadline
        self.shutdown = threading.Event()
        self.reason: str | None = None

    def __call__(self) -> bool:
        if self.lease.cancel_requested.is_set():
            self.reason = "cancel"
        elif time.time() >= self.deadline:
            self.reason = "runtime_limit"
        elif self.shutdown.is_set():
            self.reason = "shutdown"
        return self.reason is not None


class JobWriter:
    """Phase changes and the final transition of this attempt (fenced, with events + stream entries)."""

    def __init__(self, settings: Settings, job_id: str, attempt: int, sink: MetricsSink):
        self.settings, self.job_id, self.attempt, self.sink = settings, job_id, attempt, sink
        self.phase_name: str | None = None

    def phase(self, name: str) -> None:
        if name == self.phase_name:
            return
        self.phase_name = name
        try:
            with session_scope(self.settings.database_url) as session:
                row = require_fenced_update(session, self.job_id, self.attempt, {"phase": name})
                record_event(session, self.job_id, self.attempt, "phase", {"phase": name})
        except FenceLost as err:
            _die_fenced(str(err))
        except Exception as err:  # a phase label is not worth failing a job for
            _log.warning("phase %s of job %s not recorded: %s", name, self.job_id, err)
            return
        self.sink.status_entry(row["status"], name)

    def event(self, type_: str, data: dict) -> None:
        try:
            with session_scope(self.settings.database_url) as session:
                record_event(session, self.job_id, self.attempt, type_, data)
        except Exception as err:
            _log.warning("event %s of job %s not recorded: %s", type_, self.job_id, err)

    def finish(self, outcome: Outcome, result=None, artifact_rows: list[dict] | None = None) -> bool:
        """The terminal (or handed-back) transition; False when this attempt no longer owns the job."""
        values: dict = {"status": outcome.status, "lease_expires_at": None}
        data: dict = {"status": outcome.status}
        if outcome.status == "queued":  # handed back: the next claim resumes from the checkpoint
            values.update(worker_id=None, phase=None)
            data["reason"] = "worker_shutdown"
        else:
            values["finished_at"] = func.now()
        if outcome.error_code:
            values.update(error_code=outcome.error_code, error_message=outcome.error_message)
            data.update(error_code=outcome.error_code, error_message=outcome.error_message)
        if result is not None and outcome.status == "succeeded":
            values["result"] = {
                "final_metrics": _finite(result.final_metrics), "best_metrics": _finite(result.best_metrics),
                "epochs": result.epoch, "steps": result.step,
            }
        with session_scope(self.settings.database_url) as session:
            if fenced_update(session, self.job_id, self.attempt, values) is None:
                session.rollback()
                return False
            if artifact_rows:
                insert_artifacts(session, self.job_id, artifact_rows)
            record_event(session, self.job_id, self.attempt, "requeued" if outcome.status == "queued" else "status", data)
        terminal = outcome.status != "queued"
        best_effort_status(self.settings, self.job_id, outcome.status, self.phase_name, self.attempt, terminal=terminal)
        return True


def _finite(metrics: dict) -> dict:
    import math

    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}


def _apply_worker_device(spec, device_setting: str):
    """The worker's device setting (operator's choice) wins over the spec's `auto`."""
    setting = (device_setting or "auto").lower()
    if setting == "auto":
        return spec
    if setting.startswith("cuda:"):
        # `hcd worker --device cuda:N` exports CUDA_VISIBLE_DEVICES=N, so the job sees one GPU.
        setting = "cuda"
    if setting not in ("cpu", "cuda"):
        raise ValueError(f"worker device {device_setting!r} is not one of auto, cpu, cuda, cuda:N")
    training = spec.training.model_copy(update={"device": setting})
    return spec.model_copy(update={"training": training})


def _classify(err: BaseException) -> tuple[str, str]:
    from hcd_core.checkpoint import CheckpointMismatch
    from hcd_core.data import DatasetUnavailable
    from worker.teacher_resolution import TeacherError

    message = f"{type(err).__name__}: {err}"[:4000]
    try:
        import torch

        if isinstance(err, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(err):
            return "out_of_memory", message
    except ImportError:
        pass
    if isinstance(err, MemoryError):
        return "out_of_memory", message
    if isinstance(err, TeacherError):
        return "invalid_teacher", message
    if isinstance(err, DatasetUnavailable):
        return "dataset_error", message
    if isinstance(err, CheckpointMismatch):
        return "training_error", message
    return "training_error", message


def _load_job(settings: Settings, job_id: str) -> Job | None:
    with session_scope(settings.database_url) as session:
        return session.execute(select(Job).where(Job.id == uuid.UUID(job_id))).scalar_one_or_none()


def run_attempt(settings: Settings, job_id: str, attempt: int) -> int:
    job = _load_job(settings, job_id)
    if job is None or job.attempt != attempt or job.status not in RUNNING_STATUSES:
        _log.info("job %s attempt %s is not ours to run (status %s)", job_id, attempt, job and job.status)
        return 0
    lease = LeaseKeeper(settings, job_id, attempt, on_lost=_die_fenced)
    if not lease.renew():
        return 1  # Postgres unreachable right at the start: the sweep hands the job on
    lease.start()
    sink = MetricsSink(settings, job_id, attempt, on_fence_lost=_die_fenced).start()
    writer = JobWriter(settings, job_id, attempt, sink)
    started = job.started_at.timestamp() if job.started_at else time.time()
    stopper = StopPolicy(lease, deadline=started + job.runtime_limit_seconds)
    signal.signal(signal.SIGTERM, lambda *_: stopper.shutdown.set())
    signal.signal(signal.SIGINT, lambda *_: stopper.shutdown.set())

    result, outcome, artifact_rows = None, None, None
    try:
        from hcd_core.checkpoint import CHECKPOINT_NAME
        from hcd_core.engine import RunHooks, run_job
        from hcd_core.spec import JobSpec
        from worker.teacher_resolution import resolve_teacher

        writer.phase("loading")
        spec = _apply_worker_device(JobSpec.model_validate(job.spec), settings.worker_device)
        teacher_weights, teacher_card = resolve_teacher(settings, job.owner, spec)
        checkpoint_dir = job_checkpoint_dir(settings, job_id)
        resuming = (checkpoint_dir / CHECKPOINT_NAME).is_file()
        first_progress: list = []

        def on_progress(progress) -> None:
            sink.progress(progress)
            if not first_progress:
                first_progress.append(progress)
                if resuming:  # the engine restarted right after the checkpoint's position
                    writer.event("resumed", {"epoch": progress.epoch, "step": progress.step - 1})

        hooks = RunHooks(on_metrics=sink.add, should_stop=stopper, on_phase=writer.phase,
                         on_progress=on_progress, stop_check_every=2,
                         before_checkpoint=lambda: sink.persist(timeout=settings.lease_seconds))
        result = run_job(spec, output_dir=job_output_dir(settings, job_id), checkpoint_dir=checkpoint_dir,
                         teacher_weights=teacher_weights, teacher_card=teacher_card, hooks=hooks,
                         data_root=settings.datasets_dir)
        if result.status == "completed":
            artifact_rows = describe_artifacts(settings, result.artifacts)
            outcome = Outcome("succeeded")
        elif stopper.reason == "cancel":
            outcome = Outcome("cancelled")
        elif stopper.reason == "runtime_limit":
            outcome = Outcome("failed", "runtime_limit",
                              f"the job ran longer than its limit of {job.runtime_limit_seconds} s "
                              f"(checkpoint kept at epoch {result.epoch}, step {result.step})")
        else:
            outcome = Outcome("queued")
    except FenceLost as err:
        _die_fenced(str(err))
    except Exception as err:
        code, message = _classify(err)
        _log.exception("job %s attempt %s failed (%s)", job_id, attempt, code)
        outcome = Outcome("failed", code, message)

    # Every metric reaches Postgres before the job is seen as finished.
    sink.close()
    lease.stop()
    if outcome.status == "cancelled" or stopper.reason == "cancel":
        outcome = Outcome("cancelled") if outcome.status != "succeeded" else outcome
    if not writer.finish(outcome, result=result, artifact_rows=artifact_rows):
        _die_fenced("the final transition was fenced out")
    if outcome.status == "queued":
        from worker.publish import publish_job

        publish_job(settings, job_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m worker.runner JOB_ID ATTEMPT", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [job-child] %(message)s")
    return run_attempt(get_settings(), str(uuid.UUID(argv[0])), int(argv[1]))


if __name__ == "__main__":
    exit_code = main()
    # Everything is committed; skip interpreter teardown (torch's can take seconds) and any thread.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
