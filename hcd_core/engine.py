"""Public entry point of the engine: run one job from a spec (CLI and service worker both call this).

CONTRACT (stable; the worker and the CLI are written against it):

    result = run_job(
        spec,                      # JobSpec (resolved or not; run_job resolves it)
        output_dir=Path,           # exported files: student.safetensors, model_card.json, metrics.jsonl
        checkpoint_dir=Path,       # internal full training state; resumed from if a checkpoint is there
        teacher_weights=Path|None, # safetensors of the teacher's state dict (caller resolves job/model ids)
        teacher_card=dict|None,    # model_card.json of that teacher, if any (normalisation, image size)
        hooks=RunHooks(...),
        data_root=Path|None,       # base directory that relative dataset roots are resolved against
    )

`RunHooks.on_metrics(points)` receives a list of `MetricPoint` after every training step (per-step
terms, lr, images_per_s) and after every evaluation (val_top1, val_top5, val_loss, and at the end
best_val_top1); callers throttle. `should_stop()` is polled every `stop_check_every` steps; when it
returns True the run saves a checkpoint and returns status "stopped". `on_phase(name)` reports
"loading", "training", "evaluating", "exporting". `on_progress(Progress)` after every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from hcd_core.spec import JobSpec


@dataclass(frozen=True)
class MetricPoint:
    name: str  # e.g. "loss", "ce", "kd", "sdd_ce", "sdd_kl", "ol", "lr", "images_per_s", "val_top1"
    value: float
    step: int  # global optimiser step (epoch metrics use the step at the end of the epoch)
    epoch: int  # 0-based epoch the point belongs to
    ts: float  # unix time


@dataclass(frozen=True)
class Progress:
    epoch: int
    epochs: int
    step: int  # global step done
    total_steps: int


@dataclass
class RunHooks:
    on_metrics: Callable[[list[MetricPoint]], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_phase: Callable[[str], None] | None = None
    on_progress: Callable[[Progress], None] | None = None
    stop_check_every: int = 10


@dataclass
class RunResult:
    status: Literal["completed", "stopped"]
    epoch: int  # epochs completed
    step: int
    final_metrics: dict[str, float] = field(default_factory=dict)  # last evaluation
    best_metrics: dict[str, float] = field(default_factory=dict)  # best val_top1 and its epoch
    artifacts: dict[str, Path] = field(default_factory=dict)  # name -> path, when completed


def run_job(
    spec: JobSpec,
    *,
    output_dir: Path,
    checkpoint_dir: Path,
    teacher_weights: Path | None = None,
    teacher_card: dict | None = None,
    hooks: RunHooks | None = None,
    data_root: Path | None = None,
) -> RunResult:
    raise NotImplementedError  # implemented by the trainer work (issue 2)
