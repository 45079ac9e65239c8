"""KD (Hinton): w_ce * CE + w_kd * KL_T(teacher -> student)."""

from __future__ import annotations

import torch

from hcd_core import losses
from hcd_core.features import StudentNet, StudentOutput, TeacherOutput
from hcd_core.method_configs import KdConfig
from hcd_core.methods.base import Method, cross_entropy, register_method, require_teacher
from hcd_core.teacher import FrozenTeacher


@register_method(KdConfig)
class KdMethod(Method):
    def __init__(self, config: KdConfig, student: StudentNet, teacher: FrozenTeacher | None, num_classes: int) -> None:
        super().__init__(config, student, teacher, num_classes)
        self.temperature, self.w_ce, self.w_kd = config.temperature, config.w_ce, config.w_kd

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
        kd = losses.kd_loss(student_out.logits, teacher_out.logits, self.temperature)
        return {"loss": self.w_ce * ce + self.w_kd * kd, "ce": ce, "kd": kd}
