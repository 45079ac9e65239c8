"""What a run reports and returns: metric points, progress, the caller's hooks and the result.

Torch-free and shared by `hcd_core.engine` (which re-exports them) and `hcd_core.training`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["CARD_NAME", "METRICS_NAME", "WEIGHTS_NAME", "MetricPoint", "Progress", "RunHooks", "RunResult",
           "RunStatus"]

RunStatus = Literal["completed", "stopped"]
# The files a completed run exports (the keys of RunResult.artifacts).
WEIGHTS_NAME = "student.safetensors"  # the student's state dict, nothing else
CARD_NAME = "model_card.json"  # what is needed to rebuild, normalise and trust it
METRICS_NAME = "metrics.jsonl"  # every metric point, one JSON object per line


@dataclass(frozen=True)
class MetricPoint:
    name: str  # e.g. "loss", "ce", "kd", "sdd_ce", "sdd_kl", "ol", "lr", "images_per_s", "val_top1"
    value: float
    step: int  # global optimiser step (epoch metrics use the step at the end of the epoch)
    epoch: int  # 0-based epoch the point belongs to
    ts: float  # unix time


@dataclass(frozen=True)
class Progress:
    """Where a run is. Reported when training starts (epoch = the current 0-based epoch, step = steps
    done), after every step, and once at the end with epoch == epochs and step == total_steps."""

    epoch: int
    epochs: int
    step: int  # global steps done
    total_steps: int


@dataclass
class RunHooks:
    """The caller's view into a run; every hook is optional.

    on_metrics: lists of points after every step and every evaluation (callers throttle).
    should_stop: polled every `stop_check_every` steps; True saves a checkpoint and stops the run.
    on_phase: "loading", "training", "evaluating", "exporting".
    on_progress: see `Progress`.
    before_checkpoint: before each checkpoint is written. A resumed run never re-reports the points
        before its checkpoint, so a caller that buffers them must persist them here.
    checkpoint_guard: after the new checkpoint is written to a temporary file and fsynced, before it
        replaces the previous one. If it raises (e.g. the caller lost its lease), the temporary file
        is removed, the previous checkpoint is left untouched and the exception leaves run_job as is.
    after_checkpoint: with the checkpoint's path, once it is in place (so only after checkpoint_guard
        passed); e.g. to copy it to remote storage. The metrics log in output_dir is complete up to the
        checkpoint's step at that point. An exception it raises leaves run_job as is.
    """

    on_metrics: Callable[[list[MetricPoint]], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_phase: Callable[[str], None] | None = None
    on_progress: Callable[[Progress], None] | None = None
    before_checkpoint: Callable[[], None] | None = None
    checkpoint_guard: Callable[[], None] | None = None
    after_checkpoint: Callable[[Path], None] | None = None
    stop_check_every: int = 10


@dataclass
class RunResult:
    status: RunStatus
    epoch: int  # epochs completed
    step: int
    final_metrics: dict[str, float] = field(default_factory=dict)  # last evaluation
    best_metrics: dict[str, float] = field(default_factory=dict)  # best val_top1 and its epoch
    artifacts: dict[str, Path] = field(default_factory=dict)  # name -> path, when completed
