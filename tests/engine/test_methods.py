"""Methods: forward + backward on real heterogeneous pairs, gradient routing and every HCD switch."""

from __future__ import annotations

import pytest
import torch

from hcd_core import losses
from hcd_core.features import build_student
from hcd_core.method_configs import (
    METHOD_CONFIGS,
    METHOD_NAMES,
    CeConfig,
    DistConfig,
    DkdConfig,
    HcdConfig,
    KdConfig,
    OfaConfig,
)
from hcd_core.methods import METHODS, StackedLinear, build_method, count_parameters
from hcd_core.teacher import build_teacher

torch.set_num_threads(1)

NUM_CLASSES = 5
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
TERMS = {
    "ce": {"ce"}, "kd": {"ce", "kd"}, "dkd": {"ce", "tckd", "nckd"}, "dist": {"ce", "inter", "intra"},
    "ofa": {"ce", "ofa_logits", "ofa_stages"}, "hcd": {"ce", "kd", "sdd_ce", "sdd_kl", "ol"},
}


def _pair(teacher_arch: str, student_arch: str, num_stages: int = 4):
    torch.manual_seed(0)
    teacher = build_teacher(teacher_arch, NUM_CLASSES, input_size=32, input_norm=HALF)
    student = build_student(student_arch, NUM_CLASSES, 32, num_stages=num_stages)
    return teacher, student


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 32, 32, generator=g), torch.tensor([1, 3])


def _run(method, student, teacher, *, epoch: float = 0.0, label_smoothing: float = 0.0, seed: int = 0):
    x, y = _data(seed)
    student_out = student(x, with_features=method.needs_features)
    teacher_out = teacher(x) if method.needs_teacher else None
    return method(student_out, teacher_out, y, epoch=epoch, label_smoothing=label_smoothing)


def _nonzero_grad(params) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


@pytest.fixture(scope="module")
def tiny_pair():
    return _pair("test_vit", "test_resnet")


# --------------------------------------------------------------------------- registry
def test_every_config_has_one_implementation_and_vice_versa():
    assert set(METHODS) == set(METHOD_CONFIGS.values())
    for name, config_class in METHOD_CONFIGS.items():
        method_class = METHODS[config_class]
        assert method_class.name == name and method_class.config_class is config_class
        assert method_class.needs_teacher == config_class.needs_teacher
    assert METHOD_NAMES == tuple(METHOD_CONFIGS) == ("ce", "kd", "dkd", "dist", "ofa", "hcd")


# --------------------------------------------------------------------------- every method
@pytest.mark.parametrize("spec", [CeConfig(), KdConfig(), DkdConfig(), DistConfig(), OfaConfig(), HcdConfig()],
                         ids=lambda s: s.name)
def test_every_method_forward_backward(tiny_pair, spec):
    teacher, student = tiny_pair
    student.zero_grad(set_to_none=True)
    method = build_method(spec, student, teacher, NUM_CLASSES)
    out = _run(method, student, teacher, epoch=25.0, label_smoothing=0.1)
    assert set(out) == TERMS[spec.name] | {"loss"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())
    out["loss"].backward()
    assert _nonzero_grad(student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    if spec.name in ("ofa", "hcd"):
        assert method.needs_features
        for projector in method.projectors:
            assert _nonzero_grad(projector.parameters())
    else:
        assert count_parameters(method) == 0
    assert not any(k.startswith(("model.", "student", "teacher")) for k in method.state_dict())


def test_simple_methods_weight_their_terms(tiny_pair):
    teacher, student = tiny_pair
    with torch.no_grad():
        kd = _run(build_method(KdConfig(w_ce=0.5, w_kd=3.0, temperature=2.0), student, teacher, NUM_CLASSES),
                  student, teacher)
        dist = _run(build_method(DistConfig(beta=2.0, gamma=0.5, temperature=2.0), student, teacher, NUM_CLASSES),
                    student, teacher)
        x, y = _data()
        z_s, z_t = student(x).logits, teacher(x).logits
    torch.testing.assert_close(kd["loss"], 0.5 * kd["ce"] + 3.0 * kd["kd"])
    torch.testing.assert_close(kd["kd"], losses.kd_loss(z_s, z_t, 2.0))
    torch.testing.assert_close(dist["loss"], dist["ce"] + 4.0 * (2.0 * dist["inter"] + 0.5 * dist["intra"]))


def test_dkd_linear_warmup(tiny_pair):
    teacher, student = tiny_pair
    method = build_method(DkdConfig(warmup_epochs=20), student, teacher, NUM_CLASSES)
    with torch.no_grad():
        outs = {e: _run(method, student, teacher, epoch=e) for e in (0.0, 5.0, 40.0)}
    for epoch, factor in ((0.0, 0.0), (5.0, 0.25), (40.0, 1.0)):
        o = outs[epoch]
        torch.testing.assert_close(o["loss"], o["ce"] + factor * (o["tckd"] + 8.0 * o["nckd"]))
    assert build_method(DkdConfig(warmup_epochs=0), student, teacher, NUM_CLASSES).warmup_factor(0.0) == 1.0


def test_ofa_stage_term_is_the_sum_over_branches(tiny_pair):
    teacher, student = tiny_pair
    method = build_method(OfaConfig(num_stages=3, eps=1.5), student, teacher, NUM_CLASSES)
    x, y = _data()
    with torch.no_grad():
        s_out, t_out = student(x, with_features=True), teacher(x)
        out = method(s_out, t_out, y, epoch=0.0, label_smoothing=0.0)
        h = torch.stack([p(f) for p, f in zip(method.projectors, s_out.features[-3:], strict=True)])
        branches = method.heads(h)
    expected = sum(losses.ofa_loss(b, t_out.logits, y, eps=1.5) for b in branches)
    torch.testing.assert_close(out["ofa_stages"], expected)
    torch.testing.assert_close(out["loss"], out["ce"] + out["ofa_logits"] + out["ofa_stages"])
    assert len(method.projectors) == 3 and method.heads.weight.shape == (3, max(96, 64), NUM_CLASSES)


def test_method_needs_teacher_and_features(tiny_pair):
    teacher, student = tiny_pair
    with pytest.raises(ValueError, match="needs a teacher"):
        build_method(HcdConfig(), student, None, NUM_CLASSES)
    with pytest.raises(ValueError, match="classes"):
        build_method(KdConfig(), student, teacher, NUM_CLASSES + 1)
    method = build_method(HcdConfig(), student, teacher, NUM_CLASSES)
    x, y = _data()
    with pytest.raises(ValueError, match="with_features=True"):
        method(student(x), teacher(x), y, epoch=0.0, label_smoothing=0.0)


# --------------------------------------------------------------------------- HCD on heterogeneous pairs
HCD_PAIRS = [
    ("swin_tiny_patch4_window7_224", "test_resnet"),  # Swin -> CNN
    ("test_vit", "test_convnext"),  # ViT -> ConvNeXt
    ("mixer_b16_224", "test_efficientnet"),  # Mixer -> CNN
    ("test_convnext", "test_vit"),  # ConvNeXt -> ViT
    ("test_resnet", "vit_tiny_patch16_224"),  # CNN -> ViT
    ("test_efficientnet", "resmlp_12_224"),  # CNN -> ResMLP
    ("test_vit", "mobilenetv2_100"),  # ViT -> MobileNetV2
    ("test_convnext", "swin_tiny_patch4_window7_224"),  # ConvNeXt -> Swin
    ("test_vit", "mixer_b16_224"),  # ViT -> Mixer
]


@pytest.mark.parametrize("teacher_arch,student_arch", HCD_PAIRS)
def test_hcd_heterogeneous_pairs_route_gradients(teacher_arch, student_arch):
    teacher, student = _pair(teacher_arch, student_arch)
    method = build_method(HcdConfig(), student, teacher, NUM_CLASSES)
    out = _run(method, student, teacher, label_smoothing=0.1)
    assert set(out) == TERMS["hcd"] | {"loss"}
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert _nonzero_grad(student.parameters())
    # Every stage's projector and CFM slice (stacked over stages) receives gradient.
    assert len(method.projectors) == 4
    for projector in method.projectors:
        assert _nonzero_grad(projector.parameters())
    cfm = method.cfm[0]
    assert cfm.weight.shape[0] == 4
    for k in range(4):
        assert cfm.weight.grad[k].abs().sum() > 0 and cfm.bias.grad[k].abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    keys = method.state_dict().keys()
    assert keys and all(k.startswith(("projectors.", "cfm.")) for k in keys)


# --------------------------------------------------------------------------- HCD switches
def test_hcd_dimensions_follow_the_spec(tiny_pair):
    teacher, student = tiny_pair  # d_t = 64 (test_vit), d_s = 96 (test_resnet)
    method = build_method(HcdConfig(num_sub_logits=3), student, teacher, NUM_CLASSES)
    dim = max(student.shapes.pre_logit_dim, teacher.pre_logit_dim)
    assert dim == 96
    assert method.cfm[0].weight.shape == (4, dim + 64, 3 * NUM_CLASSES)
    x, _ = _data()
    feats = student(x, with_features=True).features
    assert [tuple(p(f).shape) for p, f in zip(method.projectors, feats, strict=True)] == [(2, dim)] * 4
    # Downsampling blocks until the map is no larger than the deepest stage's (8, 4, 2 -> 1 pixel).
    assert [p.num_blocks for p in method.projectors] == [3, 2, 1, 0]

    small = build_method(HcdConfig(proj_dim=32), student, teacher, NUM_CLASSES)
    assert [tuple(p(f).shape) for p, f in zip(small.projectors, feats, strict=True)] == [(2, 32)] * 4
    assert small.cfm[0].weight.shape == (4, 32 + 64, 4 * NUM_CLASSES)


def test_hcd_cfm_mlp_adds_a_hidden_layer(tiny_pair):
    teacher, student = tiny_pair
    linear = build_method(HcdConfig(cfm="linear"), student, teacher, NUM_CLASSES)
    mlp = build_method(HcdConfig(cfm="mlp"), student, teacher, NUM_CLASSES)
    assert [type(m) for m in linear.cfm] == [StackedLinear]
    assert [type(m).__name__ for m in mlp.cfm] == ["StackedLinear", "ReLU", "StackedLinear"]
    assert mlp.cfm[0].weight.shape == (4, 96 + 64, 64) and mlp.cfm[2].weight.shape == (4, 64, 4 * NUM_CLASSES)
    out = _run(mlp, student, teacher)
    out["loss"].backward()
    assert _nonzero_grad([mlp.cfm[0].weight]) and _nonzero_grad([mlp.cfm[2].weight])


def test_hcd_num_stages_changes_the_projectors():
    teacher, student = _pair("test_vit", "test_resnet", num_stages=2)
    method = build_method(HcdConfig(num_stages=2), student, teacher, NUM_CLASSES)
    assert len(method.projectors) == 2 and method.cfm[0].weight.shape[0] == 2
    out = _run(method, student, teacher)
    out["loss"].backward()
    assert all(_nonzero_grad(p.parameters()) for p in method.projectors)
    # A student tapped at 4 points also serves a 1-stage method (its deepest point).
    _, student4 = _pair("test_vit", "test_resnet")
    one = build_method(HcdConfig(num_stages=1), student4, teacher, NUM_CLASSES)
    assert len(one.projectors) == 1 and one.projectors[0].num_blocks == 0


def test_hcd_weights_and_switches_reach_the_losses(tiny_pair):
    teacher, student = tiny_pair

    def run(**switches):
        torch.manual_seed(3)
        method = build_method(HcdConfig(**switches), student, teacher, NUM_CLASSES)
        return method, _run(method, student, teacher)

    _, base = run(w_ce=0.5, w_kd=2.0, w_sdd_ce=0.25, w_sdd_kl=3.0, w_ol=4.0)
    expected = 0.5 * base["ce"] + 2.0 * base["kd"] + 0.25 * base["sdd_ce"] + 3.0 * base["sdd_kl"] + 4.0 * base["ol"]
    torch.testing.assert_close(base["loss"], expected)

    _, summed = run()
    _, mean = run(stage_reduce="mean")
    for term in ("sdd_ce", "sdd_kl", "ol"):
        torch.testing.assert_close(summed[term], 4 * mean[term])
    _, fused_mean = run(fusion="mean")
    assert not torch.allclose(fused_mean["sdd_ce"], summed["sdd_ce"])
    torch.testing.assert_close(fused_mean["ce"], summed["ce"])
    _, raw = run(ol_input="raw", ol_threshold=-1.0)
    _, fused = run(ol_input="fused", ol_threshold=-1.0)
    assert not torch.allclose(raw["ol"], fused["ol"])

    # detach_fused: with only sdd_kl weighted, no gradient may reach the CFM through the fused side.
    for detach, reaches in ((True, False), (False, True)):
        student.zero_grad(set_to_none=True)
        method, out = run(detach_fused=detach, w_ce=0.0, w_kd=0.0, w_sdd_ce=0.0, w_ol=0.0)
        out["loss"].backward()
        assert _nonzero_grad([method.cfm[0].weight]) == reaches
        assert _nonzero_grad(student.parameters())


def test_hcd_extras_only_in_state_dict(tiny_pair):
    teacher, student = tiny_pair
    method = build_method(HcdConfig(), student, teacher, NUM_CLASSES)
    names = {n for n, _ in method.named_parameters()}
    assert names and all(n.startswith(("projectors.", "cfm.")) for n in names)
    student_ids = {id(p) for p in student.parameters()} | {id(p) for p in teacher.parameters()}
    assert not any(id(p) in student_ids for p in method.parameters())
    assert count_parameters(method) == sum(p.numel() for p in method.parameters()) > 0


def test_hcd_cfm_without_the_teacher_feature(tiny_pair):
    teacher, student = tiny_pair  # D = 96, d_t = 64
    for cfm, first in (("linear", (4, 96, 4 * NUM_CLASSES)), ("mlp", (4, 96, 64))):
        method = build_method(HcdConfig(cfm=cfm, cfm_teacher_feature=False), student, teacher, NUM_CLASSES)
        assert method.cfm[0].weight.shape == first
    method = build_method(HcdConfig(cfm_teacher_feature=False), student, teacher, NUM_CLASSES)
    x, y = _data()
    s_out = student(x, with_features=True)
    t_out = teacher(x)
    seen = []
    handle = method.cfm.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
    try:
        method(s_out, t_out, y)
        # another teacher feature: the CFM's output (the sub-logits) does not change
        method(s_out, type(t_out)(logits=t_out.logits, pre_logits=t_out.pre_logits + 1.0), y)
    finally:
        handle.remove()
    torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=0)


def test_hcd_ablation_switches_reach_the_losses(tiny_pair, monkeypatch):
    teacher, student = tiny_pair
    seen = {}
    original = losses.hcd_loss_terms_stacked

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(losses, "hcd_loss_terms_stacked", spy)
    switches = dict(sdd_ce_input="raw", fusion_student=0.5, fusion_teacher=2.0, sdd_temperature=3.0)
    method = build_method(HcdConfig(temperature=4.0, **switches), student, teacher, NUM_CLASSES)
    out = _run(method, student, teacher)
    assert {k: seen[k] for k in switches} == switches and seen["temperature"] == 4.0
    assert torch.isfinite(out["loss"])
