"""The frozen teacher: eval forever, no gradients, and fed batches adapted to what it expects."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from hcd_core.features import TeacherOutput
from hcd_core.models import create_timm_model, timm_api

Norm = tuple[Sequence[float], Sequence[float]]  # (mean, std) per RGB channel


class FrozenTeacher(nn.Module):
    """Wraps a timm model so that it can never train: `train(True)` keeps every submodule in eval,
    parameters never require grad and `forward` runs under `no_grad`.

    The student's batches (size `input_size`, normalised with `input_norm`) are re-normalised to
    `teacher_norm` and resized to `teacher_size` when those differ.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        input_size: int,
        input_norm: Norm,
        teacher_size: int | None = None,
        teacher_norm: Norm | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        self.input_size = input_size
        self.teacher_size = teacher_size or input_size
        mean_s, std_s = (torch.tensor(v, dtype=torch.float32) for v in input_norm)
        mean_t, std_t = (torch.tensor(v, dtype=torch.float32) for v in (teacher_norm or input_norm))
        # x_t = (x * std_s + mean_s - mean_t) / std_t  ==  x * scale + shift, per channel.
        self.renormalise = not (torch.equal(mean_s, mean_t) and torch.equal(std_s, std_t))
        self._scale: torch.Tensor
        self._shift: torch.Tensor
        self.register_buffer("_scale", (std_s / std_t).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", ((mean_s - mean_t) / std_t).view(1, 3, 1, 1), persistent=False)
        self.num_classes = int(timm_api(model).num_classes)
        self.eval()
        # pre-logit width and whether get_classifier() alone maps pre-logits to the logits.
        self.pre_logit_dim, self._classifier_only = self._probe()

    def train(self, mode: bool = True) -> "FrozenTeacher":
        # Ignore `mode`: a teacher in train mode would update BN statistics and apply dropout.
        return super().train(False)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """The student's batch as the teacher expects it (same device and dtype as `x`)."""
        if self.renormalise:
            x = x * self._scale.to(dtype=x.dtype) + self._shift.to(dtype=x.dtype)
        if self.teacher_size != self.input_size:
            x = F.interpolate(x, size=(self.teacher_size, self.teacher_size), mode="bilinear",
                              align_corners=False, antialias=False)
        return x

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> TeacherOutput:
        if self.model.training:  # someone called .train() on the inner model directly
            self.model.eval()
        model = timm_api(self.model)
        final = model.forward_features(self.adapt(x))
        pre_logits = model.forward_head(final, pre_logits=True)
        if self._classifier_only:
            logits = model.get_classifier()(pre_logits)
        else:
            logits = model.forward_head(final)
        return TeacherOutput(logits=logits, pre_logits=pre_logits)

    @torch.no_grad()
    def _probe(self) -> tuple[int, bool]:
        model = timm_api(self.model)
        param = next(self.model.parameters())
        dummy = torch.randn(2, 3, self.teacher_size, self.teacher_size,
                            generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
        final = model.forward_features(dummy)
        pre_logits = model.forward_head(final, pre_logits=True)
        logits = model.forward_head(final)
        classifier = model.get_classifier()
        # Applying the classifier to the pre-logits saves a second pooling; only where it is exact.
        classifier_only = isinstance(classifier, nn.Module) and torch.allclose(
            classifier(pre_logits), logits, atol=1e-5, rtol=1e-4
        )
        return int(pre_logits.shape[-1]), bool(classifier_only)


def load_safetensors_weights(model: nn.Module, path: str | Path, *, arch: str, num_classes: int) -> None:
    """Load a safetensors state dict strictly, naming every missing, unexpected or misshapen key."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        problems = []
        found = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        for label, keys in found:
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                problems.append(f"{label}: {shown}")
        raise ValueError(
            f"weights in {path.name} do not fit {arch!r} with {num_classes} classes "
            f"(is the file for another architecture or number of classes?); " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)


def build_teacher(
    arch: str,
    num_classes: int,
    *,
    input_size: int,
    input_norm: Norm,
    teacher_size: int | None = None,
    teacher_norm: Norm | None = None,
    weights_path: str | Path | None = None,
    pretrained: bool = False,
) -> FrozenTeacher:
    """A frozen teacher for batches of `input_size` images normalised with `input_norm`.

    `teacher_size`/`teacher_norm`: what the teacher was trained with (None = same as the input).
    `weights_path`: a safetensors state dict (the usual way); `pretrained`: timm's weights (internet).
    """
    if weights_path is not None and pretrained:
        raise ValueError("give either weights_path or pretrained=True, not both")
    size = teacher_size or input_size
    model = create_timm_model(arch, num_classes, size, pretrained=pretrained)
    if weights_path is not None:
        load_safetensors_weights(model, weights_path, arch=arch, num_classes=num_classes)
    return FrozenTeacher(model, input_size=input_size, input_norm=input_norm,
                         teacher_size=size, teacher_norm=teacher_norm)
