"""DenseDetectorModel: CSP backbone + PAN neck + dense anchor-free DFL head (pure torch)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from detlosses.boxes import distance2bbox
from detlosses.losses.distribution_focal import distribution_integral

from .backbone import CSPBackbone
from .head import DecoupledHead, TOODHead
from .neck import PANNeck

__all__ = ["SIZES", "DenseDetectorModel", "DenseOutput"]


class _Size(NamedTuple):
    width: float  # channel multiplier
    depth: float  # bottleneck-count multiplier
    head_convs: int  # stacked convs of the TOOD head


SIZES: dict[str, _Size] = {
    "n": _Size(width=0.25, depth=0.2, head_convs=3),
    "s": _Size(width=0.5, depth=0.34, head_convs=4),
    "m": _Size(width=0.75, depth=0.67, head_convs=6),
}
HEADS = ("tood", "decoupled")
# Width-1.0 channels of the backbone output at each stride, bottlenecks per stage, neck width/depth.
_BASE_CHANNELS = {2: 64, 4: 128, 8: 256, 16: 384, 32: 512, 64: 512}
_BASE_DEPTH = {4: 3, 8: 6, 16: 6, 32: 3, 64: 3}
_BASE_NECK_CHANNELS = 256
_BASE_NECK_DEPTH = 3


def _scaled(value: float, multiplier: float) -> int:
    return max(1, round(value * multiplier))


class DenseOutput(NamedTuple):
    """Dense predictions; A = sum over levels of (H / s) * (W / s), level by level, row-major."""

    cls_logits: torch.Tensor  # (B, A, C) float32
    box_dist_logits: torch.Tensor  # (B, A, 4 * (reg_max + 1)) float32, sides l, t, r, b
    box_preds: torch.Tensor  # (B, A, 4) decoded xyxy in input pixels, float32
    anchor_points: torch.Tensor  # (A, 2) cell centres (x, y) in input pixels
    strides: torch.Tensor  # (A,) float stride of each anchor


def _check_strides(strides: Sequence[int]) -> tuple[int, ...]:
    strides = tuple(int(s) for s in strides)
    doubling = all(b == 2 * a for a, b in itertools.pairwise(strides))
    if not strides or not doubling or strides[0] < 4 or strides[-1] > 64:
        raise ValueError(f"strides must double from level to level within 4..64, e.g. (8, 16, 32), got {strides}")
    return strides


def _flatten_levels(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, K, H_k, W_k) per level -> (B, A, K) float32, level by level, row-major within a level."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1).float()


class DenseDetectorModel(nn.Module):
    """One-stage anchor-free detector network: images -> dense class logits and DFL boxes.

    Backbone: CSP stages with BN + SiLU and SPPF (:class:`CSPBackbone`); neck: PAN at a common
    width (:class:`PANNeck`); head: TOOD's task-aligned head (``head="tood"``, :class:`TOODHead`)
    or a YOLOv8/PP-YOLOE-like decoupled head (``head="decoupled"``). Sizes scale channels/depth:
    ``n`` has backbone channels 16-32-64-96-128 (strides 2..32) and a 64-channel neck and head.

    Decoding: d = sum_k k * softmax(dist_logits_side)_k (GFL's integral) * stride, then
    box = (x - d_l, y - d_t, x + d_r, y + d_b) around the anchor point
    (x, y) = ((j + 0.5) s, (i + 0.5) s).

    Args:
        num_classes: number of foreground classes C.
        size: "n" | "s" | "m".
        reg_max: largest distance bin; each side has reg_max + 1 bins (in strides).
        head: "tood" | "decoupled".
        strides: output strides, doubling level to level (default (8, 16, 32)).

    Input ``images`` (B, 3, H, W) in [0, 1], H and W multiples of ``max(strides)``.
    Weights are randomly initialised (classification prior 0.01); nothing is downloaded.
    """

    def __init__(
        self,
        num_classes: int,
        size: str = "n",
        reg_max: int = 16,
        head: str = "tood",
        strides: Sequence[int] = (8, 16, 32),
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
        if not isinstance(reg_max, int) or reg_max < 1:
            raise ValueError(f"reg_max must be a positive int, got {reg_max!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        self.strides = _check_strides(strides)
        self.num_classes = num_classes
        self.reg_max = reg_max
        cfg = SIZES[size]

        # stem and stages at strides 2, 4, ..., max stride
        stage_strides = [2**k for k in range(1, self.strides[-1].bit_length())]
        channels = [_scaled(_BASE_CHANNELS[s], cfg.width) for s in stage_strides]
        depths = [_scaled(_BASE_DEPTH[s], cfg.depth) for s in stage_strides[1:]]
        width = _scaled(_BASE_NECK_CHANNELS, cfg.width)
        self.backbone = CSPBackbone(channels, depths, self.strides)
        self.neck = PANNeck(self.backbone.out_channels, width, _scaled(_BASE_NECK_DEPTH, cfg.depth))
        if head == "tood":
            self.head = TOODHead(width, num_classes, reg_max, stacked_convs=cfg.head_convs)
        else:
            self.head = DecoupledHead(width, len(self.strides), num_classes, reg_max)
        self._anchor_cache: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def anchors(self, height: int, width: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Anchor points (A, 2) = ((j + 0.5) s, (i + 0.5) s) and strides (A,) for an input size.

        Level by level (finest first), row-major within a level; cached per (height, width, device).
        Built outside inference mode, so anchors first made during validation still work in a
        training step that saves them for backward.
        """
        key = (height, width, torch.device(device))
        if key not in self._anchor_cache:
            with torch.inference_mode(False):
                self._anchor_cache[key] = self._make_anchors(height, width, device)
        return self._anchor_cache[key]

    def _make_anchors(self, height: int, width: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        points, strides = [], []
        for s in self.strides:
            ys, xs = torch.meshgrid(
                (torch.arange(height // s, device=device, dtype=torch.float32) + 0.5) * s,
                (torch.arange(width // s, device=device, dtype=torch.float32) + 0.5) * s,
                indexing="ij",
            )
            points.append(torch.stack([xs, ys], dim=-1).reshape(-1, 2))  # (H_k * W_k, 2) row-major
            strides.append(torch.full((xs.numel(),), float(s), device=device))
        return torch.cat(points), torch.cat(strides)

    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise ValueError(f"images must be a floating-point tensor (B, 3, H, W), got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        s = self.strides[-1]
        h, w = images.shape[-2:]
        if h == 0 or w == 0 or h % s or w % s:
            raise ValueError(
                f"images height and width must be positive multiples of the largest stride {s}, got {h}x{w}"
            )

    def forward(self, images: torch.Tensor) -> DenseOutput:
        self._check_images(images)
        b, _, h, w = images.shape
        level_outs = self.head(self.neck(self.backbone(images)))
        cls_maps, dist_maps = zip(*level_outs, strict=True)
        cls_logits, dist_logits = _flatten_levels(cls_maps), _flatten_levels(dist_maps)
        points, strides = self.anchors(h, w, images.device)
        n_bins = self.reg_max + 1
        distances = distribution_integral(dist_logits.view(b, -1, 4, n_bins))  # (B, A, 4) in bins
        distances = distances * strides[:, None]  # pixels
        box_preds = distance2bbox(points, distances)
        return DenseOutput(cls_logits, dist_logits, box_preds, points, strides)
