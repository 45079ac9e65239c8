"""One-for-All: per-stage branch = projector + Linear(D, C), every branch trained with the OFA loss."""

from __future__ import annotations

import torch

from hcd_core import losses
from hcd_core.features import StudentNet, StudentOutput, TeacherOutput
from hcd_core.method_configs import OfaConfig
from hcd_core.methods.base import (
    Method,
    StackedLinear,
    checked_teacher,
    cross_entropy,
    projection_dim,
    register_method,
    require_teacher,
    stage_count,
    tapped_features,
)
from hcd_core.projector import build_projectors
from hcd_core.teacher import FrozenTeacher


@register_method(OfaConfig)
class OfaMethod(Method):
    needs_features = True

    def __init__(self, config: OfaConfig, student: StudentNet, teacher: FrozenTeacher | None, num_classes: int) -> None:
        super().__init__(config, student, teacher, num_classes)
        self.eps, self.temperature = config.eps, config.temperature
        self.w_ce, self.w_kd, self.w_ofa = config.w_ce, config.w_kd, config.w_ofa
        self.num_stages = stage_count(config, student)
        dim = projection_dim(config, student, checked_teacher(self.name, teacher))
        shapes = student.shapes
        self.projectors = build_projectors(
            shapes.channels[-self.num_stages:], shapes.sizes[-self.num_stages:], dim
        )
        self.heads = StackedLinear(self.num_stages, dim, num_classes)

    def forward(
        self,
        student_out: StudentOutput,
        teacher_out: TeacherOutput | None,
        target: torch.Tensor,
        *,
        epoch: float | torch.Tensor = 0.0,
        label_smoothing: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        teacher_out = require_teacher(self.name, teacher_out)
        feats = tapped_features(self.name, student_out, self.num_stages)
        h = torch.stack([proj(f) for proj, f in zip(self.projectors, feats, strict=True)])  # (K, B, D)
        branch_logits = self.heads(h)  # (K, B, C)
        z_t = teacher_out.logits
        ce = cross_entropy(student_out, target, label_smoothing)
        ofa_logits = losses.ofa_loss(student_out.logits, z_t, target, self.eps, self.temperature)
        # sum_k mean_b OFA == K * mean over all K*B rows: one call instead of K.
        k, batch = branch_logits.shape[0], branch_logits.shape[1]
        ofa_stages = k * losses.ofa_loss(
            branch_logits.reshape(k * batch, -1), z_t.repeat(k, 1), target.repeat(k), self.eps, self.temperature
        )
        loss = self.w_ce * ce + self.w_kd * ofa_logits + self.w_ofa * ofa_stages
        return {"loss": loss, "ce": ce, "ofa_logits": ofa_logits, "ofa_stages": ofa_stages}
