"""A compact CSP backbone (BN + SiLU), written here and randomly initialised.

The layout follows the CSP / ELAN family used by YOLOv8 and PP-YOLOE: a stride-2 stem, then one
stage per pyramid level, each a stride-2 3x3 convolution followed by a cross-stage-partial block
(half the channels go through a chain of residual bottlenecks, every intermediate output is
concatenated and fused by a 1x1 convolution), and an SPPF block on the coarsest level.
Cross Stage Partial networks: Wang et al., CSPNet, CVPRW 2020.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SPPF", "CSPBackbone", "CSPBlock", "ConvBNAct"]

# BatchNorm settings of the YOLO family: a faster-moving running average suits short schedules.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.03


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias, 'same' padding) -> BatchNorm2d -> SiLU.

    (B, c_in, H, W) -> (B, c_out, H / stride, W / stride).
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(c_out, eps=_BN_EPS, momentum=_BN_MOMENTUM),
            nn.SiLU(inplace=True),
        )


class _Bottleneck(nn.Module):
    """Two 3x3 ConvBNAct with an identity shortcut: x + f(x), channels unchanged."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBNAct(channels, channels, 3), ConvBNAct(channels, channels, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CSPBlock(nn.Module):
    """Cross-stage-partial block: (B, c_in, H, W) -> (B, c_out, H, W).

    A 1x1 conv produces two halves of c_out / 2 channels; the second half runs through
    ``depth`` residual bottlenecks; both halves and every bottleneck output are concatenated
    ((2 + depth) * c_out / 2 channels) and fused by a 1x1 conv.
    """

    def __init__(self, c_in: int, c_out: int, depth: int = 1) -> None:
        super().__init__()
        self.hidden = c_out // 2
        self.split = ConvBNAct(c_in, 2 * self.hidden)
        self.blocks = nn.ModuleList(_Bottleneck(self.hidden) for _ in range(depth))
        self.fuse = ConvBNAct((2 + depth) * self.hidden, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = list(self.split(x).split(self.hidden, dim=1))  # 2 x (B, hidden, H, W)
        for block in self.blocks:
            outs.append(block(outs[-1]))
        return self.fuse(torch.cat(outs, dim=1))


class SPPF(nn.Module):
    """Fast spatial pyramid pooling: three chained 5x5 max-pools, concatenated, fused by 1x1 conv.

    Equivalent to pooling with 5, 9 and 13 windows (SPP, He et al. 2015) at a third of the cost.
    (B, c, H, W) -> (B, c, H, W).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = channels // 2
        self.reduce = ConvBNAct(channels, hidden)
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.fuse = ConvBNAct(4 * hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [self.reduce(x)]
        for _ in range(3):
            pooled.append(self.pool(pooled[-1]))
        return self.fuse(torch.cat(pooled, dim=1))


class CSPBackbone(nn.Module):
    """Stem (stride 2) and one stride-2 CSP stage per level up to ``out_strides[-1]``.

    Args:
        channels: output channels of the stem and of the stages at strides 4, 8, 16, ...
            (``len(channels) == log2(out_strides[-1])``).
        depths: bottlenecks per stage (one entry per stage, i.e. ``len(channels) - 1``).
        out_strides: strides of the returned feature maps, e.g. (8, 16, 32).

    Returns a list of feature maps, one per ``out_strides`` entry, (B, channels[k], H/s, W/s).
    """

    def __init__(self, channels: Sequence[int], depths: Sequence[int], out_strides: Sequence[int]) -> None:
        super().__init__()
        if len(depths) != len(channels) - 1:
            raise ValueError(f"depths must have len(channels) - 1 = {len(channels) - 1} entries, got {len(depths)}")
        if 2 ** len(channels) != out_strides[-1]:
            raise ValueError(f"channels must have log2(out_strides[-1]) entries, got {len(channels)} for {out_strides}")
        self.stem = ConvBNAct(3, channels[0], 3, stride=2)
        stages = []
        for k, (c_in, c_out, depth) in enumerate(zip(channels[:-1], channels[1:], depths, strict=True)):
            layers = [ConvBNAct(c_in, c_out, 3, stride=2), CSPBlock(c_out, c_out, depth)]
            if k == len(depths) - 1:
                layers.append(SPPF(c_out))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_strides = tuple(out_strides)
        self.out_channels = [channels[s.bit_length() - 2] for s in self.out_strides]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)  # stride 2
        outs = []
        stride = 2
        for stage in self.stages:
            x = stage(x)
            stride *= 2
            if stride in self.out_strides:
                outs.append(x)
        return outs
