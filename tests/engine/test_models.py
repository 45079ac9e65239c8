"""Model building, feature probing, the student wrapper and the frozen teacher (CPU, 32px, batch 2)."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from hcd_core.features import build_student, feature_point_indices, probe_feature_shapes
from hcd_core.hashing import sha256_file
from hcd_core.models import ALLOWED_ARCHS, create_timm_model
from hcd_core.teacher import build_teacher

torch.set_num_threads(1)

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _batch(size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _state_file(model: torch.nn.Module, path) -> None:
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


# --------------------------------------------------------------------------- create_timm_model
@pytest.mark.parametrize("name", ["hf-hub:foo/bar", "resnet101", "timm/resnet18", ""])
def test_rejects_names_outside_allow_list(name):
    with pytest.raises(ValueError, match="not allowed"):
        create_timm_model(name, 10, 32)
    with pytest.raises(ValueError, match="not allowed"):
        build_student(name, 10, 32)
    with pytest.raises(ValueError, match="not allowed"):
        build_teacher(name, 10, input_size=32, input_norm=HALF)


def test_img_size_passed_where_the_architecture_takes_it():
    vit = create_timm_model("test_vit", 7, 64)
    assert tuple(vit.patch_embed.img_size) == (64, 64)
    assert vit.num_classes == 7
    cnn = create_timm_model("test_resnet", 7, 64)  # no img_size argument: still builds
    assert cnn(_batch(64)).shape == (2, 7)


# --------------------------------------------------------------------------- feature probing
def test_hierarchical_shapes_resnet18():
    shapes = build_student("resnet18", 10, 32).shapes
    assert shapes.indices == [1, 2, 3, 4]  # layer1..layer4 (index 0 is the stem)
    assert shapes.channels == [64, 128, 256, 512]
    assert shapes.sizes == [(8, 8), (4, 4), (2, 2), (1, 1)]
    assert shapes.pre_logit_dim == 512


def test_hierarchical_shapes_swin_and_num_stages():
    shapes = build_student("swin_tiny_patch4_window7_224", 10, 32, num_stages=2).shapes
    assert shapes.indices == [2, 3]
    assert shapes.channels == [384, 768]
    assert shapes.sizes == [(2, 2), (1, 1)]
    assert shapes.pre_logit_dim == 768


def test_isotropic_shapes_are_evenly_spaced_blocks_ending_with_the_last():
    vit = build_student("vit_tiny_patch16_224", 10, 32)
    assert vit.shapes.indices == [2, 5, 8, 11]
    assert vit.shapes.channels == [192] * 4
    assert vit.shapes.sizes == [(2, 2)] * 4
    assert vit.shapes.pre_logit_dim == 192
    assert feature_point_indices(vit.model, 2) == [5, 11]
    assert feature_point_indices(vit.model, 1) == [11]
    small = build_student("test_vit", 10, 32)  # 6 blocks
    idx = small.shapes.indices
    assert len(idx) == 4 and idx[-1] == 5 and idx == sorted(set(idx))


def test_probe_restores_training_mode_and_real_features_match():
    student = build_student("test_convnext", 5, 32)
    assert student.training and all(m.training for m in student.model.modules())
    out = student(_batch(), with_features=True)
    assert [tuple(f.shape[1:]) for f in out.features] == [
        (c, *s) for c, s in zip(student.shapes.channels, student.shapes.sizes, strict=True)
    ]
    student.model.eval()  # a model probed in eval mode stays in eval mode
    probe_feature_shapes(student.model, 32, student.shapes.indices)
    assert not any(m.training for m in student.model.modules())


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit", "test_convnext", "test_efficientnet"])
def test_student_logits_with_features_equal_the_plain_model(arch):
    torch.manual_seed(0)
    student = build_student(arch, 5, 32).eval()
    x = _batch()
    with torch.no_grad():
        plain = student.model(x)
        without = student(x)
        with_feats = student(x, with_features=True)
    assert without.features is None
    torch.testing.assert_close(without.logits, plain)
    torch.testing.assert_close(with_feats.logits, plain, atol=1e-5, rtol=1e-5)
    assert len(with_feats.features) == 4


# --------------------------------------------------------------------------- frozen teacher
def test_teacher_is_frozen_forever():
    teacher = build_teacher("test_resnet", 5, input_size=32, input_norm=HALF)
    teacher.train()
    assert not any(m.training for m in teacher.modules())
    teacher.train(True)
    assert not teacher.training and not teacher.model.training
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.model.train()  # even the inner model flipped by hand is put back before use
    x = _batch().requires_grad_(True)
    out = teacher(x)
    assert not teacher.model.training
    assert out.logits.grad_fn is None and out.pre_logits.grad_fn is None
    assert out.pre_logits.shape == (2, teacher.pre_logit_dim) and teacher.num_classes == 5


@pytest.mark.parametrize("arch", ["test_vit", "test_convnext", "test_efficientnet"])
def test_teacher_logits_and_pre_logits_match_the_model(arch):
    teacher = build_teacher(arch, 5, input_size=32, input_norm=HALF)
    x = _batch()
    out = teacher(x)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, teacher.model(x), atol=1e-5, rtol=1e-5)
        feats = teacher.model.forward_features(x)
        torch.testing.assert_close(out.pre_logits, teacher.model.forward_head(feats, pre_logits=True))


def test_teacher_adapts_size_and_normalisation():
    torch.manual_seed(0)
    teacher = build_teacher("test_vit", 5, input_size=32, input_norm=IMAGENET, teacher_size=64, teacher_norm=HALF)
    assert tuple(teacher.model.patch_embed.img_size) == (64, 64)
    x = _batch()
    mean_s, std_s = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    mean_t, std_t = (torch.tensor(v).view(1, 3, 1, 1) for v in HALF)
    expected_input = F.interpolate(((x * std_s + mean_s) - mean_t) / std_t, size=(64, 64), mode="bilinear")
    torch.testing.assert_close(teacher.adapt(x), expected_input, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x).logits, teacher.model(expected_input), atol=1e-5, rtol=1e-5)
    assert teacher.adapt(x.double()).dtype == torch.float64
    same = build_teacher("test_vit", 5, input_size=32, input_norm=HALF)
    assert same.adapt(x) is x  # nothing to adapt: the batch goes through untouched


def test_teacher_weights_round_trip_through_safetensors(tmp_path):
    torch.manual_seed(1)
    source = create_timm_model("test_convnext", 6, 32).eval()
    path = tmp_path / "teacher.safetensors"
    _state_file(source, path)
    teacher = build_teacher("test_convnext", 6, input_size=32, input_norm=HALF, weights_path=path)
    x = _batch()
    with torch.no_grad():
        torch.testing.assert_close(teacher(x).logits, source(x))
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_teacher_weights_errors_are_clear(tmp_path):
    path = tmp_path / "teacher.safetensors"
    _state_file(create_timm_model("test_convnext", 6, 32), path)
    mismatch = r"10 classes.*shape mismatches: .*head\.fc\.weight: file \(6, 64\) vs model \(10, 64\)"
    with pytest.raises(ValueError, match=mismatch):
        build_teacher("test_convnext", 10, input_size=32, input_norm=HALF, weights_path=path)
    with pytest.raises(ValueError, match=r"'test_resnet'.*missing keys: .*unexpected keys: "):
        build_teacher("test_resnet", 6, input_size=32, input_norm=HALF, weights_path=path)
    with pytest.raises(FileNotFoundError):
        build_teacher("test_convnext", 6, input_size=32, input_norm=HALF, weights_path=tmp_path / "none")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        build_teacher("test_convnext", 6, input_size=32, input_norm=HALF, weights_path=junk)


def test_allow_list_is_unchanged_core():
    for arch in ("resnet18", "mobilenetv2_100", "vit_small_patch16_224", "swin_tiny_patch4_window7_224",
                 "mixer_b16_224", "resmlp_12_224", "convnext_tiny", "efficientnet_b0"):
        assert arch in ALLOWED_ARCHS
