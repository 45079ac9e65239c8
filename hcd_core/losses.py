"""Distillation losses as pure functions of logits (method spec, sections 2-4).

Conventions shared by every function:

* ``KL_T(a -> b) = T^2 * mean_batch sum_c p_c (log p_c - log q_c)`` with ``p = softmax(a/T)`` the
  target distribution and ``q = softmax(b/T)``; computed from ``log_softmax`` for stability.
* CE is ``F.cross_entropy`` with the job's label smoothing.
* Teacher logits are a fixed target: every function that takes ``teacher_logits`` detaches them.
* Half-precision inputs (AMP) are promoted to float32 so softmax/log run at full precision.

No modules and no state: the methods in ``hcd_core/methods/`` hold the trainable parts and call these.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "kl_div_t",
    "kd_loss",
    "dkd_terms",
    "dkd_loss",
    "dist_terms",
    "dist_loss",
    "ofa_loss",
    "orthogonality_loss",
    "hcd_loss_terms",
    "hcd_loss_terms_stacked",
]

FUSIONS = ("sum", "mean")
OL_INPUTS = ("fused", "raw")
SDD_CE_INPUTS = ("fused", "raw")
STAGE_REDUCTIONS = ("sum", "mean")

_PEARSON_EPS = 1e-8  # added to DIST's Pearson denominator (spec, section 3)
_NORM_EPS = 1e-12  # clamp for the sub-logit L2 norm in OL (spec, section 2)


# --------------------------------------------------------------------------- validation helpers
def _full_precision(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_logits(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (B, C), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must be non-empty, got {tuple(x.shape)}")
    return _full_precision(x)


def _check_pair(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    s = _check_logits("student_logits", student_logits)
    t = _check_logits("teacher_logits", teacher_logits)
    if s.shape != t.shape:
        raise ValueError(
            f"student_logits {tuple(s.shape)} and teacher_logits {tuple(t.shape)} differ in shape"
        )
    return s, t


def _check_target(target: Tensor, batch: int, num_classes: int) -> Tensor:
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.dim() != 1 or target.shape[0] != batch:
        raise ValueError(f"target must have shape ({batch},), got {tuple(target.shape)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices, got {target.dtype}")
    # Range check only where it is free: on CUDA it would force a host sync every step, and inside
    # a compiled step it would break the graph (labels are checked when the dataset is built).
    if target.device.type == "cpu" and batch > 0 and not torch.compiler.is_compiling():
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"target values must lie in [0, {num_classes - 1}], got [{lo}, {hi}]")
    return target.long()


def _onehot_mask(y: Tensor, classes: int) -> Tensor:
    """(B, C) boolean mask of the target class (a comparison: no host sync on CUDA)."""
    return y.unsqueeze(1) == torch.arange(classes, device=y.device)


def _check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return float(temperature)


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


# --------------------------------------------------------------------------- KL / KD
def _kl_rows(target_logits: Tensor, input_logits: Tensor, temperature: float) -> Tensor:
    """Per-row sum_c p_c (log p_c - log q_c) over the last dim (broadcasts; no T^2, no mean)."""
    log_p = F.log_softmax(target_logits / temperature, dim=-1)
    log_q = F.log_softmax(input_logits / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def kl_div_t(target_logits: Tensor, input_logits: Tensor, temperature: float) -> Tensor:
    """KL_T(a -> b) = T^2 * mean_b sum_c p_c (log p_c - log q_c); p = softmax(a/T) is the target.

    Gradients flow into both arguments (detach the target yourself where it is fixed).
    """
    a = _check_logits("target_logits", target_logits)
    b = _check_logits("input_logits", input_logits)
    if a.shape != b.shape:
        raise ValueError(f"target_logits {tuple(a.shape)} and input_logits {tuple(b.shape)} differ")
    t = _check_temperature(temperature)
    return t * t * _kl_rows(a, b, t).mean()


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD: KL_T(z_t -> z_s), teacher detached."""
    s, t = _check_pair(student_logits, teacher_logits)
    return kl_div_t(t.detach(), s, temperature)


# --------------------------------------------------------------------------- DKD
def _non_target_index(y: Tensor, classes: int) -> Tensor:
    """(B, C-1) column indices of every class but the target, in order (gather: no host sync)."""
    cols = torch.arange(classes - 1, device=y.device).unsqueeze(0)
    return cols + (cols >= y.unsqueeze(1)).long()


def _binary_and_non_target_log_probs(
    logits: Tensor, y: Tensor, non_target_index: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """log [p_target, 1 - p_target] (B, 2) and log softmax over the C-1 non-target logits (B, C-1)."""
    x = logits / temperature
    non_target = x.gather(1, non_target_index)
    target = x.gather(1, y.unsqueeze(1)).squeeze(1)
    lse_all = torch.logsumexp(x, dim=1)
    lse_non = torch.logsumexp(non_target, dim=1)
    # log(1 - p_target) = logsumexp(non-target) - logsumexp(all): exact even when p_target -> 1.
    log_binary = torch.stack([target - lse_all, lse_non - lse_all], dim=1)
    return log_binary, F.log_softmax(non_target, dim=1)


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float = 4.0
) -> dict[str, Tensor]:
    """Decoupled KD terms, unweighted and T^2-scaled, teacher detached.

    tckd = T^2 * mean_b KL([pt_t, 1-pt_t] || [pt_s, 1-pt_s]);
    nckd = T^2 * mean_b KL(softmax_nt(z_t/T) || softmax_nt(z_s/T)) over the C-1 non-target classes.
    """
    s, t = _check_pair(student_logits, teacher_logits)
    batch, classes = s.shape
    if classes < 2:
        raise ValueError(f"DKD needs at least 2 classes, got {classes}")
    y = _check_target(target, batch, classes)
    temp = _check_temperature(temperature)
    index = _non_target_index(y, classes)
    bin_s, nt_s = _binary_and_non_target_log_probs(s, y, index, temp)
    bin_t, nt_t = _binary_and_non_target_log_probs(t.detach(), y, index, temp)
    scale = temp * temp
    tckd = (bin_t.exp() * (bin_t - bin_s)).sum(dim=1).mean() * scale
    nckd = (nt_t.exp() * (nt_t - nt_s)).sum(dim=1).mean() * scale
    return {"tckd": tckd, "nckd": nckd}


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """alpha * tckd + beta * nckd (no warm-up here: the trainer scales it)."""
    terms = dkd_terms(student_logits, teacher_logits, target, temperature)
    return alpha * terms["tckd"] + beta * terms["nckd"]


# --------------------------------------------------------------------------- DIST
def _pearson(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """Cosine of mean-centred vectors along `dim`, 1e-8 added to the denominator."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    norms: Tensor = a.norm(dim=dim) * b.norm(dim=dim)
    return (a * b).sum(dim=dim) / (norms + _PEARSON_EPS)


def dist_terms(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0
) -> dict[str, Tensor]:
    """DIST terms (unscaled), p = softmax(logits/T), teacher detached.

    inter = 1 - mean_b Pearson(p_s[b, :], p_t[b, :]); intra = 1 - mean_c Pearson(p_s[:, c], p_t[:, c]).
    """
    s, t = _check_pair(student_logits, teacher_logits)
    temp = _check_temperature(temperature)
    p_s = F.softmax(s / temp, dim=1)
    p_t = F.softmax(t.detach() / temp, dim=1)
    inter = 1.0 - _pearson(p_s, p_t, dim=1).mean()
    intra = 1.0 - _pearson(p_s, p_t, dim=0).mean()
    return {"inter": inter, "intra": intra}


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    """T^2 * (beta * inter + gamma * intra)."""
    terms = dist_terms(student_logits, teacher_logits, temperature)
    return temperature * temperature * (beta * terms["inter"] + gamma * terms["intra"])


# --------------------------------------------------------------------------- OFA
def ofa_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    eps: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    """Target-enhanced OFA loss: mean_b sum_c -w_c log softmax(s/T)_c,
    w = (softmax(t/T) + onehot(y))^eps - onehot(y), teacher detached (a fixed target)."""
    s, t = _check_pair(student_logits, teacher_logits)
    batch, classes = s.shape
    y = _check_target(target, batch, classes)
    temp = _check_temperature(temperature)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    onehot = _onehot_mask(y, classes).to(s.dtype)
    p_t = F.softmax(t.detach() / temp, dim=1)
    weights = (p_t + onehot).pow(eps) - onehot
    return -(weights * F.log_softmax(s / temp, dim=1)).sum(dim=1).mean()


# --------------------------------------------------------------------------- HCD
# On the GPU an HCD step is host-bound (kernel launches, not FLOPs, set its time), so these functions
# are written for few ops: every stage at once on one (K, B, n, C) tensor, the student's log-softmax
# shared by the two KL terms, sums over all rows scaled once instead of per-stage means, target
# entries set by scatter instead of one-hot masks, and no boolean indexing (it syncs the host on CUDA).


def _check_sub_logits(name: str, z: Tensor, batch: int, classes: int) -> Tensor:
    if not isinstance(z, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 3 or z.shape[0] != batch or z.shape[2] != classes or z.shape[1] < 1:
        raise ValueError(f"{name} must have shape ({batch}, n, {classes}), got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {z.dtype}")
    return z


def _fp32_matmuls(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Keep autocast from running the Gram matmul in half precision (and casting for it)."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _zero_target(z: Tensor, y: Tensor) -> Tensor:
    """z (..., B, n, C) with entry y[b] of every sub-logit of sample b set to 0 (one scatter)."""
    lead = z.dim() - 3
    index = y.view((1,) * lead + (-1, 1, 1)).expand(*z.shape[:-1], 1)
    return z.scatter(-1, index, 0.0)


def _ol_sum(z: Tensor, y: Tensor | None, threshold: float) -> Tensor:
    """Sum over every leading index and every off-diagonal (i, j) of relu(G_ij - threshold)^2,
    G = cosine similarities of the sub-logits z[..., i, :] of z (..., B, n, C), after zeroing the
    target entries when the targets `y` are given."""
    n, classes = z.shape[-2], z.shape[-1]
    if y is not None:
        z = _zero_target(z, y)
    z = F.normalize(z, p=2.0, dim=-1, eps=_NORM_EPS).reshape(-1, n, classes)
    with _fp32_matmuls(z.device):
        gram = torch.bmm(z, z.transpose(1, 2))
    # The diagonal gets a threshold above 1, which no cosine similarity exceeds: relu then zeroes it
    # (value and gradient) with no mask or index.
    thresholds = torch.full((n, n), threshold, dtype=gram.dtype, device=gram.device)
    thresholds.fill_diagonal_(max(threshold, 1.0) + 1.0)
    return F.relu(gram - thresholds).pow(2).sum()


def orthogonality_loss(
    sub_logits: Tensor, target: Tensor, threshold: float = 0.5, mask_target: bool = True
) -> Tensor:
    """OL(Z), Z (B, n, C): optionally zero the target entry, L2-normalise each sub-logit over classes
    (norm clamped at 1e-12), G = Z Z^T per sample; mean over batch and the n(n-1) off-diagonal
    entries of relu(G_ij - threshold)^2. Zero when n == 1."""
    if not isinstance(sub_logits, Tensor) or sub_logits.dim() != 3:
        shape = tuple(sub_logits.shape) if isinstance(sub_logits, Tensor) else type(sub_logits)
        raise ValueError(f"sub_logits must have shape (B, n, C), got {shape}")
    batch, n, classes = sub_logits.shape
    z = _full_precision(_check_sub_logits("sub_logits", sub_logits, batch, classes))
    y = _check_target(target, batch, classes)
    if n == 1:
        return z.new_zeros(())
    return _ol_sum(z, y if mask_target else None, threshold) / (batch * n * (n - 1))


def _smoothed_ce_weights(y: Tensor, logits: Tensor, label_smoothing: float, scale: float) -> Tensor:
    """(B, C) w with CE(row) = -sum_c w_c log_softmax(row)_c: (1 - ls) on the target plus ls/C
    everywhere, times `scale` (two kernels: a fill and a scatter); shaped and typed like `logits`."""
    off = label_smoothing / logits.shape[1]
    w = torch.full(logits.shape, scale * off, dtype=logits.dtype, device=logits.device)
    return w.scatter_(1, y.unsqueeze(1), scale * (1.0 - label_smoothing + off))


def _fuse(raw: Tensor, teacher: Tensor, student_weight: float, teacher_weight: float) -> Tensor:
    """student_weight * raw + teacher_weight * teacher in one kernel where the weights allow it.

    A mixed-dtype add: a half-precision raw is promoted to float32 inside the kernel."""
    if teacher_weight == 1.0 and student_weight == 1.0:
        return raw + teacher
    scaled_teacher = teacher if teacher_weight == 1.0 else teacher * teacher_weight
    return torch.add(scaled_teacher, raw, alpha=student_weight)


def _stage_terms(
    raw: Tensor,
    z_t: Tensor,
    student_log_q: Tensor,
    y: Tensor,
    ce_weights: Tensor,
    *,
    temperature: float,
    fusion_weights: tuple[float, float],
    sdd_ce_input: str,
    ol_threshold: float,
    ol_input: str,
    mask_target: bool,
    detach_fused: bool,
    stage_weight: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """sdd_ce, sdd_kl, ol for raw sub-logits (K, B, n, C) of K stages that share n: each is
    `stage_weight` * sum over the stages of that stage's mean (equal row counts, so the sum of the
    stage means is the sum over all rows divided by one stage's row count).

    z_t: teacher logits (B, C) in float32, detached; student_log_q: log_softmax(z_s / T) (B, C) at
    sdd_kl's temperature `temperature`; fusion_weights: (a, b) with Z = a * S + b * z_t;
    ce_weights: `_smoothed_ce_weights(y, z_s, label_smoothing, -1 / B)`.
    """
    _, batch, n, _ = raw.shape
    rows = batch * n  # rows (sample, sub-logit) of one stage
    teacher = z_t.unsqueeze(1)  # (B, 1, C): broadcasts over stages and sub-logits
    fused = _fuse(raw, teacher, *fusion_weights)

    # The student CE's weights (scaled -1/B) rescaled to -stage_weight / rows by one scalar multiply.
    ce_input = fused if sdd_ce_input == "fused" else _full_precision(raw)
    sdd_ce = (F.log_softmax(ce_input, dim=-1) * ce_weights.unsqueeze(1)).sum() * (stage_weight * batch / rows)

    # Its own log-softmax even at T = 1: sdd_ce and sdd_kl then share no saved tensors, so either
    # can be differentiated after the other.
    kl_target = fused.detach() if detach_fused else fused
    log_p_t = F.log_softmax(kl_target if temperature == 1.0 else kl_target / temperature, dim=-1)
    kl = log_p_t.exp() * (log_p_t - student_log_q.unsqueeze(1))
    sdd_kl = kl.sum() * (stage_weight * temperature * temperature / rows)

    if n == 1:
        ol = fused.new_zeros(())
    else:
        z = fused if ol_input == "fused" else _full_precision(raw)
        ol = _ol_sum(z, y if mask_target else None, ol_threshold) * (stage_weight / (rows * (n - 1)))
    return sdd_ce, sdd_kl, ol


def _check_switches(temperature: float, fusion: str, ol_input: str, stage_reduce: str, label_smoothing: float,
                    sdd_ce_input: str, sdd_temperature: float | None, fusion_student: float,
                    fusion_teacher: float) -> tuple[float, float]:
    """The checked (temperature, sdd_kl's temperature)."""
    temp = _check_temperature(temperature)
    sdd_temp = temp if sdd_temperature is None else _check_temperature(sdd_temperature)
    _check_choice("fusion", fusion, FUSIONS)
    _check_choice("ol_input", ol_input, OL_INPUTS)
    _check_choice("sdd_ce_input", sdd_ce_input, SDD_CE_INPUTS)
    _check_choice("stage_reduce", stage_reduce, STAGE_REDUCTIONS)
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
    for name, weight in (("fusion_student", fusion_student), ("fusion_teacher", fusion_teacher)):
        if not math.isfinite(weight):
            raise ValueError(f"{name} must be finite, got {weight}")
    return temp, sdd_temp


def _hcd_terms(
    s: Tensor,
    t: Tensor,
    stages: Tensor | list[Tensor],
    y: Tensor,
    *,
    temperature: float,
    sdd_temperature: float,
    fusion: str,
    fusion_student: float,
    fusion_teacher: float,
    sdd_ce_input: str,
    ol_threshold: float,
    ol_input: str,
    mask_target: bool,
    detach_fused: bool,
    stage_reduce: str,
    label_smoothing: float,
) -> dict[str, Tensor]:
    """The five terms from checked inputs; `stages` is one (K, B, n, C) tensor or a list of (B, n, C)
    tensors of different n (each then handled on its own)."""
    batch = s.shape[0]
    temp = temperature
    z_t = t.detach()
    ce_weights = _smoothed_ce_weights(y, s, label_smoothing, -1.0 / batch)
    ce = (F.log_softmax(s, dim=-1) * ce_weights).sum()
    # The student's log-softmax at T serves both KL terms (kd and sdd_kl) when they share T; the CE
    # terms have their own.
    log_q_t = F.log_softmax(s if temp == 1.0 else s / temp, dim=-1)
    log_p_t = F.log_softmax(z_t if temp == 1.0 else z_t / temp, dim=-1)
    kd = (log_p_t.exp() * (log_p_t - log_q_t)).sum() * (temp * temp / batch)
    if sdd_temperature == temp:
        log_q_sdd = log_q_t
    else:
        log_q_sdd = F.log_softmax(s if sdd_temperature == 1.0 else s / sdd_temperature, dim=-1)

    num_stages = stages.shape[0] if isinstance(stages, Tensor) else len(stages)
    stage_weight = 1.0 if stage_reduce == "sum" else 1.0 / num_stages
    halve = 0.5 if fusion == "mean" else 1.0
    fusion_weights = (halve * fusion_student, halve * fusion_teacher)

    def terms_of(raw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _stage_terms(raw, z_t, log_q_sdd, y, ce_weights, temperature=sdd_temperature,
                            fusion_weights=fusion_weights, sdd_ce_input=sdd_ce_input,
                            ol_threshold=ol_threshold, ol_input=ol_input, mask_target=mask_target,
                            detach_fused=detach_fused, stage_weight=stage_weight)

    if isinstance(stages, Tensor):
        sdd_ce, sdd_kl, ol = terms_of(stages)
    else:
        per_stage = [terms_of(z.unsqueeze(0)) for z in stages]
        sdd_ce, sdd_kl, ol = (torch.stack(values).sum() for values in zip(*per_stage, strict=True))
    return {"ce": ce, "kd": kd, "sdd_ce": sdd_ce, "sdd_kl": sdd_kl, "ol": ol}


def hcd_loss_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    sub_logits: list[Tensor],
    target: Tensor,
    *,
    temperature: float = 1.0,
    fusion: str = "sum",
    ol_threshold: float = 0.5,
    ol_input: str = "fused",
    mask_target: bool = True,
    detach_fused: bool = False,
    stage_reduce: str = "sum",
    label_smoothing: float = 0.0,
    sdd_ce_input: str = "fused",
    fusion_student: float = 1.0,
    fusion_teacher: float = 1.0,
    sdd_temperature: float | None = None,
) -> dict[str, Tensor]:
    """HCD's unweighted terms (spec, section 2); teacher logits never receive gradient.

    Z_k = a * S_k + b * z_t ("sum") or (a * S_k + b * z_t) / 2 ("mean"), z_t broadcast over the n
    sub-logits, a = fusion_student, b = fusion_teacher (both 1 by default: the spec's S_k + z_t);
    ce = CE(z_s, y); kd = KL_T(z_t -> z_s) at T = temperature;
    sdd_ce = reduce_k mean_i CE(X_k[:, i], y), X_k = Z_k or S_k per sdd_ce_input;
    sdd_kl = reduce_k mean_i KL_T'(Z_k[:, i] -> z_s) at T' = sdd_temperature (None: temperature),
    Z_k detached there only if detach_fused; ol = reduce_k OL(Z_k or S_k per ol_input);
    reduce = sum or mean over stages (stage_reduce).

    Stages with the same n are computed together (see `hcd_loss_terms_stacked`).
    """
    s, t = _check_pair(student_logits, teacher_logits)
    batch, classes = s.shape
    y = _check_target(target, batch, classes)
    temp, sdd_temp = _check_switches(temperature, fusion, ol_input, stage_reduce, label_smoothing,
                                     sdd_ce_input, sdd_temperature, fusion_student, fusion_teacher)
    if isinstance(sub_logits, Tensor) or not isinstance(sub_logits, (list, tuple)) or not sub_logits:
        raise ValueError("sub_logits must be a non-empty list of (B, n, C) tensors, one per stage")
    stages = [_check_sub_logits(f"sub_logits[{k}]", z, batch, classes) for k, z in enumerate(sub_logits)]
    same_n = len({z.shape[1] for z in stages}) == 1 and len({z.dtype for z in stages}) == 1
    return _hcd_terms(
        s, t, torch.stack(stages) if same_n else stages, y,
        temperature=temp, sdd_temperature=sdd_temp, fusion=fusion, fusion_student=fusion_student,
        fusion_teacher=fusion_teacher, sdd_ce_input=sdd_ce_input, ol_threshold=ol_threshold,
        ol_input=ol_input, mask_target=mask_target, detach_fused=detach_fused, stage_reduce=stage_reduce,
        label_smoothing=label_smoothing,
    )


def hcd_loss_terms_stacked(
    student_logits: Tensor,
    teacher_logits: Tensor,
    sub_logits: Tensor,
    target: Tensor,
    *,
    temperature: float = 1.0,
    fusion: str = "sum",
    ol_threshold: float = 0.5,
    ol_input: str = "fused",
    mask_target: bool = True,
    detach_fused: bool = False,
    stage_reduce: str = "sum",
    label_smoothing: float = 0.0,
    sdd_ce_input: str = "fused",
    fusion_student: float = 1.0,
    fusion_teacher: float = 1.0,
    sdd_temperature: float | None = None,
) -> dict[str, Tensor]:
    """`hcd_loss_terms` for K stages that share n, given as one (K, B, n, C) tensor (stage k is
    sub_logits[k]): what a batched CFM produces, with no per-stage split or re-stack."""
    s, t = _check_pair(student_logits, teacher_logits)
    batch, classes = s.shape
    y = _check_target(target, batch, classes)
    temp, sdd_temp = _check_switches(temperature, fusion, ol_input, stage_reduce, label_smoothing,
                                     sdd_ce_input, sdd_temperature, fusion_student, fusion_teacher)
    if not isinstance(sub_logits, Tensor) or sub_logits.dim() != 4:
        shape = tuple(sub_logits.shape) if isinstance(sub_logits, Tensor) else type(sub_logits).__name__
        raise ValueError(f"sub_logits must have shape (K, B, n, C), got {shape}")
    if sub_logits.shape[0] < 1:
        raise ValueError("sub_logits must hold at least one stage")
    _check_sub_logits("sub_logits[0]", sub_logits[0], batch, classes)
    return _hcd_terms(
        s, t, sub_logits, y,
        temperature=temp, sdd_temperature=sdd_temp, fusion=fusion, fusion_student=fusion_student,
        fusion_teacher=fusion_teacher, sdd_ce_input=sdd_ce_input, ol_threshold=ol_threshold,
        ol_input=ol_input, mask_target=mask_target, detach_fused=detach_fused, stage_reduce=stage_reduce,
        label_smoothing=label_smoothing,
    )
