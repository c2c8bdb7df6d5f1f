"""Dense anchor-free heads with distribution (DFL) box regression.

Both heads map L neck levels of ``in_channels`` channels to, per level,
``(cls_logits (B, C, H, W), dist_logits (B, 4 * (reg_max + 1), H, W))``; the distance
distribution channels are side-major (l, t, r, b), each ``reg_max + 1`` bins in units of the
level's stride (Li et al., "Generalized Focal Loss", NeurIPS 2020).

* :class:`TOODHead` — the task-aligned head (T-head) of TOOD (Feng et al., ICCV 2021).
* :class:`DecoupledHead` — separate per-level classification and regression branches
  (YOLOv8 / PP-YOLOE style).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import ConvBNAct

__all__ = ["DecoupledHead", "TOODHead", "aligned_logits", "sample_sides"]

# Initial expected distance per side, in strides: boxes start ~5 cells wide, the scale at
# which objects are usually assigned to a level (FCOS/ATSS), so the first task-alignment
# overlaps are meaningful.
_INIT_DISTANCE = 2.5


def _init_predictors(cls_conv: nn.Conv2d, reg_conv: nn.Conv2d, n_bins: int, prior_prob: float = 0.01) -> None:
    """Final convs: weights N(0, 0.01); cls bias -log((1 - p) / p) so sigmoid starts at p;
    dist bias b_k = k * log(r) per side, a geometric distribution whose mean r / (1 - r) is
    m = min(_INIT_DISTANCE, reg_max / 2) bins (up to truncation at reg_max)."""
    for conv in (cls_conv, reg_conv):
        nn.init.normal_(conv.weight, std=0.01)
    nn.init.constant_(cls_conv.bias, -math.log((1 - prior_prob) / prior_prob))
    mean = min(_INIT_DISTANCE, (n_bins - 1) / 2)
    log_ratio = math.log(mean / (1 + mean))
    with torch.no_grad():
        reg_conv.bias.copy_((torch.arange(n_bins, dtype=torch.float32) * log_ratio).repeat(4))


class DecoupledHead(nn.Module):
    """YOLOv8 / PP-YOLOE-like decoupled head, one set of weights per level.

    cls: ConvBNAct 3x3 -> ConvBNAct 3x3 -> Conv 1x1 (C);
    reg: ConvBNAct 3x3 -> ConvBNAct 3x3 -> Conv 1x1 (4 * (reg_max + 1)).
    """

    def __init__(self, in_channels: int, num_levels: int, num_classes: int, reg_max: int = 16) -> None:
        super().__init__()
        n_bins = reg_max + 1

        def branch(out: int) -> nn.Sequential:
            return nn.Sequential(
                ConvBNAct(in_channels, in_channels, 3),
                ConvBNAct(in_channels, in_channels, 3),
                nn.Conv2d(in_channels, out, 1),
            )

        self.cls_branches = nn.ModuleList(branch(num_classes) for _ in range(num_levels))
        self.reg_branches = nn.ModuleList(branch(4 * n_bins) for _ in range(num_levels))
        for cls_branch, reg_branch in zip(self.cls_branches, self.reg_branches, strict=True):
            _init_predictors(cls_branch[-1], reg_branch[-1], n_bins)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            (cls_branch(x), reg_branch(x))
            for x, cls_branch, reg_branch in zip(feats, self.cls_branches, self.reg_branches, strict=True)
        ]


def _conv_gn_relu(c_in: int, c_out: int, kernel_size: int) -> nn.Sequential:
    """TOOD's head block: Conv (no bias) -> GroupNorm(gcd(32, c_out) groups) -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
        nn.GroupNorm(math.gcd(32, c_out), c_out),
        nn.ReLU(inplace=True),
    )


class _TaskDecomposition(nn.Module):
    """TOOD's layer attention: task-specific features from the stacked interactive features.

    w = sigmoid(conv(relu(conv(avgpool(X)))))         (B, L)   one weight per stacked layer
    Y = relu(GN(conv1x1(concat_k w_k * X_k)))         (B, c, H, W)
    """

    def __init__(self, channels: int, num_layers: int, la_down_rate: int = 8) -> None:
        super().__init__()
        in_channels = channels * num_layers
        hidden = max(1, in_channels // la_down_rate)
        self.num_layers = num_layers
        self.layer_attention = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_layers, 1),
            nn.Sigmoid(),
        )
        self.reduction = _conv_gn_relu(in_channels, channels, 1)
        for conv in (self.layer_attention[0], self.layer_attention[2]):
            nn.init.normal_(conv.weight, std=0.001)
            nn.init.zeros_(conv.bias)

    def forward(self, feat: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        b, _, h, w = feat.shape
        weight = self.layer_attention(pooled)  # (B, L, 1, 1)
        feat = feat.view(b, self.num_layers, -1, h, w) * weight.unsqueeze(2)  # (B, L, c, H, W)
        return self.reduction(feat.view(b, -1, h, w))


def aligned_logits(cls_logits: torch.Tensor, prob_logits: torch.Tensor) -> torch.Tensor:
    """Logit of TOOD's aligned score p = sqrt(sigmoid(x) * sigmoid(z)), computed in float32.

    log p = (logsigmoid(x) + logsigmoid(z)) / 2,
    logit(p) = log p - log(1 - p) = log p - log(-expm1(log p)).
    log p is clamped to <= -eps (p < 1 - eps, logit < ~16) so the result stays finite.
    (B, C, H, W), (B, 1, H, W) -> (B, C, H, W).
    """
    log_p = 0.5 * (F.logsigmoid(cls_logits.float()) + F.logsigmoid(prob_logits.float()))
    log_p = log_p.clamp(max=-torch.finfo(torch.float32).eps)
    return log_p - torch.log(-torch.expm1(log_p))


def sample_sides(dist_logits: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Resample each side's distance distribution at its own learned offset (TOOD's TAP).

    dist_logits (B, 4 * n_bins, H, W); offsets (B, 8, H, W) = (dx, dy) per side l, t, r, b in
    cells. Side k at cell (i, j) takes the bilinear interpolation of side k's logits at
    (i + dy_k, j + dx_k), clamped to the border. Zero offsets give the input back.
    """
    b, c, h, w = dist_logits.shape
    dist_logits = dist_logits.float().reshape(b * 4, c // 4, h, w)
    offsets = offsets.float().reshape(b * 4, 2, h, w).permute(0, 2, 3, 1)  # (B*4, H, W, 2)
    ys, xs = torch.meshgrid(
        torch.arange(h, device=offsets.device, dtype=torch.float32),
        torch.arange(w, device=offsets.device, dtype=torch.float32),
        indexing="ij",
    )
    # (B*4, H, W, 2) sampling positions (x, y) in cells
    cells = torch.stack([xs, ys], dim=-1) + offsets
    size = torch.tensor([w, h], device=offsets.device, dtype=torch.float32)
    grid = (2 * cells + 1) / size - 1  # cell centres -> [-1, 1] with align_corners=False
    sampled = F.grid_sample(dist_logits, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return sampled.reshape(b, c, h, w)


class TOODHead(nn.Module):
    """Compact task-aligned head (T-head) of TOOD, shared across levels.

    Per level: ``stacked_convs`` shared 3x3 conv-GN-ReLU layers give task-interactive features
    X_1..X_L; two task decompositions (layer attention) give cls and reg features; the
    task-aligned predictor (TAP) then
      * classification: logits x = conv3x3(cls_feat), a class-agnostic probability map
        z = conv3x3(relu(conv1x1(X))); score = sqrt(sigmoid(x) * sigmoid(z)), returned as logits;
      * regression: distance-distribution logits conv3x3(reg_feat), each side resampled at a
        learned offset o = conv3x3(relu(conv1x1(X))) (8 channels: (dx, dy) per side).

    Simplifications against the paper / mmdetection (``feat_channels=256, stacked_convs=6``):
      * width and depth come from the model size (e.g. 64 channels, 3 convs for size n);
      * regression predicts DFL distributions (GFL) instead of exp(conv) * scale distances, so
        there is no per-level Scale; the TAP offset resamples each side's distribution logits
        (bilinear, border padding, one grid_sample) instead of deform-sampling the decoded box
        edges, so ``box_preds`` stay the integral of ``box_dist_logits``;
      * one anchor point per location (TOOD's anchor-free mode); the ATSS warm-up belongs to the
        assigner / criterion, not the head.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        reg_max: int = 16,
        stacked_convs: int = 6,
        la_down_rate: int = 8,
    ) -> None:
        super().__init__()
        n_bins = reg_max + 1
        stacked_channels = in_channels * stacked_convs
        hidden = max(1, in_channels // 4)
        self.inter_convs = nn.ModuleList(_conv_gn_relu(in_channels, in_channels, 3) for _ in range(stacked_convs))
        self.cls_decomp = _TaskDecomposition(in_channels, stacked_convs, la_down_rate)
        self.reg_decomp = _TaskDecomposition(in_channels, stacked_convs, la_down_rate)
        self.cls_out = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.reg_out = nn.Conv2d(in_channels, 4 * n_bins, 3, padding=1)
        self.cls_prob = nn.Sequential(
            nn.Conv2d(stacked_channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 3, padding=1),
        )
        self.reg_offset = nn.Sequential(
            nn.Conv2d(stacked_channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 4 * 2, 3, padding=1),
        )
        _init_predictors(self.cls_out, self.reg_out, n_bins)
        # TOOD: the probability map starts at the same prior, the offsets near zero.
        nn.init.normal_(self.cls_prob[-1].weight, std=0.01)
        nn.init.constant_(self.cls_prob[-1].bias, self.cls_out.bias[0].item())
        nn.init.normal_(self.reg_offset[-1].weight, std=0.001)
        nn.init.zeros_(self.reg_offset[-1].bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self._forward_level(x) for x in feats]

    def _forward_level(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inter = []
        for conv in self.inter_convs:
            x = conv(x)
            inter.append(x)
        feat = torch.cat(inter, dim=1)  # (B, L * c, H, W)
        pooled = F.adaptive_avg_pool2d(feat, 1)  # (B, L * c, 1, 1)
        cls_logits = aligned_logits(self.cls_out(self.cls_decomp(feat, pooled)), self.cls_prob(feat))
        dist_logits = sample_sides(self.reg_out(self.reg_decomp(feat, pooled)), self.reg_offset(feat))
        return cls_logits, dist_logits
