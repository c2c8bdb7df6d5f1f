"""Adaptive training sample selection (ATSS, Zhang et al. 2020), as used by GFL and TOOD."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_floating
from ..boxes import box_iou
from ..registry import ASSIGNERS
from ._common import (
    _best_gt_of_image,
    _build_result,
    _check_chunk_size,
    _check_inputs,
    _default_chunk,
    _inside_mask,
    _resolve_claims,
    _topk_mask,
)
from .assign_result import AssignResult

_RESOLVES = ("claimants", "all")

__all__ = ["ATSSAssigner"]


@ASSIGNERS.register()
class ATSSAssigner(nn.Module):
    """ATSS assigner (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free
    Detection via Adaptive Training Sample Selection", CVPR 2020).

    Each anchor point carries a square anchor box of side ``octave_base_scale * stride``
    centred on it; anchors are grouped into pyramid levels by their stride value. Per image
    and per valid GT (``gt_mask`` True):

    1. candidates: on every level, the ``topk`` anchors nearest to the GT centre (ties:
       lower anchor index), all levels together;
    2. threshold = mean + std (unbiased, 0 for a single candidate) of the candidates' IoU
       between anchor box and GT;
    3. positive: candidates with IoU >= threshold whose centre lies inside the GT (every
       side distance > ``inside_margin``: 0.01 in mmdetection, 1e-9 in PaddleDetection);
    4. an anchor positive for several GTs goes to the GT with the highest anchor-box IoU —
       among those GTs (``resolve="claimants"``, mmdetection) or among all valid GTs of the
       image (``"all"``, PaddleDetection); ties: lowest GT index. Every other anchor is
       background.

    The score target is the GFL quality: one-hot at the GT's class times the IoU of the
    anchor's *predicted* box with its GT (clamped at 0).

    Args:
        topk: candidates per level and GT.
        octave_base_scale: anchor box side in units of the anchor's stride.
        inside_margin: side distance an anchor centre must exceed to be inside a GT.
        resolve: ``"claimants"`` or ``"all"`` (step 4).
        chunk_size: GT rows processed at a time, or None for a default that keeps one
            (rows, A) temporary at 4M elements. The result does not depend on it.

    Call as :class:`TaskAlignedAssigner`, with ``strides`` (A,) required. Runs without
    gradient and returns an :class:`AssignResult`.
    """

    def __init__(
        self,
        topk: int = 9,
        octave_base_scale: float = 8.0,
        inside_margin: float = 1e-9,
        resolve: str = "claimants",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be a positive int, got {topk!r}")
        if octave_base_scale <= 0:
            raise ValueError(f"octave_base_scale must be > 0, got {octave_base_scale!r}")
        if not inside_margin >= 0:
            raise ValueError(f"inside_margin must be >= 0, got {inside_margin!r}")
        if resolve not in _RESOLVES:
            raise ValueError(f"resolve must be one of {_RESOLVES}, got {resolve!r}")
        _check_chunk_size(chunk_size)
        self.topk, self.octave_base_scale = topk, octave_base_scale
        self.inside_margin, self.resolve, self.chunk_size = inside_margin, resolve, chunk_size

    def extra_repr(self) -> str:
        return (
            f"topk={self.topk}, octave_base_scale={self.octave_base_scale}, "
            f"inside_margin={self.inside_margin}, resolve={self.resolve!r}, chunk_size={self.chunk_size}"
        )

    @torch.no_grad()
    def forward(
        self,
        pred_scores: torch.Tensor,
        pred_bboxes: torch.Tensor,
        anchor_points: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_bboxes: torch.Tensor,
        gt_mask: torch.Tensor,
        strides: torch.Tensor | None = None,
    ) -> AssignResult:
        _check_inputs(pred_scores, pred_bboxes, anchor_points, gt_labels, gt_bboxes, gt_mask)
        b, a, c = pred_scores.shape
        g = gt_labels.shape[1]
        if strides is None:
            raise ValueError(f"ATSSAssigner needs strides of shape (A,) = ({a},): the stride of each anchor")
        if not isinstance(strides, torch.Tensor) or strides.shape != (a,):
            shape = tuple(strides.shape) if isinstance(strides, torch.Tensor) else type(strides).__name__
            raise ValueError(f"strides must have shape (A,) = ({a},), got {shape}")
        if not strides.is_floating_point():
            strides = strides.float()
        check_floating("strides", strides)

        pred_flat = pred_bboxes.detach().float().reshape(b * a, 4)
        points = anchor_points.detach().float()
        strides = strides.detach().float()
        half = (self.octave_base_scale * strides / 2)[:, None]
        anchor_boxes = torch.cat([points - half, points + half], dim=1)  # (A, 4)
        levels = [(strides == s).nonzero().squeeze(1) for s in torch.unique(strides)]  # anchor ids per level
        gt_boxes = gt_bboxes.detach().float()
        gt_boxes_flat = gt_boxes.reshape(b * g, 4)

        valid = gt_mask.reshape(-1).nonzero().squeeze(1)  # (V,) flat GT rows b * G + g
        if a == 0:  # no anchor: nothing to assign
            valid = valid[:0]
        chunk = _default_chunk(a, self.chunk_size)
        claims = [
            self._claim(valid[i : i + chunk], g, a, points, anchor_boxes, levels, gt_boxes_flat)
            for i in range(0, valid.numel(), chunk)
        ]
        if claims:
            slot, gt_flat, iou = (torch.cat(parts) for parts in zip(*claims, strict=True))
        else:
            slot = gt_flat = valid  # empty
            iou = pred_flat.new_zeros(0)

        if self.resolve == "all":  # contested anchors go to the best anchor-box IoU of all GTs
            contested = torch.bincount(slot, minlength=b * a) > 1
            single = ~contested[slot]
            won_slot = contested.nonzero().squeeze(1)
            won_gt = _best_gt_of_image(anchor_boxes[won_slot % a], won_slot // a, gt_boxes, valid)
            slot, gt_flat = torch.cat([slot[single], won_slot]), torch.cat([gt_flat[single], won_gt])
        else:
            win = _resolve_claims(slot, gt_flat, iou, b * a)
            slot, gt_flat = slot[win], gt_flat[win]
        quality = box_iou(pred_flat[slot], gt_boxes_flat[gt_flat], aligned=True).clamp(min=0)
        return _build_result(slot, gt_flat, quality, gt_labels, gt_boxes, a, c)

    def _claim(
        self,
        gt_rows: torch.Tensor,
        num_gt: int,
        num_anchors: int,
        points: torch.Tensor,
        anchor_boxes: torch.Tensor,
        levels: list[torch.Tensor],
        gt_boxes_flat: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 1-3 for flat GT rows (Gc,): (slot, gt_flat, anchor IoU) of the positives."""
        boxes = gt_boxes_flat[gt_rows]  # (Gc, 4)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (Gc, 2)
        candidates = []
        for ids in levels:
            dist2 = (points[ids][None] - centres[:, None]).square().sum(-1)  # (Gc, A_l)
            k = min(self.topk, ids.numel())
            nearest = _topk_mask(dist2, k, largest=False).nonzero()[:, 1].view(-1, k)  # (Gc, k), row-major
            candidates.append(ids[nearest])
        cand = torch.cat(candidates, dim=1)  # (Gc, K) anchor ids
        iou = box_iou(anchor_boxes[cand], boxes[:, None], aligned=True)  # (Gc, K)
        # threshold in float64: the sum of K float32 values is then exact, so equal IoUs give
        # std 0 and threshold == IoU whatever the summation order
        iou64 = iou.double()
        correction = 1 if cand.shape[1] > 1 else 0
        threshold = iou64.mean(1, keepdim=True) + iou64.std(1, correction=correction, keepdim=True)
        positive = (iou64 >= threshold) & _inside_mask(points[cand], boxes[:, None], self.inside_margin)
        local, j = positive.nonzero(as_tuple=True)
        gt_flat = gt_rows[local]
        slot = torch.div(gt_flat, num_gt, rounding_mode="floor") * num_anchors + cand[local, j]
        return slot, gt_flat, iou[local, j]
