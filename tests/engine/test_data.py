"""Datasets: fixed digits split, deterministic synthetic task, normalisation, exact augmentation."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from hcd_core.data import (
    DIGITS_NORM,
    DatasetUnavailable,
    augment_tensor,
    build_data,
    digits_arrays,
    digits_hard_arrays,
    holdout_split,
    resolve_root,
    synthetic_arrays,
)
from hcd_core.spec import DatasetSpec


def test_digits_split_is_fixed_and_sized():
    a = digits_arrays()
    b = digits_arrays()
    assert len(a[1]) == 1437 and len(a[3]) == 360
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    # train and test are disjoint images of the 1797 and every class is in both
    assert set(a[1].tolist()) == set(range(10)) == set(a[3].tolist())
    assert float(a[0].min()) >= 0.0 and float(a[0].max()) <= 1.0


def test_digits_split_independent_of_job_seed():
    torch.manual_seed(0)
    first = digits_arrays()[3]
    torch.manual_seed(999)
    assert torch.equal(first, digits_arrays()[3])


def test_digits_batches_are_upscaled_three_channel_and_normalised():
    train, val, info = build_data(DatasetSpec(name="digits", image_size=32), batch_size=64)
    assert info.num_classes == 10 and info.class_names == [str(i) for i in range(10)]
    assert (info.train_size, info.val_size) == (1437, 360)
    assert tuple(info.mean) == DIGITS_NORM[0]
    x, y = next(val.batches())
    assert x.shape == (256, 3, 32, 32) and y.shape == (256,)
    xs = torch.cat([b[0] for b in val.batches()])
    # roughly zero-mean, unit-std after normalising with the computed constants
    assert abs(float(xs.mean())) < 0.15 and abs(float(xs.std()) - 1.0) < 0.15
    assert train.num_batches() == 1437 // 64  # training drops the last partial batch


def test_synthetic_is_deterministic_and_sized():
    a = synthetic_arrays(5, 40, 20, 16)
    b = synthetic_arrays(5, 40, 20, 16)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert a[0].shape == (40, 3, 16, 16) and a[2].shape == (20, 3, 16, 16)
    assert set(a[1].tolist()) == set(range(5))
    _, _, info = build_data(DatasetSpec(name="synthetic", image_size=16, num_classes=3, train_size=30, val_size=9),
                            batch_size=8)
    assert (info.num_classes, info.train_size, info.val_size) == (3, 30, 9)


def test_synthetic_classes_are_separable_by_prototype():
    xtr, ytr, xva, yva = synthetic_arrays(4, 200, 100, 16)
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(4)])
    pred = torch.cdist(xva.flatten(1), means.flatten(1)).argmin(1)
    assert (pred == yva).float().mean() > 0.9  # learnable, not noise


def test_training_order_and_augmentation_depend_only_on_epoch_seed():
    spec = DatasetSpec(name="synthetic", image_size=16, train_size=64, val_size=16)
    train, _, _ = build_data(spec, batch_size=8, augment="crop_flip")
    first = list(train.batches(epoch_seed=7))
    again = list(train.batches(epoch_seed=7))
    other = list(train.batches(epoch_seed=8))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0][0], other[0][0])
    # resuming at batch 3 yields exactly batches 3.. of the epoch
    resumed = list(train.batches(epoch_seed=7, start=3))
    assert len(resumed) == len(first) - 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first[3:], resumed, strict=True))


def test_validation_batches_are_not_augmented():
    spec = DatasetSpec(name="synthetic", image_size=16, train_size=64, val_size=16)
    _, val_plain, _ = build_data(spec, batch_size=8, augment="none")
    _, val_aug, _ = build_data(spec, batch_size=8, augment="rrc_flip")
    assert torch.equal(next(val_plain.batches())[0], next(val_aug.batches())[0])


@pytest.mark.parametrize("mode", ["flip", "crop_flip", "rrc_flip"])
def test_tensor_augmentations_keep_shape_and_range(mode):
    x = torch.rand(6, 3, 16, 16)
    out = augment_tensor(x, mode, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, x)


def test_relative_roots_resolve_against_data_root(tmp_path):
    assert resolve_root("cifar", tmp_path) == tmp_path / "cifar"
    assert resolve_root("/abs/cifar", tmp_path) == Path("/abs/cifar")
    assert resolve_root(None, tmp_path) is None


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetUnavailable, match="download"):
        build_data(DatasetSpec(name="cifar10", root="nowhere"), batch_size=8, data_root=tmp_path)


def test_imagefolder_reads_class_folders(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 20), colour).save(tmp_path / split / cls / f"{i}.png")
    train, val, info = build_data(DatasetSpec(name="imagefolder", root=str(tmp_path), image_size=16),
                                  batch_size=2, augment="crop_flip")
    assert info.class_names == ["cat", "dog"] and info.num_classes == 2
    x, y = next(train.batches(epoch_seed=1))
    assert x.shape == (2, 3, 16, 16)
    x1 = torch.cat([b[0] for b in train.batches(epoch_seed=1)])
    x2 = torch.cat([b[0] for b in train.batches(epoch_seed=1)])
    assert torch.equal(x1, x2)  # per-sample augmentation seeded from (epoch seed, index)
    xv, yv = next(val.batches())
    assert xv.shape[1:] == (3, 16, 16)


def test_missing_imagefolder_split_is_clear(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetUnavailable, match="val"):
        build_data(DatasetSpec(name="imagefolder", root=str(tmp_path)), batch_size=2)


# --------------------------------------------------------------------------- digits_hard
@pytest.fixture(scope="module")
def hard():
    return digits_hard_arrays()


def test_digits_hard_sizes_and_the_originals_split(hard):
    xtr, ytr, xte, yte = hard
    assert xtr.shape == (1437 * 5, 1, 16, 16) and xte.shape == (360 * 5, 1, 16, 16)
    assert float(xtr.min()) >= 0.0 and float(xtr.max()) <= 1.0
    # copies are image-major: rows 5i..5i+4 are copies of original i of the digits split, with its label
    _, dytr, _, dyte = digits_arrays()
    assert torch.equal(ytr, dytr.repeat_interleave(5)) and torch.equal(yte, dyte.repeat_interleave(5))
    # the copies of one original differ (random transforms), and no two images are equal
    assert not torch.equal(xtr[0], xtr[1])
    assert len({row.numpy().tobytes() for row in torch.cat([xtr, xte]).flatten(1)}) == 1797 * 5


def test_digits_hard_is_fixed_and_independent_of_the_job_seed(hard):
    torch.manual_seed(999)
    again = digits_hard_arrays()
    for a, b in zip(hard, again, strict=True):
        assert torch.equal(a, b)


def test_digits_hard_holdout_keeps_the_copies_of_an_original_together(hard):
    xtr, ytr, _, _ = hard
    hx, hy, vx, vy = digits_hard_arrays(holdout=True)
    keep, out = holdout_split(1437)
    assert (len(keep), len(out)) == (1150, 287)
    assert hx.shape[0] == 1150 * 5 and vx.shape[0] == 287 * 5
    rows = (out.unsqueeze(1) * 5 + torch.arange(5)).reshape(-1)
    assert torch.equal(vx, xtr[rows]) and torch.equal(vy, ytr[rows])
    rows = (keep.unsqueeze(1) * 5 + torch.arange(5)).reshape(-1)
    assert torch.equal(hx, xtr[rows]) and torch.equal(hy, ytr[rows])


def test_digits_hard_builds_normalised_batches():
    train, val, info = build_data(DatasetSpec(name="digits_hard", image_size=32), batch_size=64)
    assert (info.num_classes, info.train_size, info.val_size) == (10, 7185, 1800)
    assert info.class_names == [str(i) for i in range(10)]
    xs = torch.cat([b[0] for b in val.batches()])
    assert xs.shape == (1800, 3, 32, 32)
    assert abs(float(xs.mean())) < 0.15 and abs(float(xs.std()) - 1.0) < 0.15


# --------------------------------------------------------------------------- synthetic noise
def test_synthetic_noise_field():
    plain = synthetic_arrays(4, 60, 20, 16)
    explicit = synthetic_arrays(4, 60, 20, 16, noise=0.2)
    for a, b in zip(plain, explicit, strict=True):
        assert torch.equal(a, b)

    def spread(noise: float) -> float:
        x, y, _, _ = synthetic_arrays(4, 400, 4, 16, noise=noise)
        means = torch.stack([x[y == c].mean(0) for c in range(4)])
        return float((x - means[y]).std())

    assert spread(0.0) < spread(0.2) < spread(0.6)
    _, _, info = build_data(DatasetSpec(name="synthetic", image_size=16, num_classes=20, noise=0.6, train_size=40,
                                        val_size=20), batch_size=8)
    assert info.num_classes == 20
    # the training split does not depend on the validation size
    assert torch.equal(synthetic_arrays(4, 60, 5, 16)[0], synthetic_arrays(4, 60, 50, 16)[0])


# --------------------------------------------------------------------------- eval_split: holdout
def test_holdout_split_is_fixed_disjoint_and_covers_the_training_set():
    torch.manual_seed(1)
    keep, out = holdout_split(1000)
    torch.manual_seed(2)
    keep2, out2 = holdout_split(1000)
    assert torch.equal(keep, keep2) and torch.equal(out, out2)
    assert len(out) == 200 and len(keep) == 800
    assert sorted(torch.cat([keep, out]).tolist()) == list(range(1000))
    assert holdout_split(2)[1].tolist() != [] and len(holdout_split(2)[0]) == 1
    with pytest.raises(ValueError, match="at least 2"):
        holdout_split(1)


@pytest.mark.parametrize("dataset", [{"name": "digits"}, {"name": "synthetic", "train_size": 100, "val_size": 30}])
def test_holdout_trains_on_80_and_evaluates_on_20_percent_of_the_training_set(dataset):
    test_train, test_val, test_info = build_data(DatasetSpec(**dataset, image_size=16), batch_size=8)
    train, val, info = build_data(DatasetSpec(**dataset, image_size=16, eval_split="holdout"), batch_size=8)
    n = test_info.train_size
    keep, out = holdout_split(n)
    assert (info.train_size, info.val_size) == (len(keep), len(out))
    assert torch.equal(train.images, test_train.images[keep]) and torch.equal(val.images, test_train.images[out])
    assert torch.equal(val.labels, test_train.labels[out])
    # nothing of the test split is used
    test_rows = {row.numpy().tobytes() for row in test_val.images.flatten(1)}
    assert not test_rows & {row.numpy().tobytes() for row in torch.cat([train.images, val.images]).flatten(1)}


def test_holdout_on_a_file_dataset(tmp_path):
    from PIL import Image

    for split, count in (("train", 10), ("val", 3)):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / split / cls / f"{i}.png")
    spec = DatasetSpec(name="imagefolder", root=str(tmp_path), image_size=16, eval_split="holdout")
    train, val, info = build_data(spec, batch_size=4)
    assert (info.train_size, info.val_size) == (16, 4)
    assert sum(len(y) for _, y in val.batches()) == 4


# --------------------------------------------------------------------------- the device pipeline
def _reference_batches(images, labels, *, size, norm, batch_size, augment, epoch_seed):
    """The batches of the host pipeline before batches moved to the device: an image at a time
    for the crops (a Python loop), the same draws from the same per-batch generator."""
    import math

    import torch.nn.functional as F

    mean, std = torch.tensor(norm[0]).view(1, 3, 1, 1), torch.tensor(norm[1]).view(1, 3, 1, 1)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch_seed))
    for b in range(len(labels) // batch_size):
        idx = order[b * batch_size : (b + 1) * batch_size]
        x = F.interpolate(images[idx].float(), size=(size, size), mode="bilinear", align_corners=False)
        x = x.expand(-1, 3, -1, -1).contiguous()
        gen = torch.Generator().manual_seed((epoch_seed * 1_000_003 + b) % (2**63))
        n = x.shape[0]
        if augment == "crop_flip":
            pad = max(1, round(4 * size / 32))
            padded = F.pad(x, (pad, pad, pad, pad))
            offs = torch.randint(0, 2 * pad + 1, (n, 2), generator=gen)
            x = torch.stack([padded[i, :, oy : oy + size, ox : ox + size] for i, (oy, ox) in enumerate(offs.tolist())])
        elif augment == "rrc_flip":
            area = torch.empty(n).uniform_(0.08, 1.0, generator=gen)
            r = torch.exp(torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen))
            cw, ch = torch.sqrt(area * r).clamp(max=1.0), torch.sqrt(area / r).clamp(max=1.0)
            cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - cw)
            cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - ch)
            theta = torch.zeros(n, 2, 3)
            theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = cw, cx, ch, cy
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
        yield (x - mean) / std, labels[idx]


@pytest.mark.parametrize("augment", ["crop_flip", "rrc_flip", "flip"])
def test_device_pipeline_gives_the_batches_of_the_host_pipeline(augment):
    from hcd_core.data import DIGITS_HARD_NORM, digits_hard_arrays

    spec = DatasetSpec(name="digits_hard", image_size=32)
    train, _, _ = build_data(spec, batch_size=64, augment=augment, device=torch.device("cpu"))
    xtr, ytr, _, _ = digits_hard_arrays()
    want = _reference_batches(xtr, ytr, size=32, norm=DIGITS_HARD_NORM, batch_size=64, augment=augment,
                              epoch_seed=77)
    got = train.batches(epoch_seed=77)
    for _ in range(3):
        (x, y), (rx, ry) = next(got), next(want)
        assert torch.equal(y, ry)
        assert torch.equal(x, rx)
    # A resumed epoch starts at its batch and sees the same batches.
    third = list(itertools.islice(train.batches(epoch_seed=77, start=2), 1))[0]
    assert torch.equal(third[0], x)


@pytest.mark.parametrize("augment", ["crop_flip", "rrc_flip"])
def test_shards_together_are_the_whole_batch(augment):
    from hcd_core.data import Shard

    spec = DatasetSpec(name="synthetic", image_size=16, num_classes=3, train_size=48, val_size=10)
    whole_tr, whole_va, _ = build_data(spec, batch_size=12, augment=augment, eval_batch_size=4)
    parts = [build_data(spec, batch_size=12, augment=augment, eval_batch_size=4, shard=Shard(r, 3)) for r in range(3)]
    for b, (x, y) in enumerate(whole_tr.batches(epoch_seed=9)):
        pieces = [list(p[0].batches(epoch_seed=9))[b] for p in parts]
        assert all(len(py) == 4 for _, py in pieces)  # an equal part each
        assert torch.equal(torch.cat([px for px, _ in pieces]), x)
        assert torch.equal(torch.cat([py for _, py in pieces]), y)
    # Evaluation: the last batch (2 of 10) splits unevenly; every sample is evaluated exactly once.
    seen = torch.cat([torch.cat([y for _, y in p[1].batches()]) for p in parts]).sort().values
    assert torch.equal(seen, torch.cat([y for _, y in whole_va.batches()]).sort().values)


def test_imagefolder_cache_matches_the_per_sample_loader(tmp_path):
    """Decoded once to a uint8 cache, an imagefolder's evaluation batches are those of torchvision's
    Resize + CenterCrop per sample; its training batches are a function of the epoch seed."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(5):
                pixels = torch.randint(0, 256, (40, 40, 3), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    spec = DatasetSpec(name="imagefolder", root=str(tmp_path), image_size=24)
    tr, va, _ = build_data(spec, batch_size=4, augment="rrc_flip", eval_batch_size=4, pipeline="auto")
    _, va_host, _ = build_data(spec, batch_size=4, augment="rrc_flip", eval_batch_size=4, pipeline="host")
    assert type(va).__name__ == "TensorBatches" and type(va_host).__name__ == "LoaderBatches"
    for (x, y), (hx, hy) in zip(va.batches(), va_host.batches(), strict=True):
        assert torch.equal(y, hy)
        torch.testing.assert_close(x, hx, atol=1e-5, rtol=0)
    first = torch.cat([x for x, _ in tr.batches(epoch_seed=3)])
    assert torch.equal(first, torch.cat([x for x, _ in tr.batches(epoch_seed=3)]))
    assert first.shape == (8, 3, 24, 24)
    # Over the cap, the same dataset is read per sample by the DataLoader.
    tr_big, _, _ = build_data(spec, batch_size=4, pipeline="auto", cache_max_bytes=1)
    assert type(tr_big).__name__ == "LoaderBatches"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_pipeline_on_cuda_matches_the_cpu():
    spec = DatasetSpec(name="digits_hard", image_size=32)
    cpu, _, _ = build_data(spec, batch_size=64, augment="crop_flip")
    gpu, _, _ = build_data(spec, batch_size=64, augment="crop_flip", device=torch.device("cuda"))
    (x, y), (gx, gy) = next(cpu.batches(epoch_seed=5)), next(gpu.batches(epoch_seed=5))
    assert gx.is_cuda and torch.equal(gy.cpu(), y)
    torch.testing.assert_close(gx.cpu(), x, atol=1e-5, rtol=0)
