"""Golden values for hcd_core.losses, computed by hand in plain Python (math.exp / math.log over lists).

Two kinds of expected values: closed forms written out explicitly (e.g. ln(3/2)), and naive
per-sample loops over Python lists that share no code with the library.
"""

from __future__ import annotations

import math

import pytest
import torch

from hcd_core.losses import (
    dist_loss,
    dist_terms,
    dkd_loss,
    dkd_terms,
    hcd_loss_terms,
    kd_loss,
    kl_div_t,
    ofa_loss,
    orthogonality_loss,
)

TOL = dict(rel=1e-6, abs=1e-7)
LN2, LN3 = math.log(2.0), math.log(3.0)


# --------------------------------------------------------------------------- plain-Python references
def py_softmax(row, temperature=1.0):
    scaled = [v / temperature for v in row]
    top = max(scaled)
    exps = [math.exp(v - top) for v in scaled]
    total = sum(exps)
    return [e / total for e in exps]


def py_kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def py_kl_t(target_rows, input_rows, temperature):
    per_row = [
        py_kl(py_softmax(a, temperature), py_softmax(b, temperature))
        for a, b in zip(target_rows, input_rows, strict=True)
    ]
    return temperature**2 * sum(per_row) / len(per_row)


def py_ce(rows, labels, smoothing=0.0):
    losses = []
    for row, y in zip(rows, labels, strict=True):
        log_q = [math.log(v) for v in py_softmax(row)]
        classes = len(row)
        losses.append(-(1 - smoothing) * log_q[y] - smoothing * sum(log_q) / classes)
    return sum(losses) / len(losses)


def py_pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    ca, cb = [v - ma for v in a], [v - mb for v in b]
    num = sum(x * y for x, y in zip(ca, cb, strict=True))
    den = math.sqrt(sum(x * x for x in ca)) * math.sqrt(sum(y * y for y in cb)) + 1e-8
    return num / den


def py_ol(sub_logits, labels, theta, mask_target):
    """sub_logits: [sample][i][class] lists."""
    values = []
    for subs, y in zip(sub_logits, labels, strict=True):
        vecs = []
        for v in subs:
            v = [0.0 if (mask_target and c == y) else x for c, x in enumerate(v)]
            norm = max(math.sqrt(sum(x * x for x in v)), 1e-12)
            vecs.append([x / norm for x in v])
        n = len(vecs)
        for i in range(n):
            for j in range(n):
                if i != j:
                    cos = sum(x * y_ for x, y_ in zip(vecs[i], vecs[j], strict=True))
                    values.append(max(cos - theta, 0.0) ** 2)
    return sum(values) / len(values) if values else 0.0


def as_t(rows, requires_grad=False):
    return torch.tensor(rows, dtype=torch.float64, requires_grad=requires_grad)


def labels(values):
    return torch.tensor(values, dtype=torch.long)


def rand_rows(gen, *shape, scale=2.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).tolist()


# --------------------------------------------------------------------------- KL / KD
def test_kd_closed_form_t1():
    teacher = [[0.0, LN2, LN3], [0.0, 0.0, 0.0]]  # softmax: [1,2,3]/6 and uniform
    student = [[0.0, 0.0, 0.0], [0.0, LN2, LN3]]
    row1 = sum(i / 6 * math.log((i / 6) / (1 / 3)) for i in (1, 2, 3))
    row2 = sum(1 / 3 * math.log((1 / 3) / (i / 6)) for i in (1, 2, 3))
    expected = (row1 + row2) / 2
    assert kd_loss(as_t(student), as_t(teacher), temperature=1.0).item() == pytest.approx(expected, **TOL)
    # direction matters: the teacher is the target distribution
    assert kl_div_t(as_t(teacher), as_t(student), 1.0).item() == pytest.approx(expected, **TOL)
    assert abs(row1 - row2) > 1e-3


def test_kd_closed_form_t4_scales_by_t_squared():
    # logits multiplied by T give the same distributions at temperature T: loss = T^2 * (T=1 value)
    teacher = [[0.0, 4 * LN2, 4 * LN3]]
    student = [[0.0, 0.0, 0.0]]
    row = sum(i / 6 * math.log(i / 2) for i in (1, 2, 3))
    assert kd_loss(as_t(student), as_t(teacher), temperature=4.0).item() == pytest.approx(16 * row, **TOL)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_matches_naive_reference(temperature):
    gen = torch.Generator().manual_seed(0)
    s, t = rand_rows(gen, 2, 3), rand_rows(gen, 2, 3)
    got = kd_loss(as_t(s), as_t(t), temperature=temperature).item()
    assert got == pytest.approx(py_kl_t(t, s, temperature), **TOL)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_identical_logits_is_zero(temperature):
    z = as_t([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])
    assert kd_loss(z, z.clone(), temperature=temperature).item() == pytest.approx(0.0, abs=1e-12)


def test_kd_gradient_reaches_student_not_teacher():
    s = as_t([[1.0, 0.0, -1.0]], requires_grad=True)
    t = as_t([[0.0, 2.0, 0.0]], requires_grad=True)
    kd_loss(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_kl_div_t_flows_into_both_sides():
    a = as_t([[1.0, 0.0, -1.0]], requires_grad=True)
    b = as_t([[0.0, 2.0, 0.0]], requires_grad=True)
    kl_div_t(a, b, 2.0).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_half_precision_inputs_are_computed_in_float32():
    s = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.bfloat16)
    t = torch.tensor([[0.0, 2.0, 0.0]], dtype=torch.bfloat16)
    out = kd_loss(s, t, temperature=4.0)
    assert out.dtype == torch.float32
    # these values are exact in bfloat16, so float32 arithmetic must match the float64 reference
    assert out.item() == pytest.approx(py_kl_t([[0.0, 2.0, 0.0]], [[1.0, 0.0, -1.0]], 4.0), rel=1e-5)


# --------------------------------------------------------------------------- DKD
def py_dkd(student, teacher, target, temperature):
    tckd, nckd = [], []
    for s, t, y in zip(student, teacher, target, strict=True):
        ps, pt = py_softmax(s, temperature), py_softmax(t, temperature)
        tckd.append(py_kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]]))
        s_nt = [v for c, v in enumerate(s) if c != y]
        t_nt = [v for c, v in enumerate(t) if c != y]
        nckd.append(py_kl(py_softmax(t_nt, temperature), py_softmax(s_nt, temperature)))
    scale = temperature**2
    return scale * sum(tckd) / len(tckd), scale * sum(nckd) / len(nckd)


def test_dkd_closed_form():
    # teacher p = [1/2, 1/4, 1/4], student uniform, target 0:
    # TCKD = KL([1/2, 1/2] || [1/3, 2/3]); non-target parts are both uniform -> NCKD = 0.
    terms = dkd_terms(as_t([[0.0, 0.0, 0.0]]), as_t([[LN2, 0.0, 0.0]]), labels([0]), temperature=1.0)
    expected_tckd = 0.5 * math.log(0.5 / (1 / 3)) + 0.5 * math.log(0.5 / (2 / 3))
    assert terms["tckd"].item() == pytest.approx(expected_tckd, **TOL)
    assert terms["nckd"].item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_matches_naive_reference(temperature):
    gen = torch.Generator().manual_seed(1)
    s, t = rand_rows(gen, 3, 4), rand_rows(gen, 3, 4)
    y = [2, 0, 3]
    terms = dkd_terms(as_t(s), as_t(t), labels(y), temperature=temperature)
    tckd, nckd = py_dkd(s, t, y, temperature)
    assert terms["tckd"].item() == pytest.approx(tckd, **TOL)
    assert terms["nckd"].item() == pytest.approx(nckd, **TOL)
    loss = dkd_loss(as_t(s), as_t(t), labels(y), alpha=2.0, beta=3.0, temperature=temperature)
    assert loss.item() == pytest.approx(2.0 * tckd + 3.0 * nckd, **TOL)


def test_dkd_decomposes_kd():
    # per sample: KD = TCKD + (1 - p_t[target]) * NCKD (Zhao et al.'s identity)
    gen = torch.Generator().manual_seed(2)
    s, t = as_t(rand_rows(gen, 1, 5)), as_t(rand_rows(gen, 1, 5))
    y = labels([1])
    terms = dkd_terms(s, t, y, temperature=2.0)
    p_target = py_softmax(t[0].tolist(), 2.0)[1]
    assert kd_loss(s, t, temperature=2.0).item() == pytest.approx(
        terms["tckd"].item() + (1 - p_target) * terms["nckd"].item(), **TOL
    )


def test_dkd_confident_teacher_stays_finite():
    s = as_t([[0.0, 1.0, 2.0]], requires_grad=True)
    t = as_t([[80.0, 0.0, 0.0]])
    loss = dkd_loss(s, t, labels([0]), temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_dkd_teacher_gets_no_gradient():
    s = as_t([[1.0, 0.0, -1.0]], requires_grad=True)
    t = as_t([[0.0, 2.0, 0.0]], requires_grad=True)
    dkd_loss(s, t, labels([1])).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


# --------------------------------------------------------------------------- DIST
def py_dist(student, teacher, temperature):
    ps = [py_softmax(r, temperature) for r in student]
    pt = [py_softmax(r, temperature) for r in teacher]
    inter = 1 - sum(py_pearson(a, b) for a, b in zip(ps, pt, strict=True)) / len(ps)
    classes = len(ps[0])
    cols = [py_pearson([r[c] for r in ps], [r[c] for r in pt]) for c in range(classes)]
    intra = 1 - sum(cols) / classes
    return inter, intra


def test_dist_closed_form_anti_correlated():
    # two classes: centred vectors are (d, -d), so reversed predictions have Pearson -1 both ways
    s = as_t([[0.0, 1.0], [1.0, 0.0]])
    t = as_t([[1.0, 0.0], [0.0, 1.0]])
    terms = dist_terms(s, t)
    assert terms["inter"].item() == pytest.approx(2.0, abs=1e-6)
    assert terms["intra"].item() == pytest.approx(2.0, abs=1e-6)
    assert dist_loss(s, t, beta=1.0, gamma=2.0).item() == pytest.approx(6.0, abs=1e-6)


def test_dist_identical_logits_is_zero():
    z = as_t([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0], [0.0, 0.2, 0.1]])
    terms = dist_terms(z, z.clone())
    # Pearson = v / (v + 1e-8) with v the centred squared norm: zero up to the 1e-8 guard
    inter, intra = py_dist(z.tolist(), z.tolist(), 1.0)
    assert terms["inter"].item() == pytest.approx(inter, rel=1e-6) and 0 < inter < 1e-5
    assert terms["intra"].item() == pytest.approx(intra, rel=1e-6) and 0 < intra < 1e-5


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_dist_matches_naive_reference(temperature):
    gen = torch.Generator().manual_seed(3)
    s, t = rand_rows(gen, 3, 4), rand_rows(gen, 3, 4)
    terms = dist_terms(as_t(s), as_t(t), temperature=temperature)
    inter, intra = py_dist(s, t, temperature)
    assert terms["inter"].item() == pytest.approx(inter, **TOL)
    assert terms["intra"].item() == pytest.approx(intra, **TOL)
    loss = dist_loss(as_t(s), as_t(t), beta=0.5, gamma=3.0, temperature=temperature)
    assert loss.item() == pytest.approx(temperature**2 * (0.5 * inter + 3.0 * intra), **TOL)


def test_dist_teacher_gets_no_gradient():
    s = as_t([[1.0, 0.0, -1.0], [0.0, 0.5, 0.0]], requires_grad=True)
    t = as_t([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
    dist_loss(s, t).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


# --------------------------------------------------------------------------- OFA
def py_ofa(student, teacher, target, eps, temperature):
    losses = []
    for s, t, y in zip(student, teacher, target, strict=True):
        pt, ps = py_softmax(t, temperature), py_softmax(s, temperature)
        weights = [(p + (1.0 if c == y else 0.0)) ** eps - (1.0 if c == y else 0.0) for c, p in enumerate(pt)]
        losses.append(-sum(w * math.log(q) for w, q in zip(weights, ps, strict=True)))
    return sum(losses) / len(losses)


def test_ofa_closed_form_eps1_is_soft_cross_entropy():
    # eps = 1: w = softmax(t) -> teacher [1/4, 3/4], student [1/4, 3/4]: the entropy of [1/4, 3/4]
    s, t = as_t([[0.0, LN3]]), as_t([[0.0, LN3]])
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert ofa_loss(s, t, labels([1])).item() == pytest.approx(expected, **TOL)


def test_ofa_closed_form_eps2():
    # eps = 2, target 1: w = [(1/4)^2, (7/4)^2 - 1] = [1/16, 33/16]; student uniform
    s, t = as_t([[0.0, 0.0]]), as_t([[0.0, LN3]])
    expected = -(1 / 16 * math.log(0.5) + 33 / 16 * math.log(0.5))
    assert ofa_loss(s, t, labels([1]), eps=2.0).item() == pytest.approx(expected, **TOL)


@pytest.mark.parametrize(("eps", "temperature"), [(1.0, 1.0), (1.5, 2.0), (0.5, 1.0)])
def test_ofa_matches_naive_reference(eps, temperature):
    gen = torch.Generator().manual_seed(4)
    s, t = rand_rows(gen, 3, 5), rand_rows(gen, 3, 5)
    y = [4, 0, 2]
    got = ofa_loss(as_t(s), as_t(t), labels(y), eps=eps, temperature=temperature).item()
    assert got == pytest.approx(py_ofa(s, t, y, eps, temperature), **TOL)


def test_ofa_teacher_gets_no_gradient():
    s = as_t([[1.0, 0.0, -1.0]], requires_grad=True)
    t = as_t([[0.0, 2.0, 0.0]], requires_grad=True)
    ofa_loss(s, t, labels([2]), eps=1.5).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


# --------------------------------------------------------------------------- orthogonality
def test_ol_orthogonal_sub_logits_give_zero():
    z = as_t([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    for mask in (True, False):
        assert orthogonality_loss(z, labels([2]), threshold=0.0, mask_target=mask).item() == 0.0


@pytest.mark.parametrize("theta", [0.5, 0.2, -0.5])
def test_ol_identical_sub_logits_give_one_minus_theta_squared(theta):
    z = as_t([[[1.0, 2.0, 3.0]] * 3, [[-1.0, 0.5, 2.0]] * 3])
    got = orthogonality_loss(z, labels([0, 1]), threshold=theta, mask_target=False).item()
    assert got == pytest.approx((1 - theta) ** 2, **TOL)


def test_ol_mask_target_removes_the_shared_target_entry():
    # [1,0,1] and [0,1,1] share only the target entry: cosine 1/2 unmasked, 0 once it is masked
    z = as_t([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]])
    y = labels([2])
    assert orthogonality_loss(z, y, threshold=0.25, mask_target=False).item() == pytest.approx(0.0625, **TOL)
    assert orthogonality_loss(z, y, threshold=0.25, mask_target=True).item() == 0.0


def test_ol_threshold_and_negative_similarity():
    z = as_t([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]])  # cosine 1/2
    y = labels([0])  # masking entry 0 leaves [0,0,1] and [0,1,1]: cosine 1/sqrt(2)
    c = 1 / math.sqrt(2)
    assert orthogonality_loss(z, y, threshold=0.0).item() == pytest.approx(c**2, **TOL)
    assert orthogonality_loss(z, y, threshold=0.5).item() == pytest.approx((c - 0.5) ** 2, **TOL)
    assert orthogonality_loss(z, y, threshold=0.8).item() == 0.0
    opposite = as_t([[[1.0, 0.0], [-1.0, 0.0]]])  # cosine -1: relu clips it
    assert orthogonality_loss(opposite, labels([1]), threshold=0.0).item() == 0.0


@pytest.mark.parametrize("mask_target", [True, False])
def test_ol_matches_naive_reference(mask_target):
    gen = torch.Generator().manual_seed(5)
    z = rand_rows(gen, 2, 3, 4)
    y = [1, 3]
    got = orthogonality_loss(as_t(z), labels(y), threshold=0.1, mask_target=mask_target).item()
    assert got == pytest.approx(py_ol(z, y, 0.1, mask_target), **TOL)


def test_ol_single_sub_logit_is_zero_and_zero_vectors_are_safe():
    assert orthogonality_loss(as_t([[[1.0, 2.0]]]), labels([0])).item() == 0.0
    # after masking, the first sub-logit is all zeros: clamped norm keeps it finite
    z = as_t([[[0.0, 5.0, 0.0], [1.0, 1.0, 0.0]]], requires_grad=True)
    loss = orthogonality_loss(z, labels([1]), threshold=0.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z.grad).all()


# --------------------------------------------------------------------------- HCD
def py_hcd(student, teacher, stages, target, *, temperature=1.0, fusion="sum", ol_threshold=0.5,
           ol_input="fused", mask_target=True, stage_reduce="sum", label_smoothing=0.0, sdd_ce_input="fused",
           fusion_student=1.0, fusion_teacher=1.0, sdd_temperature=None):
    sdd_t = temperature if sdd_temperature is None else sdd_temperature
    sdd_ce, sdd_kl, ol = [], [], []
    for raw in stages:  # raw: [sample][i][class]
        fused = [
            [[(fusion_student * a + fusion_teacher * b) / (2 if fusion == "mean" else 1)
              for a, b in zip(sub, teacher[s], strict=True)]
             for sub in raw[s]]
            for s in range(len(raw))
        ]
        ce_rows = fused if sdd_ce_input == "fused" else raw
        n = len(raw[0])
        sdd_ce.append(
            sum(py_ce([ce_rows[s][i] for s in range(len(fused))], target, label_smoothing) for i in range(n)) / n
        )
        sdd_kl.append(
            sum(py_kl_t([fused[s][i] for s in range(len(fused))], student, sdd_t) for i in range(n)) / n
        )
        ol.append(py_ol(fused if ol_input == "fused" else raw, target, ol_threshold, mask_target))
    reduce = sum if stage_reduce == "sum" else (lambda v: sum(v) / len(v))
    return {
        "ce": py_ce(student, target, label_smoothing),
        "kd": py_kl_t(teacher, student, temperature),
        "sdd_ce": reduce(sdd_ce),
        "sdd_kl": reduce(sdd_kl),
        "ol": reduce(ol),
    }


def hcd_case(seed=6, n=2, stages=2):
    gen = torch.Generator().manual_seed(seed)
    student, teacher = rand_rows(gen, 2, 3), rand_rows(gen, 2, 3)
    subs = [rand_rows(gen, 2, n, 3) for _ in range(stages)]
    return student, teacher, subs, [0, 2]


def run_hcd(student, teacher, subs, target, requires_grad=False, **switches):
    s, t = as_t(student, requires_grad), as_t(teacher, requires_grad)
    sub_t = [as_t(z, requires_grad) for z in subs]
    return s, t, sub_t, hcd_loss_terms(s, t, sub_t, labels(target), **switches)


def assert_terms(got, expected):
    assert set(got) == {"ce", "kd", "sdd_ce", "sdd_kl", "ol"}
    for key, value in expected.items():
        assert got[key].dim() == 0, key
        assert got[key].item() == pytest.approx(value, **TOL), key


SWITCH_CASES = [
    {},
    {"fusion": "mean"},
    {"ol_input": "raw"},
    {"mask_target": False, "ol_threshold": 0.0},
    {"stage_reduce": "mean"},
    {"label_smoothing": 0.1},
    {"temperature": 4.0, "fusion": "mean", "ol_input": "raw", "ol_threshold": -0.2},
    {"sdd_ce_input": "raw"},
    {"sdd_ce_input": "raw", "label_smoothing": 0.1, "stage_reduce": "mean"},
    {"fusion_student": 2.0, "fusion_teacher": 0.5},
    {"fusion_student": 0.5, "fusion_teacher": 3.0, "fusion": "mean"},
    {"fusion_teacher": 0.0, "ol_threshold": -1.0},
    {"temperature": 4.0, "sdd_temperature": 1.0},
    {"temperature": 1.0, "sdd_temperature": 2.0, "fusion": "mean"},
]


def _switch_id(switches):
    return ",".join(f"{k}={v}" for k, v in switches.items()) or "defaults"


@pytest.mark.parametrize("switches", SWITCH_CASES, ids=_switch_id)
def test_hcd_terms_match_naive_reference(switches):
    student, teacher, subs, target = hcd_case()
    _, _, _, got = run_hcd(student, teacher, subs, target, **switches)
    assert_terms(got, py_hcd(student, teacher, subs, target, **switches))


def test_hcd_switches_change_the_values():
    # guards against a switch being silently ignored (the naive reference could share the bug)
    student, teacher, subs, target = hcd_case()
    base = run_hcd(student, teacher, subs, target, ol_threshold=-1.0)[3]
    mean = run_hcd(student, teacher, subs, target, ol_threshold=-1.0, fusion="mean")[3]
    raw = run_hcd(student, teacher, subs, target, ol_threshold=-1.0, ol_input="raw")[3]
    unmasked = run_hcd(student, teacher, subs, target, ol_threshold=-1.0, mask_target=False)[3]
    smooth = run_hcd(student, teacher, subs, target, ol_threshold=-1.0, label_smoothing=0.2)[3]
    assert abs(base["sdd_ce"] - mean["sdd_ce"]) > 1e-3 and abs(base["sdd_kl"] - mean["sdd_kl"]) > 1e-3
    assert abs(base["ol"] - raw["ol"]) > 1e-3 and base["sdd_ce"] == raw["sdd_ce"]
    assert abs(base["ol"] - unmasked["ol"]) > 1e-3
    assert abs(base["ce"] - smooth["ce"]) > 1e-3 and base["kd"] == smooth["kd"]


# --------------------------------------------------------------------------- HCD: the ablation switches
def _one_row(raw, teacher, student=(0.0, 0.0, 0.0)):
    """B = 1, n = 1, one stage: the (student, teacher, [stage]) tensors."""
    return as_t([list(student)]), as_t([list(teacher)]), [as_t([[list(raw)]])]


def test_hcd_sdd_ce_input_raw_closed_form():
    # S = [0, ln2, ln3]: softmax [1, 2, 3] / 6, target 2 -> CE(S) = -ln(1/2) = ln 2, whatever z_t is.
    # Fused with z_t = [5, 0, 0]: Z = [5, ln2, ln3] -> CE(Z) = ln((e^5 + 2 + 3) / 3).
    s, t, subs = _one_row([0.0, LN2, LN3], [5.0, 0.0, 0.0])
    raw = hcd_loss_terms(s, t, subs, labels([2]), sdd_ce_input="raw")
    fused = hcd_loss_terms(s, t, subs, labels([2]), sdd_ce_input="fused")
    assert raw["sdd_ce"].item() == pytest.approx(LN2, **TOL)
    assert fused["sdd_ce"].item() == pytest.approx(math.log((math.exp(5.0) + 5.0) / 3.0), **TOL)
    # only sdd_ce reads the switch
    for key in ("ce", "kd", "sdd_kl", "ol"):
        assert raw[key].item() == fused[key].item(), key


def test_hcd_sdd_ce_input_raw_gives_sub_logits_the_whole_ce_gradient():
    # d CE(S) / d S = softmax(S) - onehot: here [1/6, 1/3, -1/2], independent of the teacher.
    s, t, subs = _one_row([0.0, LN2, LN3], [5.0, 0.0, 0.0])
    subs[0].requires_grad_(True)
    terms = hcd_loss_terms(s, t, subs, labels([2]), sdd_ce_input="raw")
    (grad,) = torch.autograd.grad(terms["sdd_ce"], subs)
    assert grad[0, 0].tolist() == pytest.approx([1 / 6, 1 / 3, -1 / 2], **TOL)


def test_hcd_fusion_weights_closed_form():
    # a = 2, b = 1/2: Z = 2 * [0, ln2/2, 0] + [0, 0, 2 ln3] / 2 = [0, ln2, ln3] -> CE at target 0 = ln 6.
    s, t, subs = _one_row([0.0, LN2 / 2, 0.0], [0.0, 0.0, 2 * LN3])
    summed = hcd_loss_terms(s, t, subs, labels([0]), fusion_student=2.0, fusion_teacher=0.5)
    assert summed["sdd_ce"].item() == pytest.approx(math.log(6.0), **TOL)
    # student uniform: sdd_kl = sum_i p_i ln(p_i / (1/3)) with p = [1, 2, 3] / 6
    assert summed["sdd_kl"].item() == pytest.approx(sum(i / 6 * math.log(i / 2) for i in (1, 2, 3)), **TOL)
    # "mean" halves after weighting: Z = [0, ln2 / 2, ln3 / 2] -> p ∝ [1, √2, √3]
    mean = hcd_loss_terms(s, t, subs, labels([0]), fusion="mean", fusion_student=2.0, fusion_teacher=0.5)
    assert mean["sdd_ce"].item() == pytest.approx(math.log(1 + math.sqrt(2) + math.sqrt(3)), **TOL)
    # the defaults are the spec's S + z_t: [0, ln2/2, 2 ln3] -> CE = ln(1 + √2 + 9)
    plain = hcd_loss_terms(s, t, subs, labels([0]))
    assert plain["sdd_ce"].item() == pytest.approx(math.log(10 + math.sqrt(2)), **TOL)


def test_hcd_fusion_without_the_teacher_is_the_raw_sub_logits():
    student, teacher, subs, target = hcd_case()
    no_teacher = run_hcd(student, teacher, subs, target, fusion_teacher=0.0, ol_threshold=-1.0)[3]
    raw_ce = run_hcd(student, teacher, subs, target, sdd_ce_input="raw", ol_input="raw", ol_threshold=-1.0)[3]
    assert no_teacher["sdd_ce"].item() == pytest.approx(raw_ce["sdd_ce"].item(), **TOL)
    assert no_teacher["ol"].item() == pytest.approx(raw_ce["ol"].item(), **TOL)
    # and sdd_kl then distils S alone into the student
    expected = sum(py_kl_t([row[i] for row in subs[k]], student, 1.0) for k in range(2) for i in range(2)) / 2
    assert no_teacher["sdd_kl"].item() == pytest.approx(expected, **TOL)


def test_hcd_sdd_temperature_closed_form():
    # z_t = 0 and S = [0, 4 ln2, 4 ln3]; student uniform, so kd = 0 at every temperature.
    s, t, subs = _one_row([0.0, 4 * LN2, 4 * LN3], [0.0, 0.0, 0.0])
    # At T' = 4: p = [1, 2, 3] / 6 -> sdd_kl = 16 * sum_i p_i ln(3 p_i)
    at4 = hcd_loss_terms(s, t, subs, labels([0]), temperature=4.0)
    assert at4["sdd_kl"].item() == pytest.approx(16 * sum(i / 6 * math.log(i / 2) for i in (1, 2, 3)), **TOL)
    # At T' = 1 (kd keeps T = 4): p = [1, 16, 81] / 98 -> sdd_kl = sum_i p_i ln(3 p_i), no T^2 factor
    at1 = hcd_loss_terms(s, t, subs, labels([0]), temperature=4.0, sdd_temperature=1.0)
    assert at1["sdd_kl"].item() == pytest.approx(sum(w / 98 * math.log(3 * w / 98) for w in (1, 16, 81)), **TOL)
    assert at1["kd"].item() == pytest.approx(0.0, abs=1e-12) and at4["kd"].item() == pytest.approx(0.0, abs=1e-12)


def test_hcd_sdd_temperature_leaves_kd_at_its_own_temperature():
    student, teacher, subs, target = hcd_case()
    split = run_hcd(student, teacher, subs, target, temperature=4.0, sdd_temperature=1.0)[3]
    assert split["kd"].item() == pytest.approx(py_kl_t(teacher, student, 4.0), **TOL)
    same = run_hcd(student, teacher, subs, target, temperature=1.0)[3]
    assert split["sdd_kl"].item() == pytest.approx(same["sdd_kl"].item(), **TOL)
    explicit = run_hcd(student, teacher, subs, target, temperature=4.0, sdd_temperature=4.0)[3]
    default = run_hcd(student, teacher, subs, target, temperature=4.0)[3]
    assert all(explicit[k].item() == default[k].item() for k in explicit)


def test_hcd_stage_sum_is_k_times_mean_for_identical_stages():
    student, teacher, subs, target = hcd_case(stages=1)
    stages = subs * 3
    summed = run_hcd(student, teacher, stages, target, stage_reduce="sum", ol_threshold=0.0)[3]
    mean = run_hcd(student, teacher, stages, target, stage_reduce="mean", ol_threshold=0.0)[3]
    single = run_hcd(student, teacher, subs, target, ol_threshold=0.0)[3]
    for key in ("sdd_ce", "sdd_kl", "ol"):
        assert summed[key].item() == pytest.approx(3 * mean[key].item(), **TOL)
        assert mean[key].item() == pytest.approx(single[key].item(), **TOL)
        assert single[key].item() > 0
    for key in ("ce", "kd"):  # not stage terms
        assert summed[key].item() == pytest.approx(mean[key].item(), **TOL)


def test_hcd_stages_may_have_different_sub_logit_counts():
    gen = torch.Generator().manual_seed(7)
    student, teacher = rand_rows(gen, 2, 3), rand_rows(gen, 2, 3)
    subs = [rand_rows(gen, 2, 1, 3), rand_rows(gen, 2, 3, 3)]
    got = run_hcd(student, teacher, subs, [1, 0], ol_threshold=0.0)[3]
    assert_terms(got, py_hcd(student, teacher, subs, [1, 0], ol_threshold=0.0))


def test_hcd_gradients_reach_student_and_sub_logits_never_teacher():
    student, teacher, subs, target = hcd_case()
    s, t, sub_t, terms = run_hcd(student, teacher, subs, target, requires_grad=True, ol_threshold=-1.0)
    sum(terms.values()).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0
    for z in sub_t:
        assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("detach_fused", [False, True])
def test_hcd_detach_fused_controls_sdd_kl_gradient_into_sub_logits(detach_fused):
    student, teacher, subs, target = hcd_case()
    s, t, sub_t, terms = run_hcd(student, teacher, subs, target, requires_grad=True, detach_fused=detach_fused)
    grads = torch.autograd.grad(terms["sdd_kl"], [s, t, *sub_t], allow_unused=True)
    grad_s, grad_t, grad_subs = grads[0], grads[1], grads[2:]
    assert grad_t is None
    assert grad_s is not None and grad_s.abs().sum() > 0  # the student side always learns
    for g in grad_subs:
        if detach_fused:
            assert g is None
        else:
            assert g is not None and g.abs().sum() > 0
    # detaching changes gradients only, never the value; the other terms still reach sub-logits
    plain = run_hcd(student, teacher, subs, target, detach_fused=False)[3]
    assert terms["sdd_kl"].item() == pytest.approx(plain["sdd_kl"].item(), **TOL)
    sdd_ce_grads = torch.autograd.grad(terms["sdd_ce"], sub_t)
    assert all(g.abs().sum() > 0 for g in sdd_ce_grads)


# --------------------------------------------------------------------------- bad input
def _hcd_inputs():
    return torch.zeros(2, 3), torch.zeros(2, 3), [torch.zeros(2, 4, 3)], labels([0, 1])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"fusion": "product"}, "fusion"),
        ({"ol_input": "teacher"}, "ol_input"),
        ({"stage_reduce": "max"}, "stage_reduce"),
        ({"temperature": 0.0}, "temperature"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"sdd_ce_input": "teacher"}, "sdd_ce_input"),
        ({"sdd_temperature": 0.0}, "temperature"),
        ({"fusion_teacher": float("nan")}, "fusion_teacher"),
    ],
)
def test_hcd_rejects_bad_switches(override, message):
    with pytest.raises(ValueError, match=message):
        hcd_loss_terms(*_hcd_inputs(), **override)


@pytest.mark.parametrize(
    ("position", "value", "message"),
    [
        (0, torch.zeros(2, 4), "differ in shape"),
        (1, torch.zeros(3, 3), "differ in shape"),
        (0, torch.zeros(2, 3, 1), r"\(B, C\)"),
        (2, [torch.zeros(2, 4, 5)], r"sub_logits\[0\]"),
        (2, [torch.zeros(3, 4, 3)], r"sub_logits\[0\]"),
        (2, [torch.zeros(2, 3)], r"sub_logits\[0\]"),
        (2, [], "non-empty list"),
        (2, torch.zeros(2, 4, 3), "non-empty list"),
        (3, labels([0, 1, 2]), "target"),
        (3, labels([0, 3]), "target values"),
        (3, torch.tensor([0.0, 1.0]), "integer"),
    ],
)
def test_hcd_rejects_bad_shapes(position, value, message):
    args = list(_hcd_inputs())
    args[position] = value
    with pytest.raises(ValueError, match=message):
        hcd_loss_terms(*args)


def test_baselines_reject_bad_input():
    z, y = torch.zeros(2, 3), labels([0, 1])
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(z, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(z, z, temperature=-1.0)
    with pytest.raises(ValueError, match="target"):
        dkd_loss(z, z, labels([0]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        dkd_terms(torch.zeros(2, 1), torch.zeros(2, 1), labels([0, 0]))
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        dist_loss(torch.zeros(6), torch.zeros(6))
    with pytest.raises(ValueError, match="eps"):
        ofa_loss(z, z, y, eps=0.0)
    with pytest.raises(ValueError, match=r"\(B, n, C\)"):
        orthogonality_loss(z, y)
    with pytest.raises(ValueError, match="target"):
        orthogonality_loss(torch.zeros(2, 2, 3), labels([0, 1, 1]))
    with pytest.raises(ValueError, match="target_logits"):
        kl_div_t(z, torch.zeros(3, 3), 1.0)
