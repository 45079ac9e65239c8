"""Training: device/AMP policy, optimiser, per-iteration LR schedule, EMA, one training step, and
the epoch loop (`Trainer`) with evaluation, metric hooks, stop polling and whole-state checkpoints.

The pieces above `Trainer` are small and reused by the benchmarks; `hcd_core.engine.run_job`
assembles models, data and a `Trainer` from a spec.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from hcd_core.checkpoint import capture_rng_state, restore_rng_state
from hcd_core.data import BatchSource
from hcd_core.distributed import Dist
from hcd_core.evaluate import evaluate
from hcd_core.features import StudentNet, TeacherOutput
from hcd_core.methods import Method
from hcd_core.spec import TrainingSpec, required
from hcd_core.teacher import FrozenTeacher
from hcd_core.types import MetricPoint, Progress, RunStatus


# --------------------------------------------------------------------------- device, precision, seeds
def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    """How a step runs on a device: autocast dtype (None = fp32), GradScaler, memory format."""

    device_type: str
    dtype: torch.dtype | None
    use_scaler: bool
    channels_last: bool

    def autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device_type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None)

    def to_input(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def describe(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def resolve_precision(amp: str | None, channels_last: bool | None, device: torch.device) -> Precision:
    """amp "auto": bf16 on CUDA, fp32 on CPU. channels_last is honoured on CUDA only."""
    cuda = device.type == "cuda"
    amp = amp or "auto"
    dtypes: dict[str, torch.dtype | None] = {
        "auto": torch.bfloat16 if cuda else None, "bf16": torch.bfloat16, "fp16": torch.float16, "off": None,
    }
    dtype = dtypes[amp]
    return Precision(device.type, dtype, use_scaler=dtype is torch.float16, channels_last=bool(channels_last) and cuda)


def configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- optimiser and schedule
def trainable_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """Parameters that require grad, each once (a method may hold the student as a submodule)."""
    seen: set[int] = set()
    out: list[nn.Parameter] = []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


# Normalisation layers: their parameters (scale and shift) are never decayed. timm's own norm layers
# (LayerNorm2d, BatchNormAct2d, GroupNorm1, ...) subclass these; RmsNorm-style ones are caught by name.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm,
)
_NORM_NAME = re.compile(r"Norm(\d?d)?$")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or bool(_NORM_NAME.search(type(module).__name__))


def _no_weight_decay_names(module: nn.Module) -> set[str]:
    """Parameter names (as `module.named_parameters()` gives them) that a submodule's own
    `no_weight_decay()` lists (timm: pos_embed, cls_token, ...), each prefixed with its path."""
    names: set[str] = set()
    for prefix, sub in module.named_modules():
        listed = getattr(sub, "no_weight_decay", None)
        if callable(listed):
            names.update(f"{prefix}.{n}" if prefix else str(n) for n in listed())
    return names


@dataclass(frozen=True)
class DecayGroups:
    """Trainable parameters split for weight decay, each once, in module order; names alongside."""

    decay: list[nn.Parameter]
    no_decay: list[nn.Parameter]
    decay_names: list[str]
    no_decay_names: list[str]


def weight_decay_groups(*modules: nn.Module) -> DecayGroups:
    """No decay for every bias (any shape: StackedLinear's (K, out) too), every parameter of a
    normalisation layer, every 1-D parameter (timm's convention: layer scales such as ConvNeXt's
    `gamma` too) and every parameter a submodule's `no_weight_decay()` names (or a module it names);
    decay for the rest. Parameters that do not require grad are left out; a parameter reached from
    several modules counts once (names are those of the first module, prefixed `i.`).
    """
    seen: set[int] = set()
    groups = DecayGroups([], [], [], [])
    for index, module in enumerate(modules):
        skip = _no_weight_decay_names(module)
        norm_params = {id(p) for m in module.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
        for name, param in module.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            no_decay = (
                name.rsplit(".", 1)[-1] == "bias"
                or param.ndim <= 1
                or id(param) in norm_params
                or any(name == n or name.startswith(n + ".") for n in skip)
            )
            params, names = (
                (groups.no_decay, groups.no_decay_names) if no_decay else (groups.decay, groups.decay_names)
            )
            params.append(param)
            names.append(f"{index}.{name}")
    return groups


def build_optimizer(
    modules: list[nn.Module], t: TrainingSpec, *, grad_scaling: bool = False
) -> torch.optim.Optimizer:
    """SGD (Nesterov per spec) or AdamW over the trainable parameters of `modules`, with weight decay
    on the groups of `weight_decay_groups` (none on biases, norms and `no_weight_decay()` names).

    On CUDA the fused kernels are used (one launch per step instead of several per parameter group:
    small students make the step launch-bound), except fused SGD under fp16 grad scaling: in torch
    2.11 it advances its momentum on the overflow steps the scaler must skip, which turns the
    weights into NaN (seen on an H100). Fused AdamW honours the skip.
    """
    split = weight_decay_groups(*modules)
    params = split.decay + split.no_decay
    on_cuda = bool(params) and all(p.is_cuda for p in params)
    groups: list[dict[str, Any]] = [
        {"params": split.decay, "weight_decay": required(t.weight_decay, "weight_decay")},
        {"params": split.no_decay, "weight_decay": 0.0},
    ]
    lr = required(t.lr, "lr")
    if t.optimizer == "sgd":
        momentum = required(t.momentum, "momentum")
        fused = on_cuda and not grad_scaling
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=bool(t.nesterov and momentum > 0),
                               fused=fused or None)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=on_cuda or None)
    raise ValueError(f"unknown optimizer {t.optimizer!r}")


class LrSchedule:
    """Learning rate as a pure function of the global step (so resuming needs only the step).

    Linear warm-up over `warmup_epochs`, then cosine to `min_lr` or step decay at `step_milestones`
    (epochs); stepped per iteration.
    """

    def __init__(self, t: TrainingSpec, steps_per_epoch: int) -> None:
        epochs = required(t.epochs, "epochs")
        self.base, self.min_lr = required(t.lr, "lr"), t.min_lr or 0.0
        self.kind = t.schedule
        self.steps_per_epoch = steps_per_epoch
        self.total = max(1, epochs * steps_per_epoch)
        self.warmup = min(t.warmup_epochs or 0, epochs) * steps_per_epoch
        self.milestones = [m * steps_per_epoch for m in (t.step_milestones or ())]
        self.gamma = t.step_gamma if t.step_gamma is not None else 0.1

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.base * (step + 1) / self.warmup
        if self.kind == "cosine":
            span = max(1, self.total - self.warmup)
            progress = min(1.0, (step - self.warmup) / span)
            return self.min_lr + (self.base - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "step":
            return self.base * self.gamma ** sum(step >= m for m in self.milestones)
        raise ValueError(f"unknown schedule {self.kind!r}")

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "base": self.base, "min_lr": self.min_lr, "total": self.total,
                "warmup": self.warmup, "milestones": list(self.milestones), "gamma": self.gamma}


# --------------------------------------------------------------------------- EMA
class ModelEma:
    """Exponential moving average of a model's floating-point state (weights and BN statistics)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_state = self.module.state_dict()
        float_ema, float_cur = [], []
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if target.dtype.is_floating_point:
                float_ema.append(target)
                float_cur.append(value.detach())
            else:
                target.copy_(value)  # integer buffers (num_batches_tracked)
        torch._foreach_lerp_(float_ema, float_cur, 1.0 - self.decay)

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.module.load_state_dict(state)


# --------------------------------------------------------------------------- one step
class DistillStep(nn.Module):
    """The trainable part of a step: the student's forward and the method's loss terms. This is
    what DDP wraps (the student and the method's extras together) and what `compile` compiles;
    the frozen teacher runs before it, outside DDP."""

    def __init__(self, student: StudentNet, method: Method, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.student, self.method, self.label_smoothing = student, method, label_smoothing

    def forward(self, x: Tensor, teacher_out: TeacherOutput | None, y: Tensor, epoch: Tensor) -> dict[str, Tensor]:
        s_out = self.student(x, with_features=self.method.needs_features)
        terms: dict[str, Tensor] = self.method(s_out, teacher_out, y, epoch=epoch,
                                               label_smoothing=self.label_smoothing)
        return terms


class StepRunner:
    """One optimisation step: teacher forward, student forward, method terms, backward, update.

    Returns the method's terms detached (still on the device: nothing here waits for the GPU), plus
    `grad_norm`, the global gradient norm before clipping, when `grad_clip` is set.

    `dist`: under data parallelism the student and the method's extras run inside DDP (gradients
    averaged across ranks during backward). `compile`: the student + method step and the teacher
    each go through `torch.compile` (one graph each after warm-up; the optimiser stays eager).
    """

    def __init__(
        self,
        *,
        student: StudentNet,
        teacher: FrozenTeacher | None,
        method: Method,
        optimizer: torch.optim.Optimizer,
        precision: Precision,
        params: list[nn.Parameter],
        grad_clip: float | None = None,
        label_smoothing: float = 0.0,
        ema: ModelEma | None = None,
        dist: Dist | None = None,
        compile: bool = False,
    ) -> None:
        self.student, self.teacher, self.method = student, teacher, method
        self.optimizer, self.precision, self.params = optimizer, precision, params
        self.grad_clip, self.label_smoothing, self.ema = grad_clip, label_smoothing, ema
        self.scaler = torch.amp.GradScaler(precision.device_type, enabled=precision.use_scaler)
        self.dist = dist or Dist()
        step: nn.Module = DistillStep(student, method, label_smoothing)
        if self.dist.active:
            step = DDP(step, device_ids=None)  # buffers (BN statistics) follow rank 0 at each forward
        self.step: Callable[..., dict[str, Tensor]] = torch.compile(step) if compile else step
        self.teacher_forward: Callable[[Tensor], TeacherOutput] | None = None
        if teacher is not None:
            self.teacher_forward = torch.compile(teacher) if compile else teacher

    def __call__(self, x: Tensor, y: Tensor, epoch: float) -> dict[str, Tensor]:
        p = self.precision
        x = p.to_input(x)
        with p.autocast():
            t_out = self.teacher_forward(x) if self.teacher_forward is not None else None
            # The epoch as a 0-d host tensor: a compiled step takes it as an input, not a constant.
            terms = self.step(x, t_out, y, torch.tensor(epoch, dtype=torch.float32))
        self.optimizer.zero_grad(set_to_none=True)
        loss: Tensor = self.scaler.scale(terms["loss"])
        loss.backward()  # type: ignore[no-untyped-call]
        out = {k: v.detach() for k, v in terms.items()}
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            # The global norm before clipping, reported with the step's terms (no extra host sync).
            out["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip).detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.student.model)
        return out


@dataclass
class PendingStep:
    """A queued step whose terms are not read yet: they are read (one host sync) once the next step
    is queued, so the host never waits for the GPU to finish the step it just launched."""

    names: list[str]
    values: Tensor  # the terms stacked, on the device (averaged across ranks once `handle` is done)
    handle: Any  # the pending all-reduce, or None
    lr: float
    step: int
    epoch: int
    images: int  # images in the global batch

    def read(self) -> dict[str, float]:
        if self.handle is not None:
            self.handle.wait()
        values: list[float] = self.values.tolist()
        return dict(zip(self.names, values, strict=True))


def stack_terms(terms: dict[str, Tensor]) -> dict[str, float]:
    """All terms to Python floats with one host sync."""
    names = list(terms)
    values: list[float] = torch.stack([terms[k].float().reshape(()) for k in names]).tolist()
    return dict(zip(names, values, strict=True))


# --------------------------------------------------------------------------- the loop
@dataclass
class LoopState:
    """Where the run is; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0
    global_step: int = 0
    epoch_seed: int | None = None  # the current epoch's data seed (None between epochs)
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    final_metrics: dict[str, float] = field(default_factory=dict)
    best_metrics: dict[str, float] = field(default_factory=dict)


class Trainer:
    """Runs epochs of `StepRunner` steps, evaluates the student after each, checkpoints, reports.

    `emit(points)` receives lists of metric points; `should_stop()` is polled every
    `stop_check_every` steps; `save(state)` writes a checkpoint (atomic, by the caller's code);
    `on_progress` gets a `Progress` when training starts, after every step and when it completes.
    `export` ("best" or "last") says which weights `exported_weights()` gives: with "best", a copy of
    the evaluated model (the EMA when on) is kept at each new best val_top1, and checkpointed.
    """

    def __init__(
        self,
        *,
        runner: StepRunner,
        schedule: LrSchedule,
        train_batches: BatchSource,
        val_batches: BatchSource,
        epochs: int,
        steps_per_epoch: int,
        device: torch.device,
        seed: int,
        eval_model: Callable[[], nn.Module],
        emit: Callable[[list[MetricPoint]], None],
        save: Callable[[dict[str, Any]], None],
        should_stop: Callable[[], bool] | None = None,
        stop_check_every: int = 10,
        on_phase: Callable[[str], None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        export: str = "best",
        dist: Dist | None = None,
    ) -> None:
        if export not in ("best", "last"):
            raise ValueError(f"export must be 'best' or 'last', got {export!r}")
        self.runner, self.schedule = runner, schedule
        self.train_batches, self.val_batches = train_batches, val_batches
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.device, self.eval_model = device, eval_model
        self.emit, self.save = emit, save
        self.should_stop, self.stop_check_every = should_stop, max(1, stop_check_every)
        self.on_phase, self.on_progress = on_phase, on_progress
        # Data order and augmentation: each epoch's seed is drawn from this generator (checkpointed).
        self.data_gen = torch.Generator().manual_seed(seed)
        self.state = LoopState()
        self.export = export
        # export "best": a CPU copy of the evaluated model's state at the best epoch (checkpointed).
        self.best_weights: dict[str, Tensor] | None = None
        self.dist = dist or Dist()
        self._pending: PendingStep | None = None
        self._last_report = time.perf_counter()

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        r = self.runner
        s = self.state
        return {
            "student": r.student.state_dict(),
            "method": r.method.state_dict(),
            "optimizer": r.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": r.scaler.state_dict(),
            "ema": r.ema.state_dict() if r.ema is not None else None,
            "rng": capture_rng_state(),
            "data_generator": self.data_gen.get_state(),
            "best_weights": self.best_weights,
            "loop": {
                "epoch": s.epoch, "step_in_epoch": s.step_in_epoch, "global_step": s.global_step,
                "epoch_seed": s.epoch_seed, "epoch_loss_sum": s.epoch_loss_sum,
                "epoch_loss_count": s.epoch_loss_count,
                "final_metrics": dict(s.final_metrics), "best_metrics": dict(s.best_metrics),
            },
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        r = self.runner
        r.student.load_state_dict(ckpt["student"])
        r.method.load_state_dict(ckpt["method"])
        r.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            r.scaler.load_state_dict(ckpt["scaler"])
        if r.ema is not None:
            if ckpt.get("ema") is None:
                raise ValueError("checkpoint has no EMA state but the spec enables EMA")
            r.ema.load_state_dict(ckpt["ema"])
        self.data_gen.set_state(ckpt["data_generator"])
        self.state = LoopState(**ckpt["loop"])
        self.best_weights = ckpt.get("best_weights")
        if self.export == "best" and self.state.best_metrics and self.best_weights is None:
            raise ValueError("checkpoint has no best-epoch weights but the spec exports the best epoch")
        ranks = ckpt.get("rng_ranks")
        # Each rank continues its own RNG streams (exact resume for the same number of processes).
        restore_rng_state(ranks[self.dist.rank] if ranks and len(ranks) == self.dist.world else ckpt["rng"])

    # ----------------------------------------------------------------- running
    def _point(self, name: str, value: float, epoch: int, step: int | None = None) -> MetricPoint:
        step = self.state.global_step if step is None else step
        return MetricPoint(name=name, value=float(value), step=step, epoch=epoch, ts=time.time())

    def _phase(self, name: str) -> None:
        if self.on_phase is not None and self.dist.is_main:
            self.on_phase(name)

    def _progress(self, epoch: int) -> None:
        if self.on_progress is not None and self.dist.is_main:
            self.on_progress(Progress(epoch=epoch, epochs=self.epochs, step=self.state.global_step,
                                      total_steps=self.total_steps))

    def run(self) -> RunStatus:
        """Train to the end ("completed") or until a stop request ("stopped")."""
        s = self.state
        self._phase("training")
        self._progress(s.epoch)
        self._last_report = time.perf_counter()
        while s.epoch < self.epochs:
            if s.step_in_epoch == 0 or s.epoch_seed is None:
                s.epoch_seed = int(torch.randint(0, 2**62, (1,), generator=self.data_gen).item())
            remaining = self.steps_per_epoch - s.step_in_epoch
            for x, y in itertools.islice(self.train_batches.batches(s.epoch_seed, s.step_in_epoch), remaining):
                lr = self.schedule.apply(self.runner.optimizer, s.global_step)
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                terms = self.runner(x, y, epoch=s.epoch + s.step_in_epoch / self.steps_per_epoch)
                names = list(terms)
                values, handle = self.dist.mean_async(torch.stack([terms[k].float().reshape(()) for k in names]))
                s.step_in_epoch += 1
                s.global_step += 1
                self._report()  # the previous step's terms, now that this one is queued
                self._pending = PendingStep(names, values, handle, lr, s.global_step, s.epoch,
                                            images=y.shape[0] * self.dist.world)
                if self._stop_requested():
                    self._report()
                    self._checkpoint()
                    return "stopped"
            self._report()
            self._end_epoch()
            self._last_report = time.perf_counter()  # evaluation time is not training throughput
        self._progress(self.epochs)
        return "completed"

    def _stop_requested(self) -> bool:
        """Polled every `stop_check_every` steps; under data parallelism rank 0 asks and every rank
        takes the answer (the same steps on every rank, so the collective always matches)."""
        if self.state.global_step % self.stop_check_every:
            return False
        if not self.dist.active:
            return self.should_stop is not None and self.should_stop()
        return self.dist.any(self.dist.is_main and self.should_stop is not None and self.should_stop())

    def _report(self) -> None:
        """Read the pending step's terms (one host sync) and report them."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        s = self.state
        values = pending.read()
        now = time.perf_counter()
        images_per_s = pending.images / max(now - self._last_report, 1e-9)
        self._last_report = now
        s.epoch_loss_sum += values["loss"]
        s.epoch_loss_count += 1
        points = [self._point(k, v, pending.epoch, pending.step) for k, v in values.items()]
        points += [self._point("lr", pending.lr, pending.epoch, pending.step),
                   self._point("images_per_s", images_per_s, pending.epoch, pending.step)]
        self._emit(points)
        if self.on_progress is not None and self.dist.is_main:
            self.on_progress(Progress(epoch=pending.epoch, epochs=self.epochs, step=pending.step,
                                      total_steps=self.total_steps))

    def _emit(self, points: list[MetricPoint]) -> None:
        if self.dist.is_main:
            self.emit(points)

    def _checkpoint(self) -> None:
        """Every rank's RNG state to rank 0, which writes the checkpoint."""
        rng = self.dist.gather(capture_rng_state())
        if self.dist.is_main:
            state = self.state_dict()
            if self.dist.active:
                state["rng_ranks"] = rng
            self.save(state)

    def exported_weights(self) -> tuple[dict[str, Tensor], int]:
        """The state dict to export and its (0-based) epoch: the best epoch's or the last one's."""
        s = self.state
        if self.export == "best" and self.best_weights is not None:
            return self.best_weights, int(s.best_metrics["epoch"])
        return self.eval_model().state_dict(), int(s.final_metrics.get("epoch", max(s.epoch - 1, 0)))

    def _end_epoch(self) -> None:
        s = self.state
        self._phase("evaluating")
        # Ranks agree on every weight and statistic before evaluating (rank 0's is what is saved).
        self.dist.broadcast_state(self.runner.student)
        self.dist.broadcast_state(self.runner.method)
        if self.runner.ema is not None:
            self.dist.broadcast_state(self.runner.ema.module)
        # fp32, default memory format: exactly what evaluating the exported weights does.
        metrics = evaluate(self.eval_model(), self.val_batches, self.device, reduce=self.dist.sum_host)
        train_loss = s.epoch_loss_sum / max(1, s.epoch_loss_count)
        s.final_metrics = {**metrics, "train_loss": train_loss, "epoch": float(s.epoch)}
        if not s.best_metrics or metrics["val_top1"] > s.best_metrics["val_top1"]:
            s.best_metrics = {"val_top1": metrics["val_top1"], "val_top5": metrics["val_top5"], "epoch": float(s.epoch)}
            if self.export == "best":
                state = self.eval_model().state_dict()
                self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        points = [self._point(k, metrics[k], s.epoch) for k in ("val_top1", "val_top5", "val_loss")]
        points.append(self._point("train_loss", train_loss, s.epoch))
        if s.epoch + 1 == self.epochs:
            points.append(self._point("best_val_top1", s.best_metrics["val_top1"], s.epoch))
        s.epoch += 1
        s.step_in_epoch, s.epoch_seed = 0, None
        s.epoch_loss_sum, s.epoch_loss_count = 0.0, 0
        self._emit(points)
        self._checkpoint()
        if s.epoch < self.epochs:
            self._phase("training")
