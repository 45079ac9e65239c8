"""DKD: w_ce * CE + warm-up * (alpha * TCKD + beta * NCKD)."""

from __future__ import annotations

import torch

from hcd_core import losses
from hcd_core.features import StudentNet, StudentOutput, TeacherOutput
from hcd_core.method_configs import DkdConfig
from hcd_core.methods.base import Method, cross_entropy, register_method, require_teacher
from hcd_core.teacher import FrozenTeacher


@register_method(DkdConfig)
class DkdMethod(Method):
    def __init__(self, config: DkdConfig, student: StudentNet, teacher: FrozenTeacher | None, num_classes: int) -> None:
        super().__init__(config, student, teacher, num_classes)
        self.alpha, self.beta, self.temperature = config.alpha, config.beta, config.temperature
        self.w_ce, self.warmup_epochs = config.w_ce, config.warmup_epochs

    def warmup_factor(self, epoch: float | torch.Tensor) -> float | torch.Tensor:
        """Linear warm-up of the KD part over the first `warmup_epochs` epochs. The trainer passes
        the epoch as a 0-d tensor, so a compiled step sees a value, not a constant to recompile for."""
        if self.warmup_epochs == 0:
            return 1.0
        if isinstance(epoch, torch.Tensor):
            return (epoch.float() / self.warmup_epochs).clamp(0.0, 1.0)
        return min(max(float(epoch), 0.0) / self.warmup_epochs, 1.0)

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
        terms = losses.dkd_terms(student_out.logits, teacher_out.logits, target, self.temperature)
        kd_part = self.alpha * terms["tckd"] + self.beta * terms["nckd"]
        loss = self.w_ce * ce + self.warmup_factor(epoch) * kd_part
        return {"loss": loss, "ce": ce, "tckd": terms["tckd"], "nckd": terms["nckd"]}
