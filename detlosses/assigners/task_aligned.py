"""Task-aligned assignment (TOOD), in the candidate-first form of PP-YOLOE and YOLOv8."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import nn

from ..boxes import box_iou
from ..registry import ASSIGNERS
from .assign_result import (
    AssignResult,
    _build_result,
    _check_chunk_size,
    _check_inputs,
    _inside_mask,
    _resolve_claims,
)

__all__ = ["TaskAlignedAssigner"]

_IOU_TYPES = ("iou", "ciou")
# (GT, anchor) pairs tested per chunk: the ~10 int64/float per-pair temporaries stay < 200 MiB
_PAIR_BUDGET = 1 << 21


def _alignment_metric(score: torch.Tensor, overlap: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """t = score**alpha * overlap**beta, elementwise, float32.

    Evaluated in float64 and rounded once: float32 ``pow`` on CPU takes a vectorised path
    for most elements and a scalar one for the tail, which can differ by one ulp, so the
    float32 result would depend on where a pair sits in the tensor (and chunked assignment
    would not reproduce unchunked assignment bit for bit).
    """
    return (score.double().pow(alpha) * overlap.double().pow(beta)).float()


def _inside_pairs(
    points: torch.Tensor, boxes: torch.Tensor, eps: float, chunk_size: int | None, budget: int
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """All (box, point) pairs with the point strictly inside the box, a chunk of boxes at a time.

    Points are sorted by x and by y once; a box's candidates lie in the strip of points with
    x1 < x < x2 (a contiguous range of the x order, found by binary search), or in the
    y1 < y < y2 strip, whichever is shorter. Only the strip's pairs get the exact test
    (:func:`_inside_mask`, every side > ``eps`` >= 0), so the pairs are those of the dense
    test. A chunk ends after ``chunk_size`` boxes or once its strips hold ``budget`` pairs.

    Args:
        points: (A, 2); boxes: (N, 4) xyxy.

    Yields:
        (start, local, point): the chunk's first box, and (P,) long pairs with ``local``
        indexing ``boxes[start:]`` and ``point`` indexing ``points``.
    """
    num_points = points.shape[0]
    orders, los, counts = [], [], []
    for axis in (0, 1):
        coords, order = torch.sort(points[:, axis], stable=True)
        lo = torch.searchsorted(coords, boxes[:, axis].contiguous(), right=True)  # first > x1
        hi = torch.searchsorted(coords, boxes[:, axis + 2].contiguous())  # first >= x2
        orders.append(order)
        los.append(lo + axis * num_points)
        counts.append((hi - lo).clamp(min=0))
    order = torch.cat(orders)  # (2A,): positions [0, A) follow x, [A, 2A) follow y
    table = points.index_select(0, order)  # (2A, 2) the points in that order
    use_x = counts[0] <= counts[1]  # (N,)
    count = torch.where(use_x, *counts)
    first = count.cumsum(0) - count  # (N,) offset of each box's strip in the pair list
    base = torch.where(use_x, *los) - first  # pair j of box i sits at table[base[i] + j]
    index = torch.arange(boxes.shape[0], device=boxes.device)
    new_chunk = torch.diff(first // budget, prepend=first.new_ones(1).neg()) != 0
    if chunk_size is not None:
        new_chunk |= index % chunk_size == 0
    bounds = [*index[new_chunk].tolist(), boxes.shape[0]]
    for start, stop in itertools.pairwise(bounds):
        local = torch.repeat_interleave(index[: stop - start], count[start:stop])  # (P,)
        pos = base[start:stop].index_select(0, local)
        pos += torch.arange(local.numel(), device=boxes.device) + first[start]
        box = boxes[start:stop].index_select(0, local)  # (P, 4)
        inside = _inside_mask(table.index_select(0, pos), box, eps)
        pos, local = pos[inside], local[inside]
        yield start, local, order.index_select(0, pos)


def _segment_topk(segment: torch.Tensor, index: torch.Tensor, value: torch.Tensor, k: int) -> torch.Tensor:
    """Per segment, the ``k`` largest values; ties go to the lower ``index``.

    Args:
        segment: (P,) long segment id; index: (P,) long tie-break key, unique per segment;
        value: (P,) float32, > 0.

    Returns:
        (P,) bool mask of the kept elements.
    """
    # order by (segment, -value, index): a stable sort on index, then a stable sort on one
    # int64 key for (segment, -value) — bit patterns of positive float32 sort like the values
    order = torch.argsort(index, stable=True)
    key = segment * 2**31 + (2**31 - 1 - value.view(torch.int32).long())
    order = order.index_select(0, torch.argsort(key.index_select(0, order), stable=True))
    _, counts = torch.unique_consecutive(segment.index_select(0, order), return_counts=True)
    starts = torch.repeat_interleave(counts.cumsum(0) - counts, counts)  # (P,) segment start
    rank = torch.arange(order.numel(), device=value.device) - starts
    keep = torch.zeros_like(segment, dtype=torch.bool)
    keep[order[rank < k]] = True
    return keep


@ASSIGNERS.register()
class TaskAlignedAssigner(nn.Module):
    """Task-aligned assigner (TOOD, Feng et al. 2021) with candidate-first selection.

    PP-YOLOE (topk 13, alpha 1, beta 6, IoU) and YOLOv8 (topk 10, alpha 0.5, beta 6, CIoU)
    use this form. Per image and per valid GT (``gt_mask`` True):

    1. candidates: anchors whose centre lies strictly inside the GT (every side > ``eps``);
    2. t = s**alpha * overlap**beta, with s the anchor's predicted probability for the GT's
       class and overlap the IoU (``iou_type="iou"``) or the CIoU clamped at 0
       (``"ciou"``) between the anchor's predicted box and the GT;
    3. the GT claims its ``topk`` candidates with the largest t (ties: lower anchor
       index), keeping only t > 0;
    4. an anchor claimed by several GTs goes to the claimant with the highest overlap
       (ties: lowest GT index); every other anchor is background;
    5. score target: t * max_overlap / (max_t + eps) at the GT's class, where the maxima run
       over the anchors the GT holds after step 4 (as in PP-YOLOE and YOLOv8).

    Padding rows never claim an anchor; with no valid GT every anchor is background.

    Memory and time: the dense (G, A) inside-box test is never formed. Anchors are sorted
    by x and by y once, each GT tests only the anchors of its narrower x- or y-strip (found
    by binary search), and only the candidate pairs are gathered and scored. GT rows are
    processed in chunks of at most ~2M tested pairs (and at most ``chunk_size`` rows if
    given); only the top-k claims of each GT outlive its chunk. The result does not depend
    on the chunking.

    Args:
        topk: anchors claimed per GT.
        alpha: exponent of the classification score.
        beta: exponent of the overlap.
        eps: inside-box margin and denominator guard of the normalisation.
        iou_type: ``"iou"`` or ``"ciou"`` (clamped at 0).
        chunk_size: at most this many GT rows per chunk, or None (the pair budget alone).

    Call: ``assigner(pred_scores (B, A, C) probabilities, pred_bboxes (B, A, 4) xyxy,
    anchor_points (A, 2), gt_labels (B, G) long, gt_bboxes (B, G, 4) xyxy, gt_mask (B, G)
    bool, strides=None)`` -> :class:`AssignResult`. ``strides`` is accepted for a common
    signature with :class:`ATSSAssigner` and ignored. Runs without gradient.
    """

    def __init__(
        self,
        topk: int = 13,
        alpha: float = 1.0,
        beta: float = 6.0,
        eps: float = 1e-9,
        iou_type: str = "iou",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be a positive int, got {topk!r}")
        if iou_type not in _IOU_TYPES:
            raise ValueError(f"iou_type must be one of {_IOU_TYPES}, got {iou_type!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        _check_chunk_size(chunk_size)
        self.topk, self.alpha, self.beta, self.eps = topk, alpha, beta, eps
        self.iou_type, self.chunk_size = iou_type, chunk_size

    def extra_repr(self) -> str:
        return (
            f"topk={self.topk}, alpha={self.alpha}, beta={self.beta}, eps={self.eps}, "
            f"iou_type={self.iou_type!r}, chunk_size={self.chunk_size}"
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
        scores_flat = pred_scores.detach().float().reshape(b * a, c)
        pred_flat = pred_bboxes.detach().float().reshape(b * a, 4)
        points = anchor_points.detach().float()
        gt_boxes = gt_bboxes.detach().float()
        gt_boxes_flat = gt_boxes.reshape(b * g, 4)
        labels_flat = gt_labels.reshape(-1).long()

        valid = gt_mask.reshape(-1).nonzero().squeeze(1)  # (V,) flat GT rows b * G + g
        pairs = _inside_pairs(points, gt_boxes_flat[valid], self.eps, self.chunk_size, _PAIR_BUDGET)
        claims = [
            self._claim(
                valid[start:][local],
                anchor,
                g,
                a,
                gt_boxes_flat,
                labels_flat,
                scores_flat,
                pred_flat,
            )
            for start, local, anchor in pairs
        ]
        if claims:
            slot, gt_flat, overlap, metric = (torch.cat(parts) for parts in zip(*claims, strict=True))
        else:
            slot = gt_flat = valid  # empty
            overlap = metric = pred_flat.new_zeros(0)

        win = _resolve_claims(slot, gt_flat, overlap, b * a)
        slot, gt_flat, overlap, metric = slot[win], gt_flat[win], overlap[win], metric[win]
        # normalisation over the anchors each GT holds: t * max_overlap / (max_t + eps)
        max_metric = metric.new_zeros(b * g).scatter_reduce(0, gt_flat, metric, "amax")
        max_overlap = overlap.new_zeros(b * g).scatter_reduce(0, gt_flat, overlap, "amax")
        quality = metric * max_overlap[gt_flat] / (max_metric[gt_flat] + self.eps)
        return _build_result(slot, gt_flat, quality, gt_labels, gt_boxes, a, c)

    def _claim(
        self,
        gt_flat: torch.Tensor,
        anchor: torch.Tensor,
        num_gt: int,
        num_anchors: int,
        gt_boxes_flat: torch.Tensor,
        labels_flat: torch.Tensor,
        scores_flat: torch.Tensor,
        pred_flat: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 2-3 for candidate pairs (P,): (slot, gt_flat, overlap, t) of the claims."""
        slot = torch.div(gt_flat, num_gt, rounding_mode="floor") * num_anchors + anchor  # b * A + a
        gt_box = gt_boxes_flat.index_select(0, gt_flat)  # (P, 4)
        overlap = box_iou(pred_flat.index_select(0, slot), gt_box, mode=self.iou_type, aligned=True)
        if self.iou_type == "ciou":
            overlap = overlap.clamp(min=0)
        num_classes = scores_flat.shape[1]
        cls = labels_flat.index_select(0, gt_flat)
        score = scores_flat.view(-1).index_select(0, slot * num_classes + cls)  # (P,)
        metric = _alignment_metric(score, overlap, self.alpha, self.beta)
        positive = metric > 0
        slot, gt_flat, overlap, metric = (x[positive] for x in (slot, gt_flat, overlap, metric))
        keep = _segment_topk(gt_flat, slot, metric, self.topk)
        return slot[keep], gt_flat[keep], overlap[keep], metric[keep]
