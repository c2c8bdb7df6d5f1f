"""PAN neck: a top-down (FPN) then a bottom-up path, every level at one common width.

FPN: Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017.
PAN: Liu et al., "Path Aggregation Network for Instance Segmentation", CVPR 2018.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import ConvBNAct, CSPBlock

__all__ = ["PANNeck"]


class PANNeck(nn.Module):
    """Fuse L backbone levels (strides doubling) into L maps of ``out_channels`` channels.

    lateral_k = 1x1 ConvBNAct(c_k -> w)
    top-down:  T_{L-1} = lateral_{L-1};  T_k = CSP(cat(up2(T_{k+1}), lateral_k))
    bottom-up: N_0 = T_0;                N_k = CSP(cat(down2(N_{k-1}), T_k))
    up2 is nearest 2x upsampling, down2 a stride-2 3x3 ConvBNAct. Input sizes must halve exactly
    from level to level (the detector enforces H, W multiples of the largest stride).

    Args:
        in_channels: channels of the backbone levels, finest first.
        out_channels: common width w of every output level.
        depth: bottlenecks in each CSP fusion block.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, depth: int = 1) -> None:
        super().__init__()
        levels = len(in_channels)
        self.laterals = nn.ModuleList(ConvBNAct(c, out_channels) for c in in_channels)
        self.top_down = nn.ModuleList(CSPBlock(2 * out_channels, out_channels, depth) for _ in range(levels - 1))
        self.downsample = nn.ModuleList(ConvBNAct(out_channels, out_channels, 3, stride=2) for _ in range(levels - 1))
        self.bottom_up = nn.ModuleList(CSPBlock(2 * out_channels, out_channels, depth) for _ in range(levels - 1))
        self.out_channels = out_channels

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        # L x (B, w, H_k, W_k)
        lateral = [conv(f) for conv, f in zip(self.laterals, feats, strict=True)]
        top_down = [lateral[-1]]
        for k in range(len(lateral) - 2, -1, -1):
            up = F.interpolate(top_down[0], scale_factor=2.0, mode="nearest")
            top_down.insert(0, self.top_down[k](torch.cat([up, lateral[k]], dim=1)))
        outs = [top_down[0]]
        for k in range(1, len(top_down)):
            down = self.downsample[k - 1](outs[-1])
            outs.append(self.bottom_up[k - 1](torch.cat([down, top_down[k]], dim=1)))
        return outs
