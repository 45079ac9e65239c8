"""Public entry point of the engine: run one job from a spec (CLI and service worker both call this).

CONTRACT (stable; the worker and the CLI are written against it):

    result = run_job(
        spec,                      # JobSpec (resolved or not; run_job resolves it)
        output_dir=Path,           # exported files: student.safetensors, model_card.json, metrics.jsonl
        checkpoint_dir=Path,       # internal full training state; resumed from if a checkpoint is there
        teacher_weights=Path|None, # safetensors of the teacher's state dict (caller resolves job/model ids)
        teacher_card=dict|None,    # model_card.json of that teacher, if any (normalisation, image size)
        hooks=RunHooks(...),       # see hcd_core.types.RunHooks
        data_root=Path|None,       # base directory that relative dataset roots are resolved against
    )

Metric points go to `hooks.on_metrics` after every step (per-step terms, lr, images_per_s, and
grad_norm when clipping is on) and after every evaluation (val_top1, val_top5, val_loss, train_loss,
and at the end best_val_top1). A stop request saves a checkpoint and returns status "stopped".
Errors callers classify are in `hcd_core.errors`; every failed write into output_dir/checkpoint_dir
is an `OutputWriteError`.

A run is three steps: `build` (data, student, teacher, method, optimiser, trainer), `train` (resume
from the checkpoint, run the trainer) and `export` (the weights of the best validation epoch or the
last, per `training.export`, and the model card that says which; the metrics log is written as
training goes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from hcd_core.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from hcd_core.data import DatasetInfo, build_data
from hcd_core.distributed import Dist, join_group, leave_group
from hcd_core.errors import writing
from hcd_core.export import (
    CARD_NAME,
    METRICS_NAME,
    WEIGHTS_NAME,
    MetricsLog,
    build_model_card,
    write_json,
    write_state_dict,
)
from hcd_core.features import StudentNet, build_student
from hcd_core.hashing import sha256_file, sha256_json
from hcd_core.method_configs import StageConfig
from hcd_core.methods import Method, build_method, count_parameters
from hcd_core.spec import JobSpec, TeacherSpec, required
from hcd_core.teacher import FrozenTeacher, Norm, build_teacher
from hcd_core.training import (
    LrSchedule,
    ModelEma,
    Precision,
    StepRunner,
    Trainer,
    build_optimizer,
    configure_backends,
    resolve_device,
    resolve_precision,
    seed_everything,
    trainable_parameters,
)
from hcd_core.types import MetricPoint, Progress, RunHooks, RunResult, RunStatus

__all__ = ["MetricPoint", "Progress", "RunHooks", "RunResult", "run_job"]


def run_job(
    spec: JobSpec,
    *,
    output_dir: Path,
    checkpoint_dir: Path,
    teacher_weights: Path | None = None,
    teacher_card: dict[str, Any] | None = None,
    hooks: RunHooks | None = None,
    data_root: Path | None = None,
) -> RunResult:
    """Train `spec` to completion or to a stop request; export the student when it completes."""
    spec = spec.resolved()
    hooks = hooks or RunHooks()
    dist = join_group(resolve_device(spec.training.device).type)
    try:
        return _run(spec, dist, output_dir=output_dir, checkpoint_dir=checkpoint_dir, teacher_weights=teacher_weights,
                    teacher_card=teacher_card, hooks=hooks, data_root=data_root)
    finally:
        leave_group(dist)


def _run(
    spec: JobSpec,
    dist: Dist,
    *,
    output_dir: Path,
    checkpoint_dir: Path,
    teacher_weights: Path | None,
    teacher_card: dict[str, Any] | None,
    hooks: RunHooks,
    data_root: Path | None,
) -> RunResult:
    devices = required(spec.training.devices, "devices")
    if devices != dist.world:
        raise ValueError(
            f"training.devices is {devices} but this run has {dist.world} process(es): start it with "
            f"`hcd train --nproc-per-node {devices}` (torchrun), or from a worker with --gpus for {devices} GPUs"
        )
    output_dir, checkpoint_dir = Path(output_dir), Path(checkpoint_dir)
    with writing("the output directory"):
        output_dir.mkdir(parents=True, exist_ok=True)
    with writing("the checkpoint directory"):
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = checkpoint_dir / CHECKPOINT_NAME
    spec_hash = checkpoint_spec_hash(spec)
    # Refuse a foreign checkpoint before spending time on building anything.
    ckpt = load_checkpoint(ckpt_path, expected_spec_hash=spec_hash) if ckpt_path.is_file() else None

    if hooks.on_phase and dist.is_main:
        hooks.on_phase("loading")
    log = MetricsLog(output_dir / METRICS_NAME)  # written by rank 0 alone

    def emit(points: list[MetricPoint]) -> None:
        log.append(points)
        if hooks.on_metrics:
            hooks.on_metrics(points)

    def save(state: dict[str, Any]) -> None:
        if hooks.before_checkpoint:
            hooks.before_checkpoint()  # what was reported so far is durable before we resume past it
        save_checkpoint(ckpt_path, {**state, "spec_hash": spec_hash}, before_replace=hooks.checkpoint_guard)
        if hooks.after_checkpoint:
            hooks.after_checkpoint(ckpt_path)  # in place, and past the guard

    job = build(spec, teacher_weights=teacher_weights, teacher_card=teacher_card, data_root=data_root,
                hooks=hooks, emit=emit, save=save, dist=dist)
    status = train(job, ckpt, log)
    s = job.trainer.state
    result = RunResult(status=status, epoch=s.epoch, step=s.global_step,
                       final_metrics=dict(s.final_metrics), best_metrics=dict(s.best_metrics))
    if status == "completed" and dist.is_main:
        if hooks.on_phase:
            hooks.on_phase("exporting")
        result.artifacts = export(job, output_dir)
    return result


# Training fields added after checkpoints were first written, with the value that means "as before":
# left out of the hash at that value, so a checkpoint written before they existed still resumes.
# `compile` never changes what a step computes, so it is left out at any value.
_HASH_NEUTRAL = {"devices": 1, "data_pipeline": "auto"}


def checkpoint_spec_hash(spec: JobSpec) -> str:
    """The hash a checkpoint is bound to: the resolved spec, less the fields that do not change the run."""
    doc = spec.model_dump(mode="json")
    training = doc["training"]
    training.pop("compile", None)
    for name, neutral in _HASH_NEUTRAL.items():
        if training.get(name) == neutral:
            training.pop(name)
    return sha256_json(doc)


# --------------------------------------------------------------------------- build
@dataclass
class BuiltJob:
    """Everything a run trains and exports, assembled from a resolved spec."""

    spec: JobSpec
    info: DatasetInfo
    device: torch.device
    precision: Precision
    student: StudentNet
    method: Method
    ema: ModelEma | None
    teacher_sha256: str | None
    trainer: Trainer


def build(
    spec: JobSpec,
    *,
    teacher_weights: Path | None,
    teacher_card: dict[str, Any] | None,
    data_root: Path | None,
    hooks: RunHooks,
    emit: Callable[[list[MetricPoint]], None],
    save: Callable[[dict[str, Any]], None],
    dist: Dist | None = None,
) -> BuiltJob:
    """Data, teacher, student, method, optimiser and trainer for a resolved spec.

    Under data parallelism (`dist`) each rank builds the same models (rank 0's are broadcast by
    DDP anyway), takes its part of every batch and trains on its own GPU (`cuda:LOCAL_RANK`).
    """
    t = spec.training
    dist = dist or Dist()
    device = resolve_device(t.device)
    if device.type == "cuda" and dist.active:
        device = torch.device("cuda", dist.local_rank)
    configure_backends(device)
    precision = resolve_precision(t.amp, t.channels_last, device)
    seed_everything(spec.seed)

    train_src, val_src, info = build_data(
        spec.dataset, batch_size=required(t.batch_size, "batch_size"),
        augment=required(t.augment, "augment"), num_workers=required(t.num_workers, "num_workers"),
        data_root=data_root, device=device, shard=dist.shard, pipeline=required(t.data_pipeline, "data_pipeline"),
    )
    # The student first, from an RNG of its own: for a given seed every method starts from the same
    # student weights (paired comparisons), whatever the teacher and the method's extras draw.
    num_stages = spec.method.num_stages if isinstance(spec.method, StageConfig) else 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(student_init_seed(spec.seed))
        student = build_student(spec.student.arch, info.num_classes, info.image_size,
                                num_stages=num_stages, pretrained=spec.student.pretrained)
    teacher, teacher_sha = None, None
    if spec.teacher is not None:
        teacher, teacher_sha = _build_teacher(spec.teacher, info, teacher_weights, teacher_card)
    method = build_method(spec.method, student, teacher, info.num_classes)
    modules: list[nn.Module] = [student, method] + ([teacher] if teacher is not None else [])
    for module in modules:
        module.to(device)
        if precision.channels_last:
            module.to(memory_format=torch.channels_last)

    params = trainable_parameters(student, method)
    optimizer = build_optimizer([student, method], t, grad_scaling=precision.use_scaler)
    ema = ModelEma(student.model, t.ema_decay) if t.ema_decay else None
    runner = StepRunner(student=student, teacher=teacher, method=method, optimizer=optimizer,
                        precision=precision, params=params, grad_clip=t.grad_clip,
                        label_smoothing=t.label_smoothing or 0.0, ema=ema, dist=dist,
                        compile=bool(t.compile))
    if dist.rank:  # the ranks' own random streams from here on (dropout, drop-path); the models are built
        seed_everything(spec.seed + 1_000_003 * dist.rank)
    steps_per_epoch = train_src.num_batches()
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)

    def eval_model() -> nn.Module:
        """What is evaluated and exported: the EMA weights when EMA is on, else the student."""
        return ema.module if ema is not None else student.model

    trainer = Trainer(
        runner=runner, schedule=LrSchedule(t, steps_per_epoch), train_batches=train_src, val_batches=val_src,
        epochs=required(t.epochs, "epochs"), steps_per_epoch=steps_per_epoch, device=device, seed=spec.seed,
        eval_model=eval_model, emit=emit, save=save, should_stop=hooks.should_stop,
        stop_check_every=hooks.stop_check_every, on_phase=hooks.on_phase, on_progress=hooks.on_progress,
        export=required(t.export, "export"), dist=dist,
    )
    return BuiltJob(spec=spec, info=info, device=device, precision=precision, student=student, method=method,
                    ema=ema, teacher_sha256=teacher_sha, trainer=trainer)


def student_init_seed(seed: int) -> int:
    """The seed the student's initialisation draws from: a function of the job's seed alone, and
    another stream than the one seeded by `seed` itself (which the method's extras draw from)."""
    return int.from_bytes(hashlib.sha256(f"student-init:{seed}".encode()).digest()[:8], "big") >> 1


def _build_teacher(
    t: TeacherSpec, info: DatasetInfo, teacher_weights: Path | None, teacher_card: dict[str, Any] | None
) -> tuple[FrozenTeacher, str | None]:
    """The frozen teacher and the sha256 of its weights file (None for timm's pretrained weights).

    Its input size and normalisation come from, in order of precedence: the spec's teacher fields,
    the teacher's model card, timm's pretrained config, the dataset's own.
    """
    source = t.weights.source
    weights: Path | None = Path(teacher_weights) if teacher_weights is not None else None
    pretrained = False
    size: int | None = None
    norm: Norm | None = None
    if source == "timm":
        import timm

        pretrained, weights = True, None
        cfg = timm.get_pretrained_cfg(t.arch)
        if cfg is not None:
            norm = (tuple(cfg.mean), tuple(cfg.std))
            size = int(cfg.input_size[-1])
    else:
        if weights is None and t.weights.source == "file":
            weights = Path(t.weights.path)
        if weights is None:
            raise ValueError(
                f"teacher.weights.source {source!r}: the caller must resolve it to a weights file (teacher_weights=)"
            )
        if not weights.is_file():
            raise FileNotFoundError(f"teacher weights not found: {weights}")
    if teacher_card:
        card_classes = teacher_card.get("num_classes")
        if card_classes is not None and int(card_classes) != info.num_classes:
            raise ValueError(
                f"teacher has {card_classes} classes (its model card) but dataset {info.name!r} has "
                f"{info.num_classes}: train the teacher on the same dataset"
            )
        if teacher_card.get("arch") and teacher_card["arch"] != t.arch:
            raise ValueError(f"teacher.arch is {t.arch!r} but the teacher's model card says {teacher_card['arch']!r}")
        size = teacher_card.get("image_size") or size
        if teacher_card.get("mean") and teacher_card.get("std"):
            norm = (tuple(teacher_card["mean"]), tuple(teacher_card["std"]))
    if t.image_size is not None:
        size = t.image_size
    if t.mean is not None or t.std is not None:
        base_mean, base_std = norm or (info.mean, info.std)
        norm = (tuple(t.mean or base_mean), tuple(t.std or base_std))
    teacher = build_teacher(
        t.arch, info.num_classes, input_size=info.image_size, input_norm=(info.mean, info.std),
        teacher_size=size, teacher_norm=norm, weights_path=weights, pretrained=pretrained,
    )
    return teacher, sha256_file(weights) if weights is not None else None


# --------------------------------------------------------------------------- train
def train(job: BuiltJob, ckpt: dict[str, Any] | None, log: MetricsLog) -> RunStatus:
    """Resume from `ckpt` if given, then run the trainer to completion or a stop request.

    `ckpt` is emptied once loaded, so its tensors do not stay in memory through the run.
    """
    trainer = job.trainer
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
        ckpt.clear()
    # Points after the restart position are redone; a fresh run starts a fresh log.
    if job.trainer.dist.is_main:
        log.truncate_after(trainer.state.global_step if trainer.state.global_step else -1)
    return trainer.run()


# --------------------------------------------------------------------------- export
def export(job: BuiltJob, output_dir: Path) -> dict[str, Path]:
    """Write the student's weights and model card next to the metrics log; name -> path."""
    weights_path = output_dir / WEIGHTS_NAME
    state, exported_epoch = job.trainer.exported_weights()
    student_sha = write_state_dict(state, weights_path)
    s = job.trainer.state
    card = build_model_card(
        spec=job.spec, info=job.info, final_metrics=s.final_metrics, best_metrics=s.best_metrics,
        ema_used=job.ema is not None, device=job.device, precision=job.precision, epochs=s.epoch,
        steps=s.global_step, steps_per_epoch=job.trainer.steps_per_epoch, teacher_sha256=job.teacher_sha256,
        student_sha256=student_sha, extra_params_trained=count_parameters(job.method),
        exported=job.trainer.export, exported_epoch=exported_epoch,
    )
    card_path = output_dir / CARD_NAME
    write_json(card_path, card, what="the model card")
    return {WEIGHTS_NAME: weights_path, CARD_NAME: card_path, METRICS_NAME: output_dir / METRICS_NAME}
