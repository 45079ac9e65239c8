"""Student wrapper: logits, and on request the feature maps of the last `num_stages` feature points.

Features come from timm's `forward_intermediates` in the same forward pass as the logits (no patched
forwards, no per-architecture shape tables); their shapes are found by a dummy-batch probe at build time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from hcd_core.models import create_timm_model, timm_api


@dataclass
class StudentOutput:
    logits: torch.Tensor  # (B, C)
    features: list[torch.Tensor] | None = None  # NCHW, one per feature point, shallowest first


@dataclass
class TeacherOutput:
    logits: torch.Tensor  # (B, C)
    pre_logits: torch.Tensor  # (B, d_t)


@dataclass
class FeatureShapes:
    indices: list[int]  # forward_intermediates indices of the feature points, ascending
    channels: list[int]
    sizes: list[tuple[int, int]]  # (H, W) at the build-time image size
    pre_logit_dim: int  # width of forward_head(..., pre_logits=True)


def feature_point_indices(model: nn.Module, num_stages: int) -> list[int]:
    """Indices (into model.feature_info / forward_intermediates) of the last `num_stages` points.

    Hierarchical models (reductions differ: ResNet, ConvNeXt, Swin...): the deepest stages.
    Isotropic models (one reduction for all blocks: ViT, Mixer, ResMLP): `num_stages` evenly
    spaced blocks ending with the last (depth 12, 4 stages -> 2, 5, 8, 11).
    """
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} exposes no feature_info; cannot tap its features")
    count = len(info)
    num_stages = min(num_stages, count)
    reductions = {int(point["reduction"]) for point in info}
    if count > 1 and len(reductions) == 1:
        # Spread over the whole depth, ending with the last block (12 blocks, 4 stages -> 2, 5, 8, 11).
        return [count - 1 - ((num_stages - 1 - j) * count) // num_stages for j in range(num_stages)]
    return list(range(count - num_stages, count))


class StudentNet(nn.Module):
    """A timm model (`self.model`, what gets exported) plus its feature-point bookkeeping."""

    def __init__(self, model: nn.Module, image_size: int, num_stages: int = 4) -> None:
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.shapes = probe_feature_shapes(model, image_size, feature_point_indices(model, num_stages))

    def forward(self, x: torch.Tensor, with_features: bool = False) -> StudentOutput:
        if not with_features:
            # The plain model forward: no intermediate bookkeeping when nothing needs features.
            return StudentOutput(logits=self.model(x))
        model = timm_api(self.model)
        final, features = model.forward_intermediates(x, indices=self.shapes.indices, output_fmt="NCHW")
        return StudentOutput(logits=model.forward_head(final), features=list(features))


@torch.no_grad()
def probe_feature_shapes(model: nn.Module, image_size: int, indices: list[int]) -> FeatureShapes:
    """Run one dummy image through the model (eval mode, restored afterwards) to read shapes."""
    was_training = model.training
    param = next(model.parameters())
    dummy = torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)
    model.eval()
    try:
        final, features = timm_api(model).forward_intermediates(dummy, indices=indices, output_fmt="NCHW")
        pre_logits = timm_api(model).forward_head(final, pre_logits=True)
    finally:
        model.train(was_training)
    if len(features) != len(indices):
        raise RuntimeError(f"forward_intermediates returned {len(features)} maps for indices {indices}")
    return FeatureShapes(
        indices=list(indices),
        channels=[int(f.shape[1]) for f in features],
        sizes=[(int(f.shape[2]), int(f.shape[3])) for f in features],
        pre_logit_dim=int(pre_logits.shape[-1]),
    )


def build_student(
    arch: str, num_classes: int, image_size: int, *, num_stages: int = 4, pretrained: bool = False
) -> StudentNet:
    model = create_timm_model(arch, num_classes, image_size, pretrained=pretrained)
    return StudentNet(model, image_size, num_stages=num_stages)
