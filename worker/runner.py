"""One attempt of one job, in a fresh child process: `python -m worker.runner JOB_ID ATTEMPT`.

The Celery parent claims the job and spawns this process, so CUDA is only ever initialised here
and all GPU memory goes back to the driver when it exits. Every write is fenced by the attempt, and
every state change goes through the repository.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hcd_core.launch import HelperRanks
from hcd_core.spec import JobSpec
from hcd_core.types import Progress, RunResult
from jobs.datasets import resolve_dataset, unpacked_dataset
from jobs.db import database, database_unavailable
from jobs.errors import FenceLost, InvalidInput
from jobs.logs import configure_logging, set_process_job
from jobs.repository import AttemptJob, JobRepository, Outcome
from jobs.settings import Settings, get_settings
from jobs.status import OWNED, JobPhase, JobStatus
from jobs.storage import StorageError, StoredFile, open_store
from jobs.streams import StatusStream, Transition
from jobs.teachers import TeacherError, fetch_teacher, resolve_teacher
from worker.lease import LeaseKeeper, exit_fenced
from worker.metrics import MetricsSink

_log = logging.getLogger("hcd.worker.runner")
T = TypeVar("T")
# Write failures that can only be the store's (a full or read-only disk), whatever raised them.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT}
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/[^\s'\"`:,;()\[\]{}]+")


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


def retry_while_database_down(settings: Settings, func: Callable[[], T], what: str) -> T:
    """func(), retried while the database is unavailable (up to max_db_outage_seconds)."""
    deadline = time.monotonic() + settings.max_db_outage_seconds
    delay = 0.5
    while True:
        try:
            return func()
        except Exception as err:
            if not database_unavailable(err) or time.monotonic() > deadline:
                raise
            _log.warning("%s: the database is unavailable (%s); retrying", what, err)
            time.sleep(delay)
            delay = min(delay * 2, settings.lease_seconds / 3)


def public_message(message: str, settings: Settings) -> str:
    """An error message fit for the job's owner: no server paths (dataset paths become relative)."""
    for base in {str(settings.datasets_dir.resolve()), str(settings.datasets_dir)}:
        message = message.replace(base.rstrip("/") + "/", "").replace(base, ".")
    for folder in (settings.local_work_dir, settings.data_dir):
        for base in {str(folder.resolve()), str(folder)}:
            message = message.replace(base, "<data>")
    return _ABSOLUTE_PATH.sub("<path>", message)[:4000]


def classify(err: BaseException, settings: Settings) -> tuple[str, str, bool]:
    """(error code, message for the owner, whether it is the infrastructure's fault and worth a retry)."""
    from hcd_core.checkpoint import CheckpointMismatch
    from hcd_core.data import DatasetUnavailable
    from hcd_core.errors import OutputWriteError

    if isinstance(err, OutputWriteError) or (isinstance(err, OSError) and err.errno in _STORAGE_ERRNOS):
        reason = err.strerror or type(err).__name__
        return "storage_error", f"the artifact store could not be written ({reason})", True
    if isinstance(err, StorageError):  # the object store: unreachable, refused, a corrupt transfer
        return "storage_error", public_message(str(err), settings), True
    message = public_message(f"{type(err).__name__}: {err}", settings)
    try:
        import torch

        if isinstance(err, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(err):
            return "out_of_memory", message, False
    except ImportError:
        pass
    if isinstance(err, MemoryError):
        return "out_of_memory", message, False
    if isinstance(err, TeacherError):
        return "invalid_teacher", public_message(f"{err.loc}: {err.reason}", settings), False
    if isinstance(err, InvalidInput):  # the spec's dataset: gone, or its archive refused on unpacking
        return "dataset_error", public_message(str(err), settings), False
    if isinstance(err, DatasetUnavailable):
        return "dataset_error", public_message(str(err), settings), False
    if isinstance(err, CheckpointMismatch):
        return "training_error", message, False
    return "training_error", message, False


def _apply_worker_device(spec: JobSpec, device_setting: str) -> JobSpec:
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


def _result_document(result: RunResult) -> dict[str, Any]:
    return {"final_metrics": result.final_metrics, "best_metrics": result.best_metrics,
            "epochs": result.epoch, "steps": result.step}


class Attempt:
    """Runs one claimed attempt: the engine with its hooks, then the attempt's end."""

    def __init__(self, settings: Settings, job: AttemptJob):
        self.settings, self.job, self.job_id, self.attempt = settings, job, str(job.id), job.attempt
        self.status_stream = StatusStream(settings)
        self.repo = JobRepository(database(settings), notify=self._announce)
        self.store = open_store(settings)
        # The engine's directories for this attempt: the shared ones (local store), or this host's
        # staging, whose checkpoints and exports the workspace moves to the object store.
        self.workspace = self.store.workspace(self.job_id, self.attempt)
        self.lease = LeaseKeeper(settings, self.repo, self.job_id, self.attempt)
        self.sink = MetricsSink(settings, self.repo, self.job_id, self.attempt, on_fence_lost=exit_fenced)
        started = job.started_at.timestamp() if job.started_at else time.time()
        self.stopper = StopPolicy(self.lease, deadline=started + job.runtime_limit_seconds)
        self._phase: JobPhase | None = None

    def _announce(self, change: Transition) -> None:
        """Status entries go through the metric sink while it runs, so they stay in order with metrics."""
        if self.sink.open and change.status in OWNED:
            self.sink.status_entry(change.status, change.phase)
        else:
            self.status_stream(change)

    # ------------------------------------------------------------------ engine hooks
    def phase(self, name: str) -> None:
        phase = JobPhase(name)
        if phase == self._phase:
            return
        self._phase = phase
        try:
            self.repo.set_phase(self.job_id, self.attempt, phase)
        except FenceLost as err:
            exit_fenced(str(err))
        except Exception as err:  # noqa: BLE001 - a phase label is not worth failing a job for
            _log.warning("phase %s of job %s not recorded: %s", name, self.job_id, err)

    def checkpoint_guard(self) -> None:
        """Called between writing a checkpoint's temporary file and renaming it over the last one:
        only the attempt that owns the job may replace its checkpoint (waits out a database outage)."""
        owner = retry_while_database_down(self.settings, lambda: self.repo.is_owner(self.job_id, self.attempt),
                                          "checkpoint fence")
        if not owner:
            raise FenceLost(f"job {self.job_id} is no longer owned by attempt {self.attempt}")

    # ------------------------------------------------------------------ the run
    def run(self) -> int:
        if not self.lease.renew():
            return 1  # Postgres unreachable right at the start: the parent hands the job back
        _log.info("job %s attempt %d started (worker device: %s)", self.job_id, self.attempt,
                  self.settings.worker_device)
        self.lease.start()
        self.sink.start()
        signal.signal(signal.SIGTERM, lambda *_: self.stopper.shutdown.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopper.shutdown.set())
        outcome: Outcome | None = None
        hand_back: tuple[str, tuple[str, str] | None] | None = None  # (reason, error)
        result: RunResult | None = None
        files: list[StoredFile] = []
        try:
            result = self._train()
            if result.status == "completed":
                files = self.workspace.publish(result.artifacts)
                outcome = Outcome(JobStatus.SUCCEEDED)
            elif self.stopper.reason == "cancel":
                outcome = Outcome(JobStatus.CANCELLED)
            elif self.stopper.reason == "runtime_limit":
                outcome = Outcome(JobStatus.FAILED, "runtime_limit",
                                  f"the job ran longer than its limit of {self.job.runtime_limit_seconds} s "
                                  f"(checkpoint kept at epoch {result.epoch}, step {result.step})")
            else:
                hand_back = ("worker_shutdown", None)
        except FenceLost as err:
            exit_fenced(str(err))
        except Exception as err:
            code, message, infrastructure = classify(err, self.settings)
            _log.exception("job %s attempt %s failed (%s)", self.job_id, self.attempt, code)
            if infrastructure:
                hand_back = (code, (code, message))
            else:
                outcome = Outcome(JobStatus.FAILED, code, message)

        # Every metric reaches Postgres before the job is seen as finished.
        self.sink.close(timeout=self.settings.max_db_outage_seconds)
        self.lease.stop()
        self.workspace.close()  # what this attempt staged locally (the store keeps its checkpoint)
        if outcome is not None and self.stopper.reason == "cancel" and outcome.status != JobStatus.SUCCEEDED:
            outcome = Outcome(JobStatus.CANCELLED)
        if hand_back is not None:
            reason, error = hand_back
            status = retry_while_database_down(
                self.settings, lambda: self.repo.hand_back(self.job_id, self.attempt, reason=reason, error=error),
                "handing the job back")
            if status is None:
                exit_fenced("the job was taken by another attempt before it was handed back")
            _log.info("job %s attempt %d handed back (%s): the job is %s", self.job_id, self.attempt, reason,
                      status.value)
            return 0
        assert outcome is not None
        done = outcome
        summary = _result_document(result) if result is not None and done.status == JobStatus.SUCCEEDED else None
        finished = retry_while_database_down(
            self.settings, lambda: self.repo.finish(self.job_id, self.attempt, done, files=files, result=summary),
            "recording the job's end")
        if not finished:
            exit_fenced("the final transition was fenced out")
        _log.info("job %s attempt %d ended: %s%s", self.job_id, self.attempt, done.status.value,
                  f" ({done.error_code})" if done.error_code else "")
        if done.status == JobStatus.SUCCEEDED and not self.settings.keep_checkpoints:
            self.store.delete_checkpoints(self.job_id)
        return 0

    def _train(self) -> RunResult:
        from hcd_core.engine import RunHooks, run_job

        self.phase("loading")
        spec = _apply_worker_device(JobSpec.model_validate(self.job.spec), self.settings.worker_device)
        with self.repo.db.session() as session:
            dataset = resolve_dataset(session, self.store, self.job.owner, spec)
            teacher = resolve_teacher(session, self.store, self.job.owner, spec,
                                      num_classes=dataset.num_classes if dataset else None)
        if teacher is not None:
            teacher = fetch_teacher(self.store, teacher)  # a local file (cached by sha256 on this host)
        # An uploaded dataset is unpacked on this host (once per sha256) and read from there.
        data_root = (unpacked_dataset(self.store, dataset, self.settings) if dataset is not None
                     else Path(self.settings.datasets_dir))
        resuming = self.workspace.restore_checkpoint()
        if resuming:
            _log.info("job %s attempt %d resumes from its checkpoint", self.job_id, self.attempt)
        reported: list[Progress] = []

        def on_progress(progress: Progress) -> None:
            self.sink.progress(progress)
            if not reported:
                reported.append(progress)
                if resuming:  # the engine restarted right after the checkpoint's position
                    self.repo.add_event(self.job_id, self.attempt, "resumed",
                                        {"epoch": progress.epoch, "step": progress.step})

        def before_checkpoint() -> None:
            # A run resumed from this checkpoint never re-reports the points before it: persist them now.
            self.sink.persist(timeout=self.settings.lease_seconds)

        hooks = RunHooks(on_metrics=self.sink.add, should_stop=self.stopper, on_phase=self.phase,
                         on_progress=on_progress, stop_check_every=2, before_checkpoint=before_checkpoint,
                         checkpoint_guard=self.checkpoint_guard, after_checkpoint=self.workspace.checkpoint_saved)
        devices = spec.training.devices or 1
        if devices > self.settings.worker_devices:  # the claim skips such jobs; a settings change may not
            raise ValueError(f"training.devices: the job needs {devices} devices and this worker has "
                             f"{self.settings.worker_devices} (hcd worker --gpus)")
        teacher_weights = teacher.weights if teacher else None
        teacher_card = teacher.card if teacher else None
        # A multi-device job: this process is rank 0 (with the hooks), helpers on this host the others.
        ranks = HelperRanks(devices, {
            "spec": spec.model_dump(mode="json"), "checkpoint_dir": str(self.workspace.checkpoint_dir),
            "teacher_weights": str(teacher_weights) if teacher_weights else None, "teacher_card": teacher_card,
            "data_root": str(data_root), "stop_check_every": hooks.stop_check_every,
        }) if devices > 1 else contextlib.nullcontext()
        with ranks:
            return run_job(spec, output_dir=self.workspace.output_dir, checkpoint_dir=self.workspace.checkpoint_dir,
                           teacher_weights=teacher_weights, teacher_card=teacher_card, hooks=hooks,
                           data_root=data_root)


def run_attempt(settings: Settings, job_id: str, attempt: int) -> int:
    repo = JobRepository(database(settings))
    job = retry_while_database_down(settings, lambda: repo.load_attempt(uuid.UUID(job_id)), "loading the job")
    if job is None or job.attempt != attempt or job.status not in OWNED:
        _log.info("job %s attempt %s is not ours to run (status %s)", job_id, attempt, job and job.status)
        return 0
    return Attempt(settings, job).run()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings = get_settings()
    configure_logging(logging.INFO, settings.log_format)
    if len(argv) != 2:
        _log.error("usage: python -m worker.runner JOB_ID ATTEMPT")
        return 2
    job_id, attempt = str(uuid.UUID(argv[0])), int(argv[1])
    set_process_job(job_id, attempt)  # every line of this process (all its threads) names the job
    return run_attempt(settings, job_id, attempt)


if __name__ == "__main__":
    exit_code = main()
    # Everything is committed; skip interpreter teardown (torch's can take seconds) and any thread.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
