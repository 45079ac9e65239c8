"""The job specification: one pydantic document shared by the CLI (`hcd train`) and `POST /jobs`.

Everything is validated here, before any model is built: allow-listed architectures and datasets,
bounded numbers, method switches with the defaults of `shared/reference/hcd-method.md`.
Training fields left out are filled from the named recipe by `JobSpec.resolved()`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hcd_core.models import ALLOWED_ARCHS
from hcd_core.recipes import RECIPES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Arch = Literal[ALLOWED_ARCHS]  # type: ignore[valid-type]
Weight = Annotated[float, Field(ge=0.0, le=100.0)]
Temperature = Annotated[float, Field(gt=0.0, le=100.0)]


# --------------------------------------------------------------------------- methods
class CeMethod(_Strict):
    """Supervised training, no teacher (trains teachers and baseline students)."""

    name: Literal["ce"] = "ce"


class KdMethod(_Strict):
    name: Literal["kd"] = "kd"
    temperature: Temperature = 4.0
    w_ce: Weight = 1.0
    w_kd: Weight = 1.0


class DkdMethod(_Strict):
    name: Literal["dkd"] = "dkd"
    alpha: Weight = 1.0
    beta: Weight = 8.0
    temperature: Temperature = 4.0
    w_ce: Weight = 1.0
    warmup_epochs: Annotated[int, Field(ge=0, le=1000)] = 20


class DistMethod(_Strict):
    name: Literal["dist"] = "dist"
    beta: Weight = 1.0
    gamma: Weight = 1.0
    temperature: Temperature = 1.0
    w_ce: Weight = 1.0


class _StageMethod(_Strict):
    """Common switches of methods that tap student stages through convolutional projectors."""

    num_stages: Annotated[int, Field(ge=1, le=4)] = 4  # K: the last `num_stages` feature points
    proj_dim: Annotated[int, Field(ge=8, le=8192)] | None = None  # D; None = max(d_s, d_t)


class OfaMethod(_StageMethod):
    name: Literal["ofa"] = "ofa"
    eps: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    temperature: Temperature = 1.0
    w_ce: Weight = 1.0
    w_kd: Weight = 1.0
    w_ofa: Weight = 1.0


class HcdMethod(_StageMethod):
    """HCD; every (R) choice of the method spec is a switch with the spec's default."""

    name: Literal["hcd"] = "hcd"
    num_sub_logits: Annotated[int, Field(ge=1, le=64)] = 4  # n
    temperature: Temperature = 1.0
    cfm: Literal["linear", "mlp"] = "linear"
    fusion: Literal["sum", "mean"] = "sum"
    ol_threshold: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.5
    ol_input: Literal["fused", "raw"] = "fused"
    mask_target: bool = True
    detach_fused: bool = False
    stage_reduce: Literal["sum", "mean"] = "sum"
    w_ce: Weight = 1.0
    w_kd: Weight = 1.0
    w_sdd_ce: Weight = 1.0
    w_sdd_kl: Weight = 1.0
    w_ol: Weight = 1.0


MethodSpec = Annotated[
    Union[CeMethod, KdMethod, DkdMethod, DistMethod, OfaMethod, HcdMethod],
    Field(discriminator="name"),
]
METHOD_NAMES = ("ce", "kd", "dkd", "dist", "ofa", "hcd")


# --------------------------------------------------------------------------- models
class StudentSpec(_Strict):
    arch: Arch
    pretrained: bool = False  # timm pretrained init; needs internet on the host


class FileWeights(_Strict):
    """A safetensors file on the engine's host (the CLI's way; the service confines it)."""

    source: Literal["file"] = "file"
    path: Annotated[str, Field(min_length=1, max_length=1024)]


class JobWeights(_Strict):
    """The exported student of a finished job (service only)."""

    source: Literal["job"] = "job"
    job_id: Annotated[str, Field(min_length=1, max_length=64)]


class ModelWeights(_Strict):
    """An uploaded teacher model (service only)."""

    source: Literal["model"] = "model"
    model_id: Annotated[str, Field(min_length=1, max_length=64)]


class TimmPretrainedWeights(_Strict):
    """timm's own pretrained weights (hosts with internet only)."""

    source: Literal["timm"] = "timm"


TeacherWeights = Annotated[
    Union[FileWeights, JobWeights, ModelWeights, TimmPretrainedWeights],
    Field(discriminator="source"),
]


class TeacherSpec(_Strict):
    arch: Arch
    weights: TeacherWeights
    # Input the teacher was trained with; None = the student's (dataset image_size, dataset mean/std).
    image_size: Annotated[int, Field(ge=16, le=1024)] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = None


# --------------------------------------------------------------------------- data
DatasetName = Literal["cifar10", "cifar100", "imagefolder", "digits", "synthetic"]


class DatasetSpec(_Strict):
    name: DatasetName
    image_size: Annotated[int, Field(ge=16, le=1024)] = 32
    root: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    download: bool = False  # torchvision download for cifar; users' hosts only
    # synthetic only: a learnable random task of this shape
    num_classes: Annotated[int, Field(ge=2, le=1000)] | None = None
    train_size: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    val_size: Annotated[int, Field(ge=1, le=1_000_000)] | None = None

    @model_validator(mode="after")
    def _check(self) -> "DatasetSpec":
        if self.name in ("cifar10", "cifar100", "imagefolder") and self.root is None:
            raise ValueError(f"dataset.root is required for dataset {self.name!r}")
        if self.name != "synthetic" and (self.num_classes or self.train_size or self.val_size):
            raise ValueError("dataset.num_classes/train_size/val_size apply to the synthetic dataset only")
        if self.download and self.name not in ("cifar10", "cifar100"):
            raise ValueError("dataset.download applies to cifar10/cifar100 only")
        return self


# --------------------------------------------------------------------------- training
class TrainingSpec(_Strict):
    """Every field but `recipe` may be left out: the recipe fills it."""

    recipe: Literal[tuple(RECIPES)] = "quick"  # type: ignore[valid-type]
    epochs: Annotated[int, Field(ge=1, le=1000)] | None = None
    batch_size: Annotated[int, Field(ge=1, le=4096)] | None = None
    lr: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    min_lr: Annotated[float, Field(ge=0.0, le=10.0)] | None = None
    optimizer: Literal["sgd", "adamw"] | None = None
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    nesterov: bool | None = None
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    schedule: Literal["cosine", "step"] | None = None
    step_milestones: tuple[Annotated[int, Field(ge=1, le=1000)], ...] | None = None  # epochs
    step_gamma: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    warmup_epochs: Annotated[int, Field(ge=0, le=1000)] | None = None
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    grad_clip: Annotated[float, Field(gt=0.0, le=1e4)] | None = None  # max global norm; None = off
    ema_decay: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None  # None/0 = no EMA
    amp: Literal["auto", "bf16", "fp16", "off"] | None = None  # auto: bf16 on CUDA, off on CPU
    channels_last: bool | None = None  # honoured on CUDA only
    augment: Literal["none", "flip", "crop_flip", "rrc_flip"] | None = None
    num_workers: Annotated[int, Field(ge=0, le=64)] | None = None
    max_steps_per_epoch: Annotated[int, Field(ge=1, le=10_000_000)] | None = None  # None = full epoch
    device: Literal["auto", "cpu", "cuda"] | None = None


# --------------------------------------------------------------------------- job
class JobSpec(_Strict):
    method: MethodSpec
    student: StudentSpec
    teacher: TeacherSpec | None = None
    dataset: DatasetSpec
    training: TrainingSpec = TrainingSpec()
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 42

    @model_validator(mode="after")
    def _check_teacher(self) -> "JobSpec":
        if self.method.name == "ce" and self.teacher is not None:
            raise ValueError("teacher must be absent for method 'ce'")
        if self.method.name != "ce" and self.teacher is None:
            raise ValueError(f"teacher is required for method {self.method.name!r}")
        t = self.training
        if t.min_lr is not None and t.lr is not None and t.min_lr > t.lr:
            raise ValueError("training.min_lr must not exceed training.lr")
        if t.warmup_epochs is not None and t.epochs is not None and t.warmup_epochs > t.epochs:
            raise ValueError("training.warmup_epochs must not exceed training.epochs")
        return self

    def resolved(self) -> "JobSpec":
        """The same spec with every training field filled from its recipe (user values win)."""
        recipe = RECIPES[self.training.recipe]
        given = self.training.model_dump(exclude_none=True)
        filled = {**recipe, **given}
        filled["warmup_epochs"] = min(filled["warmup_epochs"], filled["epochs"])
        return self.model_copy(update={"training": TrainingSpec(**filled)})


def parse_spec(data: dict) -> JobSpec:
    """Validate a spec document; raises pydantic.ValidationError naming the faulty field."""
    return JobSpec.model_validate(data)
