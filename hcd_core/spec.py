"""The job specification: one pydantic document shared by the CLI (`hcd train`) and `POST /jobs`.

Everything is validated here, before any model is built: allow-listed architectures and datasets,
bounded numbers, method switches with the defaults of `shared/reference/hcd-method.md`.
Training fields left out are filled from the named recipe by `JobSpec.resolved()`.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, TypeVar, Union, get_args

from pydantic import Field, model_validator

from hcd_core.dataset_facts import FIXED_NUM_CLASSES, SYNTHETIC_NUM_CLASSES
from hcd_core.method_configs import METHOD_NAMES, MethodConfig
from hcd_core.models import ALLOWED_ARCHS
from hcd_core.recipes import RECIPES
from hcd_core.spec_base import SpecModel

__all__ = [
    "DATASET_NAMES", "METHOD_NAMES", "DatasetSpec", "FileWeights", "JobSpec", "JobWeights", "MethodConfig",
    "ModelWeights", "StudentSpec", "TeacherSpec", "TeacherWeights", "TimmPretrainedWeights", "TrainingSpec",
    "parse_spec", "required",
]

T = TypeVar("T")

Arch = Literal[ALLOWED_ARCHS]  # type: ignore[valid-type]
ImageSize = Annotated[int, Field(ge=16, le=1024)]
Mean = Annotated[float, Field(ge=-10.0, le=10.0)]
Std = Annotated[float, Field(gt=0.0, le=10.0)]
Milestones = Annotated[tuple[Annotated[int, Field(ge=1, le=1000)], ...], Field(max_length=64)]


# --------------------------------------------------------------------------- models
class StudentSpec(SpecModel):
    arch: Arch
    pretrained: bool = False  # timm pretrained init; needs internet on the host


class FileWeights(SpecModel):
    """A safetensors file on the engine's host (the CLI's way; the service confines it)."""

    source: Literal["file"] = "file"
    path: Annotated[str, Field(min_length=1, max_length=1024)]


class JobWeights(SpecModel):
    """The exported student of a finished job (service only)."""

    source: Literal["job"] = "job"
    job_id: Annotated[str, Field(min_length=1, max_length=64)]


class ModelWeights(SpecModel):
    """An uploaded teacher model (service only)."""

    source: Literal["model"] = "model"
    model_id: Annotated[str, Field(min_length=1, max_length=64)]


class TimmPretrainedWeights(SpecModel):
    """timm's own pretrained weights (hosts with internet only)."""

    source: Literal["timm"] = "timm"


TeacherWeights = Annotated[
    Union[FileWeights, JobWeights, ModelWeights, TimmPretrainedWeights],
    Field(discriminator="source"),
]


class TeacherSpec(SpecModel):
    arch: Arch
    weights: TeacherWeights
    # Input the teacher was trained with; None = the student's (dataset image_size, dataset mean/std).
    image_size: ImageSize | None = None
    mean: tuple[Mean, Mean, Mean] | None = None
    std: tuple[Std, Std, Std] | None = None


# --------------------------------------------------------------------------- data
DatasetName = Literal["cifar10", "cifar100", "imagefolder", "digits", "digits_hard", "synthetic"]
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)


class DatasetSpec(SpecModel):
    name: DatasetName
    image_size: ImageSize = 32
    root: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    # imagefolder: a dataset uploaded to the service (POST /datasets), instead of a root; the worker
    # unpacks it and gives its folder to the engine as `data_root`.
    dataset_id: uuid.UUID | None = None
    download: bool = False  # torchvision download for cifar; users' hosts only
    # synthetic only: a learnable random task of this shape (None: 10 classes, 2000 / 500, noise 0.2)
    num_classes: Annotated[int, Field(ge=2, le=1000)] | None = None
    train_size: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    val_size: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    noise: Annotated[float, Field(ge=0.0, le=10.0)] | None = None  # std of the per-pixel noise
    # What is evaluated: the test split, or a fixed 20% of the training set that is then not trained
    # on ("holdout", for tuning without looking at the test set; independent of the job seed).
    eval_split: Literal["test", "holdout"] = "test"

    @model_validator(mode="after")
    def _check(self) -> "DatasetSpec":
        if self.dataset_id is not None:
            if self.name != "imagefolder":
                raise ValueError("dataset.dataset_id applies to the imagefolder dataset only")
            if self.root is not None:
                raise ValueError("give dataset.root or dataset.dataset_id, not both")
        elif self.name in ("cifar10", "cifar100", "imagefolder") and self.root is None:
            raise ValueError(f"dataset.root is required for dataset {self.name!r}"
                             + (" (or dataset.dataset_id, an uploaded dataset)" if self.name == "imagefolder" else ""))
        synthetic_only = (self.num_classes, self.train_size, self.val_size, self.noise)
        if self.name != "synthetic" and any(v is not None for v in synthetic_only):
            raise ValueError("dataset.num_classes/train_size/val_size/noise apply to the synthetic dataset only")
        if self.download and self.name not in ("cifar10", "cifar100"):
            raise ValueError("dataset.download applies to cifar10/cifar100 only")
        return self

    def known_num_classes(self) -> int | None:
        """The number of classes, where it is known without reading the data (imagefolder: None)."""
        if self.name == "synthetic":
            return self.num_classes or SYNTHETIC_NUM_CLASSES
        return FIXED_NUM_CLASSES.get(self.name)


# --------------------------------------------------------------------------- training
class TrainingSpec(SpecModel):
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
    step_milestones: Milestones | None = None  # epochs
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
    # Exported weights: those of the best validation epoch (EMA weights when EMA is on) or the last.
    export: Literal["best", "last"] | None = None
    # Data-parallel processes (one per GPU on CUDA); batch_size is the global batch, split across them.
    devices: Annotated[int, Field(ge=1, le=64)] | None = None
    compile: bool | None = None  # torch.compile the student + method step (and the teacher)
    # Where in-memory data lives and batches are prepared: auto (on the training device when the
    # data fits its cap), device (regardless of size) or host (CPU; file datasets per sample).
    data_pipeline: Literal["auto", "device", "host"] | None = None

    @model_validator(mode="after")
    def _check_devices(self) -> "TrainingSpec":
        filled = {**RECIPES[self.recipe], **self.model_dump(exclude_none=True)}
        if filled["batch_size"] % filled["devices"]:
            raise ValueError(f"batch_size ({filled['batch_size']}) must be a multiple of devices "
                             f"({filled['devices']}): each process takes an equal part of every batch")
        return self


# --------------------------------------------------------------------------- job
class JobSpec(SpecModel):
    method: MethodConfig
    student: StudentSpec
    teacher: TeacherSpec | None = None
    dataset: DatasetSpec
    training: TrainingSpec = TrainingSpec()
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 42

    @model_validator(mode="after")
    def _check_teacher(self) -> "JobSpec":
        if not self.method.needs_teacher and self.teacher is not None:
            raise ValueError(f"teacher must be absent for method {self.method.name!r}")
        if self.method.needs_teacher and self.teacher is None:
            raise ValueError(f"teacher is required for method {self.method.name!r}")
        t = self.training
        filled = {**RECIPES[t.recipe], **t.model_dump(exclude_none=True)}
        if filled["min_lr"] > filled["lr"]:
            raise ValueError("training.min_lr must not exceed training.lr (the recipe's where left out)")
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


def parse_spec(data: dict[str, Any]) -> JobSpec:
    """Validate a spec document; raises pydantic.ValidationError naming the faulty field."""
    return JobSpec.model_validate(data)


def required(value: T | None, name: str) -> T:
    """A training field of a resolved spec (`JobSpec.resolved()` fills every field from the recipe)."""
    if value is None:
        raise ValueError(f"training.{name} is not set: use JobSpec.resolved()")
    return value
