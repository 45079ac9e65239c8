"""Method configs: the `method` section of a job spec, one pydantic model per distillation method.

Torch-free (the API validates specs without torch). Every config is registered with
`@register_config`; the spec's `MethodConfig` union and `METHOD_NAMES` are derived from that
registry, and `hcd_core.methods` registers one implementation per config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, TypeVar, Union

from pydantic import Field

from hcd_core.spec_base import SpecModel, Temperature, Weight

__all__ = [
    "METHOD_CONFIGS", "METHOD_NAMES", "CeConfig", "DistConfig", "DkdConfig", "HcdConfig", "KdConfig",
    "MethodConfig", "MethodConfigBase", "OfaConfig", "StageConfig", "register_config",
]


class MethodConfigBase(SpecModel):
    """Common base: `name` is the discriminator (a Literal with a default in every subclass)."""

    needs_teacher: ClassVar[bool] = True
    name: str


ConfigT = TypeVar("ConfigT", bound=MethodConfigBase)

METHOD_CONFIGS: dict[str, type[MethodConfigBase]] = {}  # method name -> config class


def register_config(cls: type[ConfigT]) -> type[ConfigT]:
    """Class decorator: register a method config under the default of its `name` field."""
    name = cls.model_fields["name"].default
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__}.name needs a Literal default (the method's name)")
    if name in METHOD_CONFIGS:
        raise ValueError(f"method {name!r} is registered twice")
    METHOD_CONFIGS[name] = cls
    return cls


@register_config
class CeConfig(MethodConfigBase):
    """Supervised training, no teacher (trains teachers and baseline students)."""

    needs_teacher: ClassVar[bool] = False
    name: Literal["ce"] = "ce"


@register_config
class KdConfig(MethodConfigBase):
    name: Literal["kd"] = "kd"
    temperature: Temperature = 4.0
    w_ce: Weight = 1.0
    w_kd: Weight = 1.0


@register_config
class DkdConfig(MethodConfigBase):
    name: Literal["dkd"] = "dkd"
    alpha: Weight = 1.0
    beta: Weight = 8.0
    temperature: Temperature = 4.0
    w_ce: Weight = 1.0
    warmup_epochs: Annotated[int, Field(ge=0, le=1000)] = 20


@register_config
class DistConfig(MethodConfigBase):
    name: Literal["dist"] = "dist"
    beta: Weight = 1.0
    gamma: Weight = 1.0
    temperature: Temperature = 1.0
    w_ce: Weight = 1.0


FusionWeight = Annotated[float, Field(ge=0.0, le=10.0)]


class StageConfig(MethodConfigBase):
    """Common switches of methods that tap student stages through convolutional projectors."""

    num_stages: Annotated[int, Field(ge=1, le=4)] = 4  # K: the last `num_stages` feature points
    proj_dim: Annotated[int, Field(ge=8, le=8192)] | None = None  # D; None = max(d_s, d_t)


@register_config
class OfaConfig(StageConfig):
    name: Literal["ofa"] = "ofa"
    eps: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    temperature: Temperature = 1.0
    w_ce: Weight = 1.0
    w_kd: Weight = 1.0
    w_ofa: Weight = 1.0


@register_config
class HcdConfig(StageConfig):
    """HCD; every (R) choice of the method spec is a switch with the spec's default."""

    name: Literal["hcd"] = "hcd"
    num_sub_logits: Annotated[int, Field(ge=1, le=64)] = 4  # n
    # T of kd, and of sdd_kl unless sdd_temperature is set; 4 since the ablation study (docs/ablation.md)
    temperature: Temperature = 4.0
    sdd_temperature: Temperature | None = None  # T of sdd_kl; None = `temperature`
    cfm: Literal["linear", "mlp"] = "linear"
    # False feeds the CFM h_k alone (no teacher feature): ablates the "complementary" input.
    cfm_teacher_feature: bool = True
    fusion: Literal["sum", "mean"] = "sum"
    # Z_k = fusion_student * S_k + fusion_teacher * z_t ("sum"), halved for "mean".
    fusion_student: FusionWeight = 1.0
    fusion_teacher: FusionWeight = 1.0
    sdd_ce_input: Literal["fused", "raw"] = "fused"  # sdd_ce on Z_k, or on the raw S_k
    ol_threshold: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.5
    ol_input: Literal["fused", "raw"] = "fused"
    mask_target: bool = True
    detach_fused: bool = False
    stage_reduce: Literal["sum", "mean"] = "sum"
    w_ce: Weight = 1.0
    w_kd: Weight = 1.0
    w_sdd_ce: Weight = 1.0
    w_sdd_kl: Weight = 1.0
    w_ol: Weight = 1.0


METHOD_NAMES: tuple[str, ...] = tuple(METHOD_CONFIGS)

# The spec's `method` field: the registered configs, told apart by `name`. Type checkers see the
# common base (the union is built at run time from the registry).
if TYPE_CHECKING:
    MethodConfig = MethodConfigBase
else:
    MethodConfig = Annotated[Union[tuple(METHOD_CONFIGS.values())], Field(discriminator="name")]
