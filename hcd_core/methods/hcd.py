"""HCD: projector P_k -> h_k; CFM_k(concat(h_k, f_t)) -> n*C raw sub-logits S_k; SDD + OL losses.

With `cfm_teacher_feature: false` the CFM sees h_k alone (an ablation of its teacher input).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from hcd_core import losses
from hcd_core.features import StudentNet, StudentOutput, TeacherOutput
from hcd_core.method_configs import HcdConfig
from hcd_core.methods.base import (
    Method,
    StackedLinear,
    checked_teacher,
    projection_dim,
    register_method,
    require_teacher,
    stage_count,
    tapped_features,
)
from hcd_core.projector import build_projectors
from hcd_core.teacher import FrozenTeacher


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


@register_method(HcdConfig)
class HcdMethod(Method):
    needs_features = True

    def __init__(self, config: HcdConfig, student: StudentNet, teacher: FrozenTeacher | None, num_classes: int) -> None:
        super().__init__(config, student, teacher, num_classes)
        self.config = config
        self.num_classes, self.num_sub_logits = num_classes, config.num_sub_logits
        self.num_stages = stage_count(config, student)
        frozen = checked_teacher(self.name, teacher)
        d_t = frozen.pre_logit_dim
        dim = projection_dim(config, student, frozen)
        shapes = student.shapes
        self.projectors = build_projectors(
            shapes.channels[-self.num_stages:], shapes.sizes[-self.num_stages:], dim
        )
        out = config.num_sub_logits * num_classes
        cfm_in = dim + d_t if config.cfm_teacher_feature else dim
        # All K CFMs run as one batched matmul (StackedLinear); cfm "mlp" adds a hidden layer of width d_t.
        if config.cfm == "linear":
            self.cfm = nn.Sequential(StackedLinear(self.num_stages, cfm_in, out))
        else:
            self.cfm = nn.Sequential(
                StackedLinear(self.num_stages, cfm_in, d_t), nn.ReLU(inplace=True),
                StackedLinear(self.num_stages, d_t, out),
            )

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
        k, batch = h.shape[0], h.shape[1]
        c = self.config
        if c.cfm_teacher_feature:
            f_t = teacher_out.pre_logits.to(h.dtype).unsqueeze(0).expand(k, -1, -1)  # (K, B, d_t)
            h = torch.cat([h, f_t], dim=2)
        shared = self.cfm(h)  # (K, B, n*C)
        sub_logits = shared.view(k, batch, self.num_sub_logits, self.num_classes)  # stage k: [k]
        terms = losses.hcd_loss_terms_stacked(
            student_out.logits, teacher_out.logits, sub_logits, target,
            temperature=c.temperature, fusion=c.fusion, ol_threshold=c.ol_threshold, ol_input=c.ol_input,
            mask_target=c.mask_target, detach_fused=c.detach_fused, stage_reduce=c.stage_reduce,
            label_smoothing=label_smoothing, sdd_ce_input=c.sdd_ce_input, fusion_student=c.fusion_student,
            fusion_teacher=c.fusion_teacher, sdd_temperature=c.sdd_temperature,
        )
        loss = weighted_sum([(c.w_ce, terms["ce"]), (c.w_kd, terms["kd"]), (c.w_sdd_ce, terms["sdd_ce"]),
                             (c.w_sdd_kl, terms["sdd_kl"]), (c.w_ol, terms["ol"])])
        return {"loss": loss, **terms}
