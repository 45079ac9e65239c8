"""Datasets, augmentation and deterministic batch iteration.

Two ways to make batches:
- in memory (`TensorBatches`), on the training device: the tensor datasets (`digits`, `digits_hard`,
  `synthetic`, generated at a small base resolution in [0, 1]), CIFAR (torchvision's uint8 arrays)
  and imagefolders whose uint8 cache fits the cap (decoded once); each batch is resized, augmented
  and normalised in one go where the data is (no DataLoader).
- per sample (`LoaderBatches`): larger imagefolders (and any file dataset with pipeline "host"),
  torchvision transforms in DataLoader workers.

Shuffling and augmentation are pure functions of an `epoch_seed` (drawn by the trainer from a
checkpointed generator) and the sample/batch index, so a run resumed mid-epoch sees exactly the
batches an uninterrupted run would have seen.

Every dataset is a fixed function of its spec, never of the job seed: the digits split, the
digits_hard copies, the synthetic task and the `eval_split: holdout` split all use seeds of their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Subset

from hcd_core.dataset_facts import (
    DEVICE_CACHE_MAX_BYTES,
    DIGITS_HARD_BASE_SIZE,
    DIGITS_HARD_COPIES,
    DIGITS_TRAIN_FRACTION,
    FIXED_NUM_CLASSES,
    HOLDOUT_FRACTION,
    SYNTHETIC_BASE_MAX,
    SYNTHETIC_NOISE,
    SYNTHETIC_NUM_CLASSES,
    SYNTHETIC_TRAIN_SIZE,
    SYNTHETIC_VAL_SIZE,
    TENSOR_DATASETS,
)
from hcd_core.errors import DatasetUnavailable as DatasetUnavailable
from hcd_core.spec import DatasetSpec

Norm = tuple[tuple[float, float, float], tuple[float, float, float]]

CIFAR10_NORM: Norm = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_NORM: Norm = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_NORM: Norm = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Computed once over the training split at 32 px (grey digits: the same value on every channel).
DIGITS_NORM: Norm = ((0.3058, 0.3058, 0.3058), (0.3239, 0.3239, 0.3239))
# Computed once over the training split at 32 px.
DIGITS_HARD_NORM: Norm = ((0.2918, 0.2918, 0.2918), (0.2858, 0.2858, 0.2858))
# Computed once over the default synthetic training set (noise 0.2).
SYNTHETIC_NORM: Norm = ((0.4796, 0.4751, 0.4875), (0.2923, 0.2845, 0.2896))

DIGITS_SPLIT_SEED = 20240601  # fixed: the digits train/test split never depends on the job seed
DIGITS_HARD_SEED = 8080  # fixed: digits_hard's transforms and noise
SYNTHETIC_SEED = 1234  # fixed: the synthetic task never depends on the job seed
HOLDOUT_SEED = 5150  # fixed: the eval_split "holdout" split of a training set

# digits_hard: the random affine transform of each copy (ranges of uniform draws) and the noise.
# Chosen so that a small CNN trained with `ce` for 15 epochs lands near 87% (test_convnext, 32 px,
# quick recipe; rotation 25 degrees, 2 px and noise 0.15 gave 68%, 15 degrees, 1 px and 0.05 gave 93%).
DIGITS_HARD_ROTATION_DEG = 20.0  # rotation in [-20, 20] degrees
DIGITS_HARD_SCALE = (0.85, 1.15)
DIGITS_HARD_SHIFT_PX = 1.25  # translation in [-1.25, 1.25] pixels of the 8x8 original, each axis
DIGITS_HARD_SHEAR_DEG = 8.0
DIGITS_HARD_NOISE = 0.08  # std of the per-pixel Gaussian noise, on images in [0, 1]

# A per-sample torchvision transform: a PIL image in, a normalised tensor out.
Transform = Callable[[Any], Tensor]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    class_names: list[str] | None
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train_size: int
    val_size: int


# --------------------------------------------------------------------------- batch sources
@dataclass(frozen=True)
class Shard:
    """This process' part of every global batch under data parallelism: rank `rank` of `world`
    takes the contiguous slice `part(n)` of each batch of n, so the ranks together see exactly the
    batches one process would (the same order, the same augmentation)."""

    rank: int = 0
    world: int = 1

    def part(self, n: int) -> slice:
        return slice(n * self.rank // self.world, n * (self.rank + 1) // self.world)


class BatchSource:
    """An epoch's batches as a function of (epoch_seed, first batch index); with a `shard`, this
    rank's part of each batch."""

    num_samples: int
    batch_size: int
    drop_last: bool
    shard: Shard = Shard()

    def num_batches(self) -> int:
        if self.drop_last and self.num_samples >= self.batch_size:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def batches(self, epoch_seed: int | None = None, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def _order(self, epoch_seed: int | None) -> Tensor:
        if epoch_seed is None:  # evaluation: dataset order
            return torch.arange(self.num_samples)
        gen = torch.Generator().manual_seed(epoch_seed)
        return torch.randperm(self.num_samples, generator=gen)

    def _global_batches(self, order: Tensor, start: int) -> Iterator[tuple[int, Tensor]]:
        for b in range(start, self.num_batches()):
            yield b, order[b * self.batch_size : (b + 1) * self.batch_size]


def _batch_generator(epoch_seed: int | None, b: int) -> torch.Generator:
    """One generator per batch: a batch's augmentation depends only on (epoch_seed, b)."""
    return torch.Generator().manual_seed((int(epoch_seed or 0) * 1_000_003 + b) % (2**63))


class TensorBatches(BatchSource):
    """Batches from images held in memory, on `device` (the GPU's memory when training there):
    float in [0, 1] or uint8 (N, C, h, w), resized, augmented and normalised a whole batch at a time
    where they are. Only the per-batch random parameters are drawn on the host (a CPU generator per
    batch), so a batch is the same on every device and under every sharding."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        image_size: int,
        norm: Norm,
        batch_size: int,
        augment: str = "none",
        train: bool = False,
        crop: int | None = None,
        device: torch.device | None = None,
        shard: Shard = Shard(),
    ) -> None:
        self.images, self.labels = images.to(device or "cpu"), labels.to(device or "cpu")
        self.image_size = image_size
        self.crop = crop  # a centre crop of this size first (cached imagefolders: Resize + CenterCrop)
        self.mean = torch.tensor(norm[0], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(norm[1], device=device).view(1, 3, 1, 1)
        self.batch_size = batch_size
        self.augment = augment if train else "none"
        self.train = train
        self.drop_last = train
        self.num_samples = len(labels)
        self.shard = shard

    def batches(self, epoch_seed: int | None = None, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order(epoch_seed if self.train else None)
        # A cached imagefolder's random resized crop samples the whole cached image at full resolution.
        crop_from_source = self.crop is not None and self.augment == "rrc_flip"
        for b, idx in self._global_batches(order, start):
            params = (augment_params(self.augment, len(idx), self.image_size, _batch_generator(epoch_seed, b))
                      if self.augment != "none" else None)
            part = self.shard.part(len(idx))
            mine = idx[part].to(self.images.device, non_blocking=True)
            x = self.images[mine]
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            if params is not None and crop_from_source:
                x = apply_augment(_rgb(x), params.slice(part), out_size=self.image_size)
            else:
                x = self._prepare(x)
                if params is not None:
                    x = apply_augment(x, params.slice(part))
            yield (x - self.mean) / self.std, self.labels[mine]

    def _prepare(self, x: Tensor) -> Tensor:
        if self.crop is not None:  # the centre crop of Resize + CenterCrop
            top, left = round((x.shape[-2] - self.crop) / 2), round((x.shape[-1] - self.crop) / 2)  # torchvision's
            x = x[..., top : top + self.crop, left : left + self.crop]
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return _rgb(x).contiguous()


def _rgb(x: Tensor) -> Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@dataclass(frozen=True)
class AugmentParams:
    """The random draws of one batch's augmentation (host tensors, one row per image)."""

    mode: str
    flip: Tensor  # (B,) bool
    offsets: Tensor | None = None  # crop_flip: (B, 2) top/left in the padded image
    pad: int = 0
    theta: Tensor | None = None  # rrc_flip: (B, 2, 3) affine grids

    def slice(self, part: slice) -> "AugmentParams":
        return AugmentParams(
            self.mode, self.flip[part], None if self.offsets is None else self.offsets[part], self.pad,
            None if self.theta is None else self.theta[part],
        )


def augment_params(mode: str, b: int, size: int, gen: torch.Generator) -> AugmentParams:
    """Draw a batch's augmentation parameters from `gen` (in this order: crop, then flip)."""
    if mode == "crop_flip":
        pad = max(1, round(4 * size / 32))  # CIFAR's 4-pixel padding, scaled to the image size
        offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen)
        return AugmentParams(mode, torch.rand(b, generator=gen) < 0.5, offsets=offsets, pad=pad)
    if mode == "rrc_flip":
        theta = _rrc_theta(b, gen)
        return AugmentParams(mode, torch.rand(b, generator=gen) < 0.5, theta=theta)
    if mode == "flip":
        return AugmentParams(mode, torch.rand(b, generator=gen) < 0.5)
    raise ValueError(f"unknown augmentation {mode!r}")


def apply_augment(x: Tensor, p: AugmentParams, out_size: int | None = None) -> Tensor:
    """Apply drawn parameters to images in [0, 1] (B, 3, H, W) wherever they are, as whole-batch ops.
    `out_size`: random resized crops come out this large (default: the input's size)."""
    b, c, h, w = x.shape
    dev = x.device
    if p.mode == "crop_flip":
        assert p.offsets is not None
        padded = F.pad(x, (p.pad, p.pad, p.pad, p.pad))
        offs = p.offsets.to(dev, non_blocking=True)
        rows = (offs[:, 0:1] + torch.arange(h, device=dev)).view(b, 1, h, 1)
        cols = (offs[:, 1:2] + torch.arange(w, device=dev)).view(b, 1, 1, w)
        batch = torch.arange(b, device=dev).view(b, 1, 1, 1)
        chans = torch.arange(c, device=dev).view(1, c, 1, 1)
        x = padded[batch, chans, rows, cols]  # a gather: exactly the per-image crops
    elif p.mode == "rrc_flip":
        assert p.theta is not None
        size = [b, c, out_size or h, out_size or w]
        grid = F.affine_grid(p.theta.to(dev, non_blocking=True), size, align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    flip = p.flip.to(dev, non_blocking=True).view(b, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def augment_tensor(x: Tensor, mode: str, gen: torch.Generator) -> Tensor:
    """Batched training augmentation of images in [0, 1] (B, 3, H, W)."""
    return apply_augment(x, augment_params(mode, x.shape[0], x.shape[-2], gen))


def _rrc_theta(
    b: int,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """RandomResizedCrop as one affine grid per image (box of area `scale`, aspect `ratio`)."""
    area = torch.empty(b).uniform_(*scale, generator=gen)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = torch.exp(log_r)
    cw = torch.sqrt(area * r).clamp(max=1.0)  # crop width/height as fractions of the image
    ch = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - cw)  # crop centre in [-1, 1] coordinates
    cy = (torch.rand(b, generator=gen) * 2 - 1) * (1 - ch)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw, cx, ch, cy
    return theta


class _SeededTransform(torch.utils.data.Dataset[tuple[Tensor, int]]):
    """Applies a random transform under a seed derived from (epoch_seed, index): exact on resume."""

    def __init__(self, base: Any, transform: Transform, epoch_seed: int | None) -> None:
        self.base, self.transform, self.epoch_seed = base, transform, epoch_seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img, label = self.base[i]
        if self.epoch_seed is None:
            return self.transform(img), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.epoch_seed * 1_000_003 + i) % (2**63))
            return self.transform(img), label


LOADER_PREFETCH_FACTOR = 4  # batches each DataLoader worker prepares ahead


class LoaderBatches(BatchSource):
    """Batches of a torchvision dataset decoded and transformed per sample by DataLoader workers
    (for datasets too large to hold in memory), in the order of the epoch's permutation; pinned host
    memory on CUDA so the copy to the device overlaps the step."""

    def __init__(
        self, base: Any, transform: Transform, *, batch_size: int, num_workers: int, train: bool,
        shard: Shard = Shard(),
    ) -> None:
        self.base, self.transform = base, transform
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train = train
        self.drop_last = train
        self.num_samples = len(base)
        self.shard = shard

    def batches(self, epoch_seed: int | None = None, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        seed = epoch_seed if self.train else None
        parts = [idx[self.shard.part(len(idx))].tolist() for _, idx in self._global_batches(self._order(seed), start)]
        loader = torch.utils.data.DataLoader(
            _SeededTransform(self.base, self.transform, seed),
            batch_sampler=[p for p in parts if p],
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=LOADER_PREFETCH_FACTOR if self.num_workers > 0 else None,
            persistent_workers=False,
            # Own generator: creating the iterator must not consume the global RNG (exact resume).
            generator=torch.Generator().manual_seed(int(seed or 0)),
        )
        yield from loader


# --------------------------------------------------------------------------- datasets
def resolve_root(root: str | None, data_root: Path | None) -> Path | None:
    if root is None:
        return None
    p = Path(root).expanduser()
    if not p.is_absolute() and data_root is not None:
        p = Path(data_root) / p
    return p


def digits_arrays() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """sklearn's digits as (train_x, train_y, test_x, test_y); x in [0, 1], shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float().div_(16.0).unsqueeze(1)
    y = torch.from_numpy(d.target).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_train = int(len(y) * DIGITS_TRAIN_FRACTION)
    tr, te = perm[:n_train], perm[n_train:]
    return x[tr], y[tr], x[te], y[te]


def holdout_split(num_samples: int) -> tuple[Tensor, Tensor]:
    """(train indices, holdout indices) of a training set of `num_samples`: a fixed random
    `HOLDOUT_FRACTION` (at least one sample) held out, independent of the job seed; each part sorted."""
    if num_samples < 2:
        raise ValueError(f"eval_split 'holdout' needs at least 2 training samples, got {num_samples}")
    n_out = min(num_samples - 1, max(1, round(num_samples * HOLDOUT_FRACTION)))
    perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    return perm[n_out:].sort().values, perm[:n_out].sort().values


def _affine_copies(x: Tensor, copies: int, gen: torch.Generator) -> Tensor:
    """`copies` random affine transforms of each image of x (N, 1, h, w) in [0, 1], image-major
    (the copies of image i are rows i*copies .. i*copies + copies - 1), plus Gaussian noise."""
    m = x.shape[0] * copies
    src = x.repeat_interleave(copies, dim=0)

    def uniform(lo: float, hi: float) -> Tensor:
        return torch.rand(m, generator=gen, dtype=torch.float64) * (hi - lo) + lo

    rot = torch.deg2rad(uniform(-DIGITS_HARD_ROTATION_DEG, DIGITS_HARD_ROTATION_DEG))
    shear = torch.deg2rad(uniform(-DIGITS_HARD_SHEAR_DEG, DIGITS_HARD_SHEAR_DEG))
    scale = uniform(*DIGITS_HARD_SCALE)
    shift = DIGITS_HARD_SHIFT_PX * 2.0 / 8.0  # pixels of the 8x8 original in [-1, 1] coordinates
    tx, ty = uniform(-shift, shift), uniform(-shift, shift)
    # theta maps output coordinates to where they sample the input: rotation @ shear, divided by the
    # scale (a scale > 1 enlarges the digit), then the translation.
    cos, sin, tan = torch.cos(rot), torch.sin(rot), torch.tan(shear)
    theta = torch.zeros(m, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = cos / scale, (cos * tan - sin) / scale
    theta[:, 1, 0], theta[:, 1, 1] = sin / scale, (sin * tan + cos) / scale
    theta[:, 0, 2], theta[:, 1, 2] = tx, ty
    grid = F.affine_grid(theta.float(), list(src.shape), align_corners=False)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    noise = torch.randn(out.shape, generator=gen) * DIGITS_HARD_NOISE
    return out.add_(noise).clamp_(0.0, 1.0)


def digits_hard_arrays(holdout: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """digits made harder: each original of the fixed digits split, upscaled to 16x16, gives
    `DIGITS_HARD_COPIES` fixed random affine copies with noise (train copies from the train
    originals only, test copies from the test originals). `holdout`: the train originals split by
    `holdout_split`, every copy of an original on the side of its original (no leak between them)."""
    xtr, ytr, xte, yte = digits_arrays()
    size = (DIGITS_HARD_BASE_SIZE, DIGITS_HARD_BASE_SIZE)
    gen = torch.Generator().manual_seed(DIGITS_HARD_SEED)
    k = DIGITS_HARD_COPIES
    train = _affine_copies(F.interpolate(xtr, size=size, mode="bilinear", align_corners=False), k, gen)
    train_y = ytr.repeat_interleave(k)
    if holdout:
        keep, out = holdout_split(len(ytr))
        rows_keep = (keep.unsqueeze(1) * k + torch.arange(k)).reshape(-1)
        rows_out = (out.unsqueeze(1) * k + torch.arange(k)).reshape(-1)
        return train[rows_keep], train_y[rows_keep], train[rows_out], train_y[rows_out]
    test = _affine_copies(F.interpolate(xte, size=size, mode="bilinear", align_corners=False), k, gen)
    return train, train_y, test, yte.repeat_interleave(k)


def synthetic_arrays(
    num_classes: int, train_size: int, val_size: int, image_size: int, noise: float = SYNTHETIC_NOISE
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A learnable random task: smooth class prototypes plus per-sample noise (std `noise`) and
    brightness, in [0, 1]. The train split is drawn first, so it does not depend on `val_size`."""
    gen = torch.Generator().manual_seed(SYNTHETIC_SEED)
    base = min(image_size, SYNTHETIC_BASE_MAX)
    coarse = torch.randn(num_classes, 3, 4, 4, generator=gen)
    protos = F.interpolate(coarse, size=(base, base), mode="bilinear", align_corners=False)
    protos = torch.sigmoid(protos * 1.5)

    def sample(n: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=gen)]
        pixel_noise = torch.randn(n, 3, base, base, generator=gen) * noise
        shift = torch.randn(n, 1, 1, 1, generator=gen) * 0.1
        return (protos[y] + pixel_noise + shift).clamp_(0.0, 1.0), y

    xtr, ytr = sample(train_size)
    xva, yva = sample(val_size)
    return xtr, ytr, xva, yva


def tensor_dataset(spec: DatasetSpec) -> tuple[Tensor, Tensor, Tensor, Tensor, int, list[str] | None, Norm]:
    """(train x, train y, eval x, eval y, classes, class names, norm) of a tensor dataset; the eval
    split is the test split or, with `eval_split: holdout`, the held-out part of the training set."""
    holdout = spec.eval_split == "holdout"
    if spec.name == "digits_hard":
        xtr, ytr, xva, yva = digits_hard_arrays(holdout=holdout)
        return xtr, ytr, xva, yva, 10, [str(i) for i in range(10)], DIGITS_HARD_NORM
    if spec.name == "digits":
        xtr, ytr, xva, yva = digits_arrays()
        nc, names, norm = FIXED_NUM_CLASSES["digits"], [str(i) for i in range(10)], DIGITS_NORM
    elif spec.name == "synthetic":
        nc = spec.num_classes or SYNTHETIC_NUM_CLASSES
        val_size = 0 if holdout else spec.val_size or SYNTHETIC_VAL_SIZE
        noise = SYNTHETIC_NOISE if spec.noise is None else spec.noise
        xtr, ytr, xva, yva = synthetic_arrays(
            nc, spec.train_size or SYNTHETIC_TRAIN_SIZE, val_size, spec.image_size, noise
        )
        names, norm = None, SYNTHETIC_NORM
    else:
        raise ValueError(f"{spec.name!r} is not a tensor dataset")
    if holdout:
        keep, out = holdout_split(len(ytr))
        xtr, ytr, xva, yva = xtr[keep], ytr[keep], xtr[out], ytr[out]
    return xtr, ytr, xva, yva, nc, names, norm


def _torchvision_transforms(name: str, image_size: int, augment: str, norm: Norm, train: bool) -> Transform:
    from torchvision.transforms import v2 as T

    size = image_size
    if name == "imagefolder":
        resize = [T.Resize(int(round(size / 0.875))), T.CenterCrop(size)]
    else:  # cifar: whole image, resized when the recipe asks for a larger input
        resize = [T.Resize((size, size))] if size != 32 else []
    if not train or augment == "none":
        geo = resize
    elif augment == "flip":
        geo = resize + [T.RandomHorizontalFlip()]
    elif augment == "crop_flip":
        geo = resize + [T.RandomCrop(size, padding=max(1, round(4 * size / 32))), T.RandomHorizontalFlip()]
    elif augment == "rrc_flip":
        geo = [T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip()]
    else:
        raise ValueError(f"unknown augmentation {augment!r}")
    transform: Transform = T.Compose(
        [T.ToImage(), T.RGB(), *geo, T.ToDtype(torch.float32, scale=True), T.Normalize(list(norm[0]), list(norm[1]))]
    )
    return transform


def _file_datasets(spec: DatasetSpec, root: Path) -> tuple[Any, Any, list[str], Norm]:
    import torchvision

    if spec.name in ("cifar10", "cifar100"):
        cls = torchvision.datasets.CIFAR10 if spec.name == "cifar10" else torchvision.datasets.CIFAR100
        try:
            train = cls(str(root), train=True, download=spec.download)
            val = cls(str(root), train=False, download=spec.download)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted..."
            raise DatasetUnavailable(
                f"{spec.name} not found under {root}: put torchvision's extracted "
                f"{'cifar-10-batches-py' if spec.name == 'cifar10' else 'cifar-100-python'} folder there, "
                f"or set dataset.download: true on a host with internet ({e})"
            ) from e
        return train, val, list(train.classes), CIFAR10_NORM if spec.name == "cifar10" else CIFAR100_NORM
    # imagefolder
    tr, va = root / "train", root / "val"
    for p in (tr, va):
        if not p.is_dir():
            raise DatasetUnavailable(
                f"imagefolder dataset needs {p}: one sub-folder per class under {root}/train and {root}/val"
            )
    train = torchvision.datasets.ImageFolder(str(tr))
    val = torchvision.datasets.ImageFolder(str(va))
    if train.classes != val.classes:
        raise DatasetUnavailable(f"imagefolder: class folders of {tr} and {va} differ")
    return train, val, list(train.classes), IMAGENET_NORM


def _decode_to_cache(base: Any, size: int, num_workers: int) -> tuple[Tensor, Tensor]:
    """Every image of an ImageFolder (or a Subset of one) decoded once, resized (shorter side) and
    centre-cropped to `size`, as a uint8 tensor (N, 3, size, size), with its labels."""
    from torchvision.transforms import v2 as T

    square = T.Compose([T.ToImage(), T.RGB(), T.Resize(size), T.CenterCrop(size)])
    loader = torch.utils.data.DataLoader(
        _SeededTransform(base, square, None), batch_size=256, num_workers=num_workers,
        collate_fn=_stack_images,
    )
    images, labels = zip(*loader, strict=True) if len(base) else ((), ())
    if not images:
        return torch.empty(0, 3, size, size, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    return torch.cat(images).as_subclass(Tensor), torch.cat(labels)


def _stack_images(items: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    return torch.stack([i[0] for i in items]), torch.tensor([i[1] for i in items], dtype=torch.long)


def _cifar_arrays(base: Any) -> tuple[Tensor, Tensor]:
    """A torchvision CIFAR (or a Subset of one) as (uint8 images (N, 3, 32, 32), labels): its own arrays."""
    indices = None
    if isinstance(base, Subset):
        base, indices = base.dataset, torch.as_tensor(base.indices)
    x = torch.from_numpy(base.data).permute(0, 3, 1, 2).contiguous()
    y = torch.as_tensor(base.targets, dtype=torch.long)
    return (x, y) if indices is None else (x[indices], y[indices])


def cache_bytes(spec: DatasetSpec, num_train: int, num_val: int) -> int:
    """The bytes of a file dataset's uint8 image cache (CIFAR at 32 px; imagefolders at the size
    their Resize + CenterCrop read)."""
    side = 32 if spec.name in ("cifar10", "cifar100") else imagefolder_cache_size(spec.image_size)
    return (num_train + num_val) * 3 * side * side


def imagefolder_cache_size(image_size: int) -> int:
    return int(round(image_size / 0.875))


def build_data(
    spec: DatasetSpec,
    *,
    batch_size: int,
    eval_batch_size: int | None = None,
    augment: str = "none",
    num_workers: int = 0,
    data_root: Path | None = None,
    norm: Norm | None = None,
    device: torch.device | None = None,
    shard: Shard = Shard(),
    pipeline: str = "auto",
    cache_max_bytes: int = DEVICE_CACHE_MAX_BYTES,
) -> tuple[BatchSource, BatchSource, DatasetInfo]:
    """(train batches, validation batches, info) for a dataset spec.

    `norm` overrides the dataset's mean/std (evaluating an exported model with its card's values).
    `pipeline`: "auto" holds the data as tensors on `device` and prepares batches there whenever it
    fits (tensor datasets and CIFAR always; an imagefolder when its uint8 cache is at most
    `cache_max_bytes`); "device" holds it there regardless of size; "host" keeps the data in host
    memory and prepares batches on the CPU (file datasets: per sample in DataLoader workers).
    `shard`: this rank's part of every batch (data parallelism).
    """
    if pipeline not in ("auto", "device", "host"):
        raise ValueError(f"unknown data pipeline {pipeline!r}")
    size = spec.image_size
    eval_bs = eval_batch_size or max(batch_size, 256)
    where = device if pipeline != "host" else None
    train: BatchSource
    val: BatchSource
    names: list[str] | None
    if spec.name in TENSOR_DATASETS:
        xtr, ytr, xva, yva, nc, names, dnorm = tensor_dataset(spec)
        norm = norm or dnorm
        train = TensorBatches(xtr, ytr, image_size=size, norm=norm, batch_size=batch_size, augment=augment,
                              train=True, device=where, shard=shard)
        val = TensorBatches(xva, yva, image_size=size, norm=norm, batch_size=eval_bs, device=where, shard=shard)
    else:
        if spec.dataset_id is not None:  # an uploaded dataset: the service unpacked it at data_root
            if data_root is None:
                raise DatasetUnavailable("dataset.dataset_id names a dataset uploaded to the service; "
                                         "locally, give dataset.root")
            root: Path | None = Path(data_root)
        else:
            root = resolve_root(spec.root, data_root)
        assert root is not None  # the spec requires a root (or a dataset_id) for file datasets
        base_tr, base_va, names, dnorm = _file_datasets(spec, root)
        if spec.eval_split == "holdout":  # one base dataset: transforms are applied per source
            keep, out = holdout_split(len(base_tr))
            base_tr, base_va = Subset(base_tr, keep.tolist()), Subset(base_tr, out.tolist())
        nc = len(names)
        norm = norm or dnorm
        cached = pipeline == "device" or (
            pipeline == "auto" and cache_bytes(spec, len(base_tr), len(base_va)) <= cache_max_bytes
        )
        if cached:
            crop = None
            if spec.name == "imagefolder":
                side = imagefolder_cache_size(size)
                (xtr, ytr), (xva, yva) = (_decode_to_cache(b, side, num_workers) for b in (base_tr, base_va))
                crop = size
            else:
                (xtr, ytr), (xva, yva) = _cifar_arrays(base_tr), _cifar_arrays(base_va)
            train = TensorBatches(xtr, ytr, image_size=size, norm=norm, batch_size=batch_size, augment=augment,
                                  train=True, crop=crop, device=where, shard=shard)
            val = TensorBatches(xva, yva, image_size=size, norm=norm, batch_size=eval_bs, crop=crop, device=where,
                                shard=shard)
        else:
            train = LoaderBatches(
                base_tr, _torchvision_transforms(spec.name, size, augment, norm, True),
                batch_size=batch_size, num_workers=num_workers, train=True, shard=shard,
            )
            val = LoaderBatches(
                base_va, _torchvision_transforms(spec.name, size, "none", norm, False),
                batch_size=eval_bs, num_workers=num_workers, train=False, shard=shard,
            )
    info = DatasetInfo(
        name=spec.name, num_classes=nc, class_names=names, image_size=size,
        mean=norm[0], std=norm[1], train_size=train.num_samples, val_size=val.num_samples,
    )
    return train, val, info
