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
`before_checkpoint()` runs before every checkpoint is written (every epoch and on stop).
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
    # Called before each checkpoint is written: a resumed run never re-reports the points before
    # its checkpoint, so a caller that buffers them must persist them here (the worker does).
    before_checkpoint: Callable[[], None] | None = None
    stop_check_every: int = 10


@dataclass
class RunResult:
    status: Literal["completed", "stopped"]
    epoch: int  # epochs completed
    step: int
    final_metrics: dict[str, float] = field(default_factory=dict)  # last evaluation
    best_metrics: dict[str, float] = field(default_factory=dict)  # best val_top1 and its epoch
    artifacts: dict[str, Path] = field(default_factory=dict)  # name -> path, when completed


# --------------------------------------------------------------------------- implementation
def _teacher_setup(spec: JobSpec, info, teacher_weights: Path | None, teacher_card: dict | None):
    """(weights path or None, pretrained flag, teacher image size or None, teacher norm or None)."""
    t = spec.teacher
    assert t is not None
    source = t.weights.source
    weights: Path | None = Path(teacher_weights) if teacher_weights is not None else None
    pretrained = False
    size, norm = None, None
    if source == "timm":
        import timm

        pretrained, weights = True, None
        cfg = timm.get_pretrained_cfg(t.arch)
        if cfg is not None:
            norm = (tuple(cfg.mean), tuple(cfg.std))
            size = int(cfg.input_size[-1])
    else:
        if weights is None and source == "file":
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
    return weights, pretrained, size, norm


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
    import timm  # noqa: F401  (import cost paid here, not at module import)
    import torch

    from hcd_core.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, spec_hash
    from hcd_core.data import build_data
    from hcd_core.export import (CARD_NAME, CARD_VERSION, METRICS_NAME, WEIGHTS_NAME, MetricsLog,
                                 runtime_versions, write_json, write_student_weights)
    from hcd_core.features import build_student
    from hcd_core.hashing import sha256_file
    from hcd_core.methods import build_method, count_parameters
    from hcd_core.teacher import build_teacher
    from hcd_core.training import (LrSchedule, ModelEma, StepRunner, Trainer, build_optimizer,
                                   configure_backends, resolve_device, resolve_precision, seed_everything,
                                   trainable_parameters)

    spec = spec.resolved()
    hooks = hooks or RunHooks()
    phase = hooks.on_phase or (lambda _: None)
    output_dir, checkpoint_dir = Path(output_dir), Path(checkpoint_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    spec_doc = spec.model_dump(mode="json")
    digest = spec_hash(spec_doc)
    ckpt_path = checkpoint_dir / CHECKPOINT_NAME
    # Refuse a foreign checkpoint before spending time on building anything.
    ckpt = load_checkpoint(ckpt_path, expected_spec_hash=digest) if ckpt_path.is_file() else None

    phase("loading")
    t = spec.training
    device = resolve_device(t.device)
    configure_backends(device)
    precision = resolve_precision(t.amp, t.channels_last, device)
    seed_everything(spec.seed)

    train_src, val_src, info = build_data(
        spec.dataset, batch_size=t.batch_size, augment=t.augment, num_workers=t.num_workers, data_root=data_root
    )
    teacher = None
    teacher_sha = None
    if spec.teacher is not None:
        weights, pretrained, t_size, t_norm = _teacher_setup(spec, info, teacher_weights, teacher_card)
        teacher = build_teacher(
            spec.teacher.arch, info.num_classes, input_size=info.image_size, input_norm=(info.mean, info.std),
            teacher_size=t_size, teacher_norm=t_norm, weights_path=weights, pretrained=pretrained,
        )
        teacher_sha = sha256_file(weights) if weights is not None else None
    num_stages = getattr(spec.method, "num_stages", 4)
    student = build_student(spec.student.arch, info.num_classes, info.image_size,
                            num_stages=num_stages, pretrained=spec.student.pretrained)
    method = build_method(spec.method, student, teacher, info.num_classes)
    student.to(device)
    method.to(device)
    if teacher is not None:
        teacher.to(device)
    if precision.channels_last:
        student.to(memory_format=torch.channels_last)
        method.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)

    params = trainable_parameters(student, method)
    optimizer = build_optimizer(params, t, grad_scaling=precision.use_scaler)
    ema = ModelEma(student.model, t.ema_decay) if t.ema_decay else None
    runner = StepRunner(student=student, teacher=teacher, method=method, optimizer=optimizer,
                        precision=precision, params=params, grad_clip=t.grad_clip,
                        label_smoothing=t.label_smoothing or 0.0, ema=ema)
    steps_per_epoch = train_src.num_batches()
    if t.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    schedule = LrSchedule(t, steps_per_epoch)

    log = MetricsLog(output_dir / METRICS_NAME)

    def emit(points: list[MetricPoint]) -> None:
        log.append(points)
        if hooks.on_metrics:
            hooks.on_metrics(points)

    def save(state: dict) -> None:
        if hooks.before_checkpoint:
            hooks.before_checkpoint()  # what was reported so far is durable before we resume past it
        save_checkpoint(ckpt_path, {**state, "spec_hash": digest})

    def progress(epoch: int, epochs: int, step: int, total: int) -> None:
        if hooks.on_progress:
            hooks.on_progress(Progress(epoch=epoch, epochs=epochs, step=step, total_steps=total))

    def eval_model():
        return ema.module if ema is not None else student.model

    trainer = Trainer(
        runner=runner, schedule=schedule, train_batches=train_src, val_batches=val_src, epochs=t.epochs,
        steps_per_epoch=steps_per_epoch, device=device, seed=spec.seed, eval_model=eval_model, emit=emit,
        save=save, should_stop=hooks.should_stop, stop_check_every=hooks.stop_check_every,
        on_phase=hooks.on_phase, on_progress=progress,
    )
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
        del ckpt
    # Points after the restart position are redone; a fresh run starts a fresh log.
    log.truncate_after(trainer.state.global_step if trainer.state.global_step else -1)

    status = trainer.run()
    s = trainer.state
    if status == "stopped":
        return RunResult(status="stopped", epoch=s.epoch, step=s.global_step,
                         final_metrics=dict(s.final_metrics), best_metrics=dict(s.best_metrics))

    phase("exporting")
    weights_path = output_dir / WEIGHTS_NAME
    student_sha = write_student_weights(eval_model(), weights_path)
    card = {
        "card_version": CARD_VERSION,
        "arch": spec.student.arch,
        "num_classes": info.num_classes,
        "image_size": info.image_size,
        "mean": list(info.mean),
        "std": list(info.std),
        "class_names": info.class_names,
        "dataset": info.name,
        "method": spec.method.name,
        "final_metrics": dict(s.final_metrics),
        "best_metrics": dict(s.best_metrics),
        "ema_used": ema is not None,
        "spec": spec_doc,
        "seed": spec.seed,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision.describe(),
        "channels_last": precision.channels_last,
        "epochs": s.epoch,
        "steps": s.global_step,
        "steps_per_epoch": steps_per_epoch,
        "effective_batch_size": t.batch_size,
        "versions": runtime_versions(),
        "teacher": None if spec.teacher is None else {
            "arch": spec.teacher.arch, "source": spec.teacher.weights.source, "sha256": teacher_sha,
        },
        "teacher_sha256": teacher_sha,
        "student_sha256": student_sha,
        "extra_params_trained": count_parameters(method),
        "weights_file": WEIGHTS_NAME,
    }
    card_path = output_dir / CARD_NAME
    write_json(card_path, card)
    return RunResult(
        status="completed", epoch=s.epoch, step=s.global_step,
        final_metrics=dict(s.final_metrics), best_metrics=dict(s.best_metrics),
        artifacts={WEIGHTS_NAME: weights_path, CARD_NAME: card_path, METRICS_NAME: output_dir / METRICS_NAME},
    )
