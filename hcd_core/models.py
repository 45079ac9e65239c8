"""Model construction by timm name from an allow-list (see also hcd_core.features)."""

from __future__ import annotations

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
