"""CE: supervised training of the student alone (teachers and baselines)."""

from __future__ import annotations

import torch

from hcd_core.features import StudentNet, StudentOutput, TeacherOutput
from hcd_core.method_configs import CeConfig
from hcd_core.methods.base import Method, cross_entropy, register_method
from hcd_core.teacher import FrozenTeacher


@register_method(CeConfig)
class CeMethod(Method):
    def __init__(self, config: CeConfig, student: StudentNet, teacher: FrozenTeacher | None, num_classes: int) -> None:
        super().__init__(config, student, teacher, num_classes)

    def forward(
        self,
        student_out: StudentOutput,
        teacher_out: TeacherOutput | None,
        target: torch.Tensor,
        *,
        epoch: float | torch.Tensor = 0.0,
        label_smoothing: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        ce = cross_entropy(student_out, target, label_smoothing)
        return {"loss": ce, "ce": ce}
