"""Datasets: fixed digits split, deterministic synthetic task, normalisation, exact augmentation."""

from __future__ import annotations

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
