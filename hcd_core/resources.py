"""A torch-free estimate of the host memory a job's data pipeline needs, to refuse resource bombs
before they reach a worker.

Counted: the data held in memory (with the temporaries of generating it) and the per-step input
batches (with the temporaries of preparing them). Not counted: the models' weights, activations,
gradients and optimiser state, nor the framework itself. The estimate is therefore a LOWER BOUND:
a job needs at least this much. Every part names the spec fields that drive it (dotted paths such
as "dataset.train_size"), so a refusal can say what to change.
"""

from __future__ import annotations

from dataclasses import dataclass

from hcd_core.dataset_facts import (
    CIFAR_IMAGE_BYTES,
    CIFAR_NUM_SAMPLES,
    DIGITS_BASE_SIZE,
    DIGITS_HARD_BASE_SIZE,
    DIGITS_HARD_COPIES,
    DIGITS_NUM_SAMPLES,
    DIGITS_NUM_TRAIN,
    SYNTHETIC_BASE_MAX,
    SYNTHETIC_TRAIN_SIZE,
    SYNTHETIC_VAL_SIZE,
    TENSOR_DATASETS,
)
from hcd_core.spec import JobSpec, required

__all__ = ["MemoryEstimate", "MemoryPart", "estimate_memory"]

FLOAT32, FLOAT64, INT64 = 4, 8, 8
EVAL_MIN_BATCH = 256  # hcd_core.data evaluates in batches of max(batch_size, 256)

# Peak of generating a synthetic split, in copies of the split (noise, prototypes[y], their sum).
SYNTHETIC_BUILD_COPIES = 3  # measured: 3.0x the split's bytes
# Peak of generating a digits_hard split, in copies of the split (repeated originals, the sampling
# grid (2), the transformed images, the noise): measured 6.7x the train split's bytes.
DIGITS_HARD_BUILD_COPIES = 6
# Extra batch-sized copies alive while a tensor-dataset batch is prepared (resize, augment,
# normalise). Measured on CPU, peak / batch bytes: none and flip 3.0, rrc_flip 4.0, crop_flip 5.6.
TRAIN_PREP_EXTRA = {"none": 2, "flip": 2, "rrc_flip": 3, "crop_flip": 4}
EVAL_PREP_EXTRA = 2  # evaluation batches: measured 3.0x
FILE_PREP_EXTRA = 1  # file datasets: the per-sample tensors while the batch is collated
LOADER_PREFETCH = 2  # batches each DataLoader worker prepares ahead (torch's prefetch_factor)

_BATCH_FIELDS = ("training.batch_size", "dataset.image_size")


@dataclass(frozen=True)
class MemoryPart:
    name: str  # "dataset", "dataset_build", "train_batch", "eval_batch", "batch_prep", ...
    bytes: int
    fields: tuple[str, ...]  # the spec fields that drive it, e.g. ("dataset.train_size", ...)


@dataclass(frozen=True)
class MemoryEstimate:
    """`total_bytes` = the data held (part "dataset") plus the larger of the data's build
    temporaries ("dataset_build", only while it is generated) and the per-step parts (the rest)."""

    total_bytes: int
    parts: tuple[MemoryPart, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        """The spec fields of every part, those of the largest part first (each once)."""
        ordered = sorted(self.parts, key=lambda p: p.bytes, reverse=True)
        return tuple(dict.fromkeys(f for part in ordered if part.bytes > 0 for f in part.fields))


def _dataset_parts(spec: JobSpec) -> tuple[MemoryPart, MemoryPart]:
    """(data held for the whole run, extra temporaries while it is built)."""
    d = spec.dataset
    held, build = 0, 0
    fields: tuple[str, ...] = ("dataset.name",)
    holdout = d.eval_split == "holdout"  # tensor datasets: the eval split is cut from the train split
    if d.name == "synthetic":
        base = min(d.image_size, SYNTHETIC_BASE_MAX)
        per_sample = 3 * base * base * FLOAT32 + INT64
        train = (d.train_size or SYNTHETIC_TRAIN_SIZE) * per_sample
        val = 0 if holdout else (d.val_size or SYNTHETIC_VAL_SIZE) * per_sample
        held = train + val
        # The train split is generated first, then the val split next to it.
        peak = max(SYNTHETIC_BUILD_COPIES * train, train + SYNTHETIC_BUILD_COPIES * val)
        build = peak - held
        fields = ("dataset.train_size", "dataset.val_size", "dataset.image_size")
    elif d.name == "digits":
        samples = DIGITS_NUM_TRAIN if holdout else DIGITS_NUM_SAMPLES
        held = samples * (DIGITS_BASE_SIZE**2 * FLOAT32 + INT64)
        build = DIGITS_NUM_SAMPLES * DIGITS_BASE_SIZE**2 * FLOAT64  # sklearn's float64 array
    elif d.name == "digits_hard":
        per_sample = DIGITS_HARD_BASE_SIZE**2 * FLOAT32 + INT64
        train = DIGITS_NUM_TRAIN * DIGITS_HARD_COPIES * per_sample
        test = 0 if holdout else (DIGITS_NUM_SAMPLES - DIGITS_NUM_TRAIN) * DIGITS_HARD_COPIES * per_sample
        held = train + test
        peak = max(DIGITS_HARD_BUILD_COPIES * train, train + DIGITS_HARD_BUILD_COPIES * test)
        build = peak - held
    elif d.name in ("cifar10", "cifar100"):
        held = CIFAR_NUM_SAMPLES * CIFAR_IMAGE_BYTES  # uint8, both splits
    return MemoryPart("dataset", held, fields), MemoryPart("dataset_build", build, fields)


def _step_parts(spec: JobSpec) -> list[MemoryPart]:
    """Input batches of a training step and an evaluation, and the temporaries of preparing them."""
    t, d = spec.training, spec.dataset
    batch_size = required(t.batch_size, "batch_size")
    augment = required(t.augment, "augment")
    image = 3 * d.image_size**2 * FLOAT32
    train = batch_size * image
    evaluation = max(batch_size, EVAL_MIN_BATCH) * image
    tensor_data = d.name in TENSOR_DATASETS
    if tensor_data:  # training and evaluation batches are not prepared at the same time
        prep = max(TRAIN_PREP_EXTRA[augment] * train, EVAL_PREP_EXTRA * evaluation)
    else:
        prep = FILE_PREP_EXTRA * evaluation
    parts = [
        MemoryPart("train_batch", train, _BATCH_FIELDS),
        MemoryPart("eval_batch", evaluation, _BATCH_FIELDS),
        MemoryPart("batch_prep", prep, (*_BATCH_FIELDS, "training.augment")),
    ]
    workers = required(t.num_workers, "num_workers")
    if not tensor_data and workers > 0:
        parts.append(MemoryPart("loader_prefetch", LOADER_PREFETCH * workers * train,
                                ("training.num_workers", *_BATCH_FIELDS)))
    teacher_size = spec.teacher.image_size if spec.teacher is not None else None
    if teacher_size is not None and teacher_size != d.image_size:
        parts.append(MemoryPart("teacher_input", batch_size * 3 * teacher_size**2 * FLOAT32,
                                ("training.batch_size", "teacher.image_size")))
    return parts


def estimate_memory(spec: JobSpec) -> MemoryEstimate:
    """A lower bound on the host memory `spec` needs (resolved against its recipe first)."""
    spec = spec.resolved()
    held, build = _dataset_parts(spec)
    steps = _step_parts(spec)
    total = held.bytes + max(build.bytes, sum(p.bytes for p in steps))
    parts = tuple(p for p in (held, build, *steps) if p.bytes > 0)
    return MemoryEstimate(total_bytes=total, parts=parts)
