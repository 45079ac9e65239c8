"""Distillation methods: one module per method, each registered for its config class.

`build_method(config, student, teacher, num_classes)` looks the implementation up by the config's
class (`hcd_core.method_configs`); `METHODS` is the registry.
"""

from __future__ import annotations

from hcd_core.features import StudentNet
from hcd_core.method_configs import MethodConfigBase
from hcd_core.methods.base import METHODS, Method, StackedLinear, count_parameters, register_method
from hcd_core.methods.ce import CeMethod
from hcd_core.methods.dist import DistMethod
from hcd_core.methods.dkd import DkdMethod
from hcd_core.methods.hcd import HcdMethod
from hcd_core.methods.kd import KdMethod
from hcd_core.methods.ofa import OfaMethod
from hcd_core.teacher import FrozenTeacher

__all__ = [
    "METHODS", "CeMethod", "DistMethod", "DkdMethod", "HcdMethod", "KdMethod", "Method", "OfaMethod",
    "StackedLinear", "build_method", "count_parameters", "register_method",
]


def build_method(
    config: MethodConfigBase, student: StudentNet, teacher: FrozenTeacher | None, num_classes: int
) -> Method:
    """The method for a validated method config (`hcd_core.method_configs`).

    Stage methods (ofa, hcd) use the last `min(num_stages, student stages)` feature points the
    student returns; build the student with the same `num_stages` so it computes no more.
    """
    cls = METHODS.get(type(config))
    if cls is None:
        raise ValueError(f"no implementation is registered for method {config.name!r}")
    if cls.needs_teacher:
        if teacher is None:
            raise ValueError(f"method {config.name!r} needs a teacher")
        if teacher.num_classes != num_classes:
            raise ValueError(f"teacher has {teacher.num_classes} classes, the task has {num_classes}")
    return cls(config, student, teacher, num_classes)
