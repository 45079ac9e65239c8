"""Convolutional projector: one student feature map (B, C, H, W) -> a vector (B, D).

Method spec section 1.3: stride-2 depthwise-separable blocks until the map is no larger than the
deepest tapped stage's, a 1x1 conv to width D where no block is needed, then global average pooling.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _ceil_half(n: int) -> int:
    # Output size of a 3x3 conv with stride 2 and padding 1.
    return (n + 1) // 2


def count_downsampling_blocks(size: tuple[int, int], target: tuple[int, int]) -> int:
    """Stride-2 blocks needed until `size` is no larger than `target` in both dimensions."""
    h, w = size
    blocks = 0
    while h > target[0] or w > target[1]:
        h, w = _ceil_half(h), _ceil_half(w)
        blocks += 1
    return blocks


class SepConvBlock(nn.Sequential):
    """Depthwise 3x3 stride-2 conv, pointwise 1x1 conv, BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ConvProjector(nn.Module):
    """Projects a (B, in_channels, H, W) map with H, W = `in_size` to (B, out_dim).

    With several blocks the width grows geometrically from `in_channels` to `out_dim` (R), the way
    the backbones themselves widen as they downsample: far cheaper than widening in the first block.
    """

    def __init__(
        self, in_channels: int, in_size: tuple[int, int], target_size: tuple[int, int], out_dim: int
    ) -> None:
        super().__init__()
        num_blocks = count_downsampling_blocks(in_size, target_size)
        if num_blocks == 0:
            body: list[nn.Module] = [
                nn.Conv2d(in_channels, out_dim, 1, bias=False),
                nn.BatchNorm2d(out_dim),
                nn.ReLU(inplace=True),
            ]
        else:
            widths = [in_channels] + [
                max(1, round(in_channels * (out_dim / in_channels) ** ((i + 1) / num_blocks)))
                for i in range(num_blocks)
            ]
            widths[-1] = out_dim
            body = [SepConvBlock(widths[i], widths[i + 1]) for i in range(num_blocks)]
        self.num_blocks = num_blocks
        self.body = nn.Sequential(*body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Global average pooling as a plain mean: AdaptiveAvgPool2d(1) on a channels_last map
        # restrides its output in place, and backward through that costs extra kernels.
        out: torch.Tensor = self.body(x)
        return out.mean(dim=(2, 3))


def build_projectors(channels: list[int], sizes: list[tuple[int, int]], out_dim: int) -> nn.ModuleList:
    """One projector per tapped stage, all ending at the deepest stage's size (the last one)."""
    target = sizes[-1]
    return nn.ModuleList(ConvProjector(c, s, target, out_dim) for c, s in zip(channels, sizes, strict=True))
