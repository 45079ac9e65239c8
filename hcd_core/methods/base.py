"""The `Method` base class, the method registry and the helpers the methods share.

A method is a small module that holds ONLY its trainable extras (projectors, CFMs, OFA branches)
and turns student/teacher outputs into a dict of loss terms with the total under "loss". The
student and the teacher are never submodules of a method, so `method.parameters()` and
`method.state_dict()` are the extras alone (what the checkpoint saves next to the student and what
is dropped at export). The loss math lives in `hcd_core.losses`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from hcd_core.features import StudentNet, StudentOutput, TeacherOutput
from hcd_core.method_configs import MethodConfigBase, StageConfig
from hcd_core.teacher import FrozenTeacher

__all__ = [
    "METHODS", "Method", "StackedLinear", "checked_teacher", "count_parameters", "cross_entropy", "projection_dim",
    "register_method", "require_teacher", "stage_count", "tapped_features",
]


class Method(nn.Module):
    """Base of every method. Subclasses register with `@register_method(TheirConfig)`, which sets
    `name`, `config_class` and `needs_teacher` from the config class."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfigBase]] = MethodConfigBase
    needs_teacher: ClassVar[bool] = True
    needs_features: ClassVar[bool] = False  # the student must return its tapped feature maps

    def __init__(
        self, config: MethodConfigBase, student: StudentNet, teacher: FrozenTeacher | None, num_classes: int
    ) -> None:
        super().__init__()

    def forward(
        self,
        student_out: StudentOutput,
        teacher_out: TeacherOutput | None,
        target: torch.Tensor,
        *,
        epoch: float | torch.Tensor = 0.0,
        label_smoothing: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


MethodT = TypeVar("MethodT", bound=Method)

METHODS: dict[type[MethodConfigBase], type[Method]] = {}  # config class -> implementation


def register_method(config_class: type[MethodConfigBase]) -> Callable[[type[MethodT]], type[MethodT]]:
    """Class decorator: `cls` implements the method configured by `config_class`."""

    def register(cls: type[MethodT]) -> type[MethodT]:
        if config_class in METHODS:
            raise ValueError(f"{config_class.__name__} already has an implementation: {METHODS[config_class]}")
        cls.name = str(config_class.model_fields["name"].default)
        cls.config_class = config_class
        cls.needs_teacher = config_class.needs_teacher
        METHODS[config_class] = cls
        return cls

    return register


# --------------------------------------------------------------------------- helpers
def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class StackedLinear(nn.Module):
    """`num` independent Linear layers applied in one batched matmul: (num, B, in) -> (num, B, out).

    Used for the per-stage CFM/branch heads so K stages cost one kernel instead of K. Initialised
    like nn.Linear.
    """

    def __init__(self, num: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num, out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1).to(x.dtype), x, self.weight.to(x.dtype))


def cross_entropy(student_out: StudentOutput, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    return F.cross_entropy(student_out.logits, target, label_smoothing=label_smoothing)


def require_teacher(name: str, teacher_out: TeacherOutput | None) -> TeacherOutput:
    if teacher_out is None:
        raise ValueError(f"method {name!r} needs the teacher's output")
    return teacher_out


def tapped_features(name: str, student_out: StudentOutput, count: int) -> list[torch.Tensor]:
    """The last `count` feature maps the student returned."""
    if student_out.features is None:
        raise ValueError(f"method {name!r} needs student features: call the student with with_features=True")
    if len(student_out.features) < count:
        raise ValueError(f"method {name!r} uses {count} stages, the student returned {len(student_out.features)}")
    return student_out.features[-count:]


def stage_count(config: StageConfig, student: StudentNet) -> int:
    """Stages a stage method taps: `num_stages`, at most the student's feature points."""
    return min(config.num_stages, len(student.shapes.indices))


def projection_dim(config: StageConfig, student: StudentNet, teacher: FrozenTeacher) -> int:
    """Projector width D: `proj_dim`, by default max(d_s, d_t) (method spec 1.3)."""
    return config.proj_dim or max(student.shapes.pre_logit_dim, teacher.pre_logit_dim)


def checked_teacher(name: str, teacher: FrozenTeacher | None) -> FrozenTeacher:
    if teacher is None:
        raise ValueError(f"method {name!r} needs a teacher")
    return teacher
