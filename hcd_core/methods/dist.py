"""DIST: w_ce * CE + T^2 * (beta * inter-class + gamma * intra-class relation loss)."""

from __future__ import annotations

import torch

from hcd_core import losses
from hcd_core.features import StudentNet, StudentOutput, TeacherOutput
from hcd_core.method_configs import DistConfig
from hcd_core.methods.base import Method, cross_entropy, register_method, require_teacher
from hcd_core.teacher import FrozenTeacher


@register_method(DistConfig)
class DistMethod(Method):
    def __init__(
        self, config: DistConfig, student: StudentNet, teacher: FrozenTeacher | None, num_classes: int
    ) -> None:
        super().__init__(config, student, teacher, num_classes)
        self.beta, self.gamma = config.beta, config.gamma
        self.temperature, self.w_ce = config.temperature, config.w_ce

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
        ce = cross_entropy(student_out, target, label_smoothing)
        terms = losses.dist_terms(student_out.logits, teacher_out.logits, self.temperature)
        t2 = self.temperature**2
        loss = self.w_ce * ce + t2 * (self.beta * terms["inter"] + self.gamma * terms["intra"])
        return {"loss": loss, "ce": ce, "inter": terms["inter"], "intra": terms["intra"]}
