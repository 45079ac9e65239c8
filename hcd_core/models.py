"""Model construction by timm name from an allow-list (see also hcd_core.features)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch/timm are imported lazily: hcd_core.spec (and the API) import this module
    import torch.nn as nn

# Allow-listed timm architectures. `create_model` is never called with any other name, which also
# keeps `hf-hub:` names (arbitrary remote code/weights) out. The `test_*` models are timm's tiny
# test networks: real architectures of each family, small enough for CPU tests.
ALLOWED_ARCHS: tuple[str, ...] = (
    # CNN students / teachers
    "resnet18", "resnet34", "resnet50",
    "mobilenetv2_100", "mobilenetv3_small_100", "mobilenetv3_large_100",
    "efficientnet_b0",
    "convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny",
    # transformers and MLPs
    "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
    "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
    "swin_tiny_patch4_window7_224",
    "mixer_b16_224", "resmlp_12_224",
    # tiny test networks
    "test_resnet", "test_efficientnet", "test_convnext", "test_vit",
)


def check_arch(arch: str) -> None:
    """Raise ValueError unless `arch` is allow-listed (checked before timm sees the name)."""
    if arch not in ALLOWED_ARCHS:
        raise ValueError(f"architecture {arch!r} is not allowed; choose one of: {', '.join(ALLOWED_ARCHS)}")


def create_timm_model(arch: str, num_classes: int, image_size: int, *, pretrained: bool = False) -> nn.Module:
    """Build an allow-listed timm model for `num_classes` classes and `image_size` inputs.

    `pretrained=True` downloads timm's weights (needs internet): opt-in only.
    """
    import timm

    check_arch(arch)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    kwargs: dict[str, Any] = {"pretrained": pretrained, "num_classes": num_classes}
    model: nn.Module
    try:
        model = timm.create_model(arch, img_size=image_size, **kwargs)
        return model
    except TypeError as err:
        # CNNs take any input size and have no img_size argument.
        if "img_size" not in str(err):
            raise
    model = timm.create_model(arch, **kwargs)
    return model


def timm_api(model: nn.Module) -> Any:
    """`model` for calling timm's own methods (forward_features, forward_head, forward_intermediates,
    get_classifier, num_classes): timm models share them, nn.Module's type does not declare them."""
    return model
