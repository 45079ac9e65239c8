"""Distillation methods: small modules that hold ONLY the trainable extras (projectors, CFMs, OFA
branches) and turn student/teacher outputs into a dict of loss terms.

The student and the teacher are never submodules of a method, so `method.parameters()` and
`method.state_dict()` are the extras alone (what the checkpoint saves next to the student and what
is dropped at export). The loss math lives in `hcd_core.losses`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from hcd_core import losses
from hcd_core.features import StudentNet, StudentOutput, TeacherOutput
from hcd_core.projector import build_projectors
from hcd_core.teacher import FrozenTeacher


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class StackedLinear(nn.Module):
    """`num` independent Linear layers applied in one batched matmul: (num, B, in) -> (num, B, out).

    Used for the per-stage CFM/branch heads so K stages cost one kernel instead of K. Initialised
    like nn.Linear.
    """

    def __init__(self, num: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num, out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1).to(x.dtype), x, self.weight.to(x.dtype))


def weighted_sum(pairs: list[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """sum_i w_i * x_i over scalar terms in few ops: the unit-weight terms summed by one stack + sum
    (one op each instead of one add per term), a multiply only where w_i != 1."""
    unit = [x for w, x in pairs if w == 1.0]
    scaled = [w * x for w, x in pairs if w != 1.0]
    parts = ([torch.stack(unit).sum()] if len(unit) > 1 else unit) + scaled
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


class Method(nn.Module):
    name: str = ""
    needs_teacher: bool = True
    needs_features: bool = False

    def forward(
        self,
        student_out: StudentOutput,
        teacher_out: TeacherOutput | None,
        target: torch.Tensor,
        *,
        epoch: float = 0.0,
        label_smoothing: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def _ce(student_out: StudentOutput, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return F.cross_entropy(student_out.logits, target, label_smoothing=label_smoothing)


def _require_teacher(name: str, teacher_out: TeacherOutput | None) -> TeacherOutput:
    if teacher_out is None:
        raise ValueError(f"method {name!r} needs the teacher's output")
    return teacher_out


def _tapped_features(name: str, student_out: StudentOutput, count: int) -> list[torch.Tensor]:
    if student_out.features is None:
        raise ValueError(f"method {name!r} needs student features: call the student with with_features=True")
    if len(student_out.features) < count:
        raise ValueError(f"method {name!r} uses {count} stages, the student returned {len(student_out.features)}")
    return student_out.features[-count:]


class CeMethod(Method):
    name, needs_teacher = "ce", False

    def __init__(self, spec):
        super().__init__()

    def forward(self, student_out, teacher_out, target, *, epoch=0.0, label_smoothing=0.0):
        ce = _ce(student_out, target, label_smoothing)
        return {"loss": ce, "ce": ce}


class KdMethod(Method):
    name = "kd"

    def __init__(self, spec):
        super().__init__()
        self.temperature, self.w_ce, self.w_kd = spec.temperature, spec.w_ce, spec.w_kd

    def forward(self, student_out, teacher_out, target, *, epoch=0.0, label_smoothing=0.0):
        teacher_out = _require_teacher(self.name, teacher_out)
        ce = _ce(student_out, target, label_smoothing)
        kd = losses.kd_loss(student_out.logits, teacher_out.logits, self.temperature)
        return {"loss": self.w_ce * ce + self.w_kd * kd, "ce": ce, "kd": kd}


class DkdMethod(Method):
    name = "dkd"

    def __init__(self, spec):
        super().__init__()
        self.alpha, self.beta, self.temperature = spec.alpha, spec.beta, spec.temperature
        self.w_ce, self.warmup_epochs = spec.w_ce, spec.warmup_epochs

    def warmup_factor(self, epoch: float) -> float:
        """Linear warm-up of the KD part over the first `warmup_epochs` epochs."""
        if self.warmup_epochs == 0:
            return 1.0
        return min(max(float(epoch), 0.0) / self.warmup_epochs, 1.0)

    def forward(self, student_out, teacher_out, target, *, epoch=0.0, label_smoothing=0.0):
        teacher_out = _require_teacher(self.name, teacher_out)
        ce = _ce(student_out, target, label_smoothing)
        terms = losses.dkd_terms(student_out.logits, teacher_out.logits, target, self.temperature)
        kd_part = self.alpha * terms["tckd"] + self.beta * terms["nckd"]
        loss = self.w_ce * ce + self.warmup_factor(epoch) * kd_part
        return {"loss": loss, "ce": ce, "tckd": terms["tckd"], "nckd": terms["nckd"]}


class DistMethod(Method):
    name = "dist"

    def __init__(self, spec):
        super().__init__()
        self.beta, self.gamma, self.temperature, self.w_ce = spec.beta, spec.gamma, spec.temperature, spec.w_ce

    def forward(self, student_out, teacher_out, target, *, epoch=0.0, label_smoothing=0.0):
        teacher_out = _require_teacher(self.name, teacher_out)
        ce = _ce(student_out, target, label_smoothing)
        terms = losses.dist_terms(student_out.logits, teacher_out.logits, self.temperature)
        t2 = self.temperature**2
        loss = self.w_ce * ce + t2 * (self.beta * terms["inter"] + self.gamma * terms["intra"])
        return {"loss": loss, "ce": ce, "inter": terms["inter"], "intra": terms["intra"]}


def _projection_dim(spec, student: StudentNet, teacher: FrozenTeacher) -> int:
    # Default D = max(d_s, d_t) (method spec 1.3).
    return spec.proj_dim or max(student.shapes.pre_logit_dim, teacher.pre_logit_dim)


def _stage_count(spec, student: StudentNet) -> int:
    return min(spec.num_stages, len(student.shapes.indices))


class OfaMethod(Method):
    """One-for-All: per-stage branch = projector + Linear(D, C), all trained with the OFA loss."""

    name, needs_features = "ofa", True

    def __init__(self, spec, student: StudentNet, teacher: FrozenTeacher, num_classes: int):
        super().__init__()
        self.eps, self.temperature = spec.eps, spec.temperature
        self.w_ce, self.w_kd, self.w_ofa = spec.w_ce, spec.w_kd, spec.w_ofa
        self.num_stages = _stage_count(spec, student)
        dim = _projection_dim(spec, student, teacher)
        shapes = student.shapes
        self.projectors = build_projectors(
            shapes.channels[-self.num_stages:], shapes.sizes[-self.num_stages:], dim
        )
        self.heads = StackedLinear(self.num_stages, dim, num_classes)

    def forward(self, student_out, teacher_out, target, *, epoch=0.0, label_smoothing=0.0):
        teacher_out = _require_teacher(self.name, teacher_out)
        feats = _tapped_features(self.name, student_out, self.num_stages)
        h = torch.stack([proj(f) for proj, f in zip(self.projectors, feats)])  # (K, B, D)
        branch_logits = self.heads(h)  # (K, B, C)
        z_t = teacher_out.logits
        ce = _ce(student_out, target, label_smoothing)
        ofa_logits = losses.ofa_loss(student_out.logits, z_t, target, self.eps, self.temperature)
        # sum_k mean_b OFA == K * mean over all K*B rows: one call instead of K.
        k, batch = branch_logits.shape[0], branch_logits.shape[1]
        ofa_stages = k * losses.ofa_loss(
            branch_logits.reshape(k * batch, -1), z_t.repeat(k, 1), target.repeat(k), self.eps, self.temperature
        )
        loss = self.w_ce * ce + self.w_kd * ofa_logits + self.w_ofa * ofa_stages
        return {"loss": loss, "ce": ce, "ofa_logits": ofa_logits, "ofa_stages": ofa_stages}


class HcdMethod(Method):
    """HCD: projector P_k -> h_k; CFM_k(concat(h_k, f_t)) -> n*C raw sub-logits S_k; SDD + OL losses."""

    name, needs_features = "hcd", True

    def __init__(self, spec, student: StudentNet, teacher: FrozenTeacher, num_classes: int):
        super().__init__()
        self.spec = spec
        self.num_classes, self.num_sub_logits = num_classes, spec.num_sub_logits
        self.num_stages = _stage_count(spec, student)
        dim = _projection_dim(spec, student, teacher)
        d_t = teacher.pre_logit_dim
        shapes = student.shapes
        self.projectors = build_projectors(
            shapes.channels[-self.num_stages:], shapes.sizes[-self.num_stages:], dim
        )
        out = spec.num_sub_logits * num_classes
        # All K CFMs run as one batched matmul (StackedLinear); cfm "mlp" adds a hidden layer of width d_t.
        if spec.cfm == "linear":
            self.cfm = nn.Sequential(StackedLinear(self.num_stages, dim + d_t, out))
        else:
            self.cfm = nn.Sequential(
                StackedLinear(self.num_stages, dim + d_t, d_t), nn.ReLU(inplace=True),
                StackedLinear(self.num_stages, d_t, out),
            )

    def forward(self, student_out, teacher_out, target, *, epoch=0.0, label_smoothing=0.0):
        teacher_out = _require_teacher(self.name, teacher_out)
        feats = _tapped_features(self.name, student_out, self.num_stages)
        h = torch.stack([proj(f) for proj, f in zip(self.projectors, feats)])  # (K, B, D)
        k, batch = h.shape[0], h.shape[1]
        f_t = teacher_out.pre_logits.to(h.dtype).unsqueeze(0).expand(k, -1, -1)  # (K, B, d_t)
        shared = self.cfm(torch.cat([h, f_t], dim=2))  # (K, B, n*C)
        sub_logits = shared.view(k, batch, self.num_sub_logits, self.num_classes)  # stage k: [k]
        s = self.spec
        terms = losses.hcd_loss_terms_stacked(
            student_out.logits, teacher_out.logits, sub_logits, target,
            temperature=s.temperature, fusion=s.fusion, ol_threshold=s.ol_threshold, ol_input=s.ol_input,
            mask_target=s.mask_target, detach_fused=s.detach_fused, stage_reduce=s.stage_reduce,
            label_smoothing=label_smoothing,
        )
        loss = weighted_sum([(s.w_ce, terms["ce"]), (s.w_kd, terms["kd"]), (s.w_sdd_ce, terms["sdd_ce"]),
                             (s.w_sdd_kl, terms["sdd_kl"]), (s.w_ol, terms["ol"])])
        return {"loss": loss, **terms}


def build_method(method_spec, student: StudentNet, teacher: FrozenTeacher | None, num_classes: int) -> Method:
    """The Method for a validated method spec (hcd_core.spec.*Method).

    Stage methods (ofa, hcd) use the last `min(num_stages, student stages)` feature points the
    student returns; build the student with the same `num_stages` so it computes no more.
    """
    name = method_spec.name
    if name == "ce":
        return CeMethod(method_spec)
    if teacher is None:
        raise ValueError(f"method {name!r} needs a teacher")
    if teacher.num_classes != num_classes:
        raise ValueError(f"teacher has {teacher.num_classes} classes, the task has {num_classes}")
    simple = {"kd": KdMethod, "dkd": DkdMethod, "dist": DistMethod}
    if name in simple:
        return simple[name](method_spec)
    staged = {"ofa": OfaMethod, "hcd": HcdMethod}
    if name in staged:
        return staged[name](method_spec, student, teacher, num_classes)
    raise ValueError(f"unknown method {name!r}")
