"""Task-aligned assignment (TOOD) in the variants of mmdetection, PaddleDetection and ultralytics."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

from ..boxes import box_iou
from ..registry import ASSIGNERS
from ._common import (
    _best_gt_of_image,
    _build_result,
    _check_chunk_size,
    _check_inputs,
    _inside_mask,
    _resolve_claims,
)
from .assign_result import AssignResult

__all__ = ["TaskAlignedAssigner"]

_IOU_TYPES = ("iou", "ciou")
_ORDERS = ("inside_first", "topk_first")
_RESOLVES = ("claimants", "inside", "all")
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


def _grow_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """(N, 4) ``xyxy`` boxes with every side shorter than ``min_size`` set to it about the centre.

    Computed through centre and size, as ultralytics 8.4 does for its inside-box test.
    """
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = boxes[:, 2:] - boxes[:, :2]
    size = torch.where(size < min_size, torch.full_like(size, min_size), size)
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def _reach_groups(points: torch.Tensor, pred_boxes: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
    """Anchors grouped by how far their predicted boxes reach, for the top-k-first search.

    An anchor's reach is the largest distance from its point to a side of its predicted box
    in any image; a predicted box can overlap a GT only if the anchor point lies within the
    GT grown by the reach. Anchors are grouped by ``floor(log2(reach + 1))`` so that each
    group is searched with a margin close to its own reach.

    Args:
        points: (A, 2); pred_boxes: (B, A, 4) xyxy.

    Returns:
        [(anchor ids (A_g,), margin)] with margin = the group's largest reach + 1 px (slack
        for the rounding of the grown boxes).
    """
    reach = torch.cat([points - pred_boxes[..., :2], pred_boxes[..., 2:] - points], dim=-1)  # (B, A, 4)
    reach = reach.amax(dim=(0, 2)).clamp(min=0) if reach.numel() else points.new_zeros(points.shape[0])  # (A,)
    group = torch.log2(reach + 1).floor().long()
    groups = []
    for value in torch.unique(group).tolist():
        ids = (group == value).nonzero().squeeze(1)
        groups.append((ids, float(reach[ids].max()) + 1.0))
    return groups


class _Batch(NamedTuple):
    """The flattened inputs of one call: B images, A anchors, G GT rows (V valid)."""

    batch: int
    num_anchors: int
    num_gt: int
    scores: torch.Tensor  # (B * A, C) probabilities
    pred: torch.Tensor  # (B * A, 4) predicted boxes
    labels: torch.Tensor  # (B * G,) long
    gt: torch.Tensor  # (B * G, 4) GT boxes
    points: torch.Tensor  # (A, 2)
    valid: torch.Tensor  # (V,) long, the valid rows b * G + g, ascending

    def slot_of(self, rows: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """Anchor slots ``b * A + a`` of GT rows ``b * G + g`` and anchors ``a``."""
        return torch.div(rows, self.num_gt, rounding_mode="floor") * self.num_anchors + anchor


@ASSIGNERS.register()
class TaskAlignedAssigner(nn.Module):
    """Task-aligned assigner (TOOD, Feng et al. 2021) in the variants of the reference codes.

    Per image and per valid GT (``gt_mask`` True):

    1. inside: an anchor lies inside a GT when every side distance > ``inside_margin``;
       with ``min_gt_size > 0`` every GT side shorter than it is first grown to that length
       about the box centre, for this test only (ultralytics 8.4 uses its second stride);
    2. t = s**alpha * overlap**beta, with s the anchor's predicted probability for the GT's
       class and overlap the IoU (``iou_type="iou"``) or the CIoU clamped at 0
       (``"ciou"``) between the anchor's predicted box and the GT;
    3. claims — ``order="inside_first"``: the GT claims its ``topk`` inside anchors with
       the largest t, keeping t > 0 (PP-YOLOE, YOLOv8); ``"topk_first"``: its ``topk``
       anchors with the largest t over all anchors, then only those inside with t > 0
       (mmdetection's TOOD). Ties go to the lower anchor index;
    4. an anchor claimed by several GTs goes to — ``resolve="claimants"``: the claimant with
       the highest overlap (mmdetection); ``"inside"``: the GT with the highest overlap
       among all GTs that contain it (step 1), claimant or not (ultralytics); ``"all"``:
       the GT with the highest overlap among all valid GTs of the image (PaddleDetection).
       Ties go to the lowest GT index; every other anchor is background;
    5. score target: t * max_overlap / (max_t + eps) at the GT's class, the maxima over the
       anchors the GT holds after step 4.

    Padding rows never claim or win an anchor; with no valid GT every anchor is background.

    Memory and time: the dense (G, A) tensors are never formed. Anchors are sorted by x and
    by y once, and each GT tests only the anchors of its narrower x- or y-strip (found by
    binary search). ``"topk_first"`` searches the strips of the GT grown by how far the
    predicted boxes reach (an anchor whose predicted box misses the GT has t = 0); the
    ``"inside"`` resolution walks the inside pairs a second time and scores those of the
    contested anchors only, and ``"all"`` scores each contested anchor against the GTs of
    its image in bounded chunks.
    GT rows are processed in chunks of at most ~2M tested pairs (and at most ``chunk_size``
    rows if given); only the top-k claims of each GT outlive its chunk. The result does not
    depend on the chunking.

    Args:
        topk: anchors claimed per GT.
        alpha: exponent of the classification score.
        beta: exponent of the overlap (> 0 with ``order="topk_first"``).
        eps: denominator guard of the normalisation (mmdetection's TOOD uses 1e-7).
        iou_type: ``"iou"`` or ``"ciou"`` (clamped at 0).
        order: ``"inside_first"`` or ``"topk_first"`` (step 3).
        resolve: ``"claimants"``, ``"inside"`` or ``"all"`` (step 4).
        inside_margin: side distance an anchor must exceed to be inside (1e-9 ultralytics
            and PaddleDetection, 0.01 mmdetection).
        min_gt_size: GT sides shorter than this are grown to it for the inside test (0: off).
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
        order: str = "inside_first",
        resolve: str = "claimants",
        inside_margin: float = 1e-9,
        min_gt_size: float = 0.0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be a positive int, got {topk!r}")
        if iou_type not in _IOU_TYPES:
            raise ValueError(f"iou_type must be one of {_IOU_TYPES}, got {iou_type!r}")
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
        if resolve not in _RESOLVES:
            raise ValueError(f"resolve must be one of {_RESOLVES}, got {resolve!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        if not inside_margin >= 0:
            raise ValueError(f"inside_margin must be >= 0, got {inside_margin!r}")
        if not min_gt_size >= 0:
            raise ValueError(f"min_gt_size must be >= 0, got {min_gt_size!r}")
        if order == "topk_first" and not beta > 0:
            raise ValueError(f"order='topk_first' needs beta > 0 (a missed GT must give t = 0), got beta={beta!r}")
        _check_chunk_size(chunk_size)
        self.topk, self.alpha, self.beta, self.eps = topk, alpha, beta, eps
        self.iou_type, self.order, self.resolve = iou_type, order, resolve
        self.inside_margin, self.min_gt_size, self.chunk_size = inside_margin, min_gt_size, chunk_size

    def extra_repr(self) -> str:
        return (
            f"topk={self.topk}, alpha={self.alpha}, beta={self.beta}, eps={self.eps}, "
            f"iou_type={self.iou_type!r}, order={self.order!r}, resolve={self.resolve!r}, "
            f"inside_margin={self.inside_margin}, min_gt_size={self.min_gt_size}, chunk_size={self.chunk_size}"
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
        gt_boxes = gt_bboxes.detach().float()
        x = _Batch(
            b,
            a,
            g,
            scores=pred_scores.detach().float().reshape(b * a, c),
            pred=pred_bboxes.detach().float().reshape(b * a, 4),
            labels=gt_labels.reshape(-1).long(),
            gt=gt_boxes.reshape(b * g, 4),
            points=anchor_points.detach().float(),
            valid=gt_mask.reshape(-1).nonzero().squeeze(1),
        )
        test_boxes = x.gt[x.valid]  # (V, 4) the boxes of the inside test
        if self.min_gt_size > 0:
            test_boxes = _grow_boxes(test_boxes, self.min_gt_size)

        slot, gt_flat, overlap, metric = self._claims(x, test_boxes)
        slot, gt_flat, overlap, metric = self._resolve(x, test_boxes, slot, gt_flat, overlap, metric)
        # normalisation over the anchors each GT holds: t * max_overlap / (max_t + eps)
        max_metric = metric.new_zeros(b * g).scatter_reduce(0, gt_flat, metric, "amax")
        max_overlap = overlap.new_zeros(b * g).scatter_reduce(0, gt_flat, overlap, "amax")
        quality = metric * max_overlap[gt_flat] / (max_metric[gt_flat] + self.eps)
        return _build_result(slot, gt_flat, quality, gt_labels, gt_boxes, a, c)

    def _score(self, x: _Batch, slot: torch.Tensor, gt_flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(overlap, t) of (P,) pairs of anchor slots ``b * A + a`` and GT rows ``b * G + g``."""
        overlap = box_iou(
            x.pred.index_select(0, slot),
            x.gt.index_select(0, gt_flat),
            mode=self.iou_type,
            aligned=True,
        )
        if self.iou_type == "ciou":
            overlap = overlap.clamp(min=0)
        num_classes = x.scores.shape[1]
        cls = x.labels.index_select(0, gt_flat)
        score = x.scores.view(-1).index_select(0, slot * num_classes + cls)  # (P,)
        return overlap, _alignment_metric(score, overlap, self.alpha, self.beta)

    def _top_claims(self, x: _Batch, rows: torch.Tensor, anchor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Steps 2-3 on (P,) candidate pairs: (slot, gt_flat, overlap, t) of the top-k with t > 0."""
        slot = x.slot_of(rows, anchor)
        overlap, metric = self._score(x, slot, rows)
        positive = metric > 0
        slot, rows, overlap, metric = (x[positive] for x in (slot, rows, overlap, metric))
        keep = _segment_topk(rows, slot, metric, self.topk)
        return slot[keep], rows[keep], overlap[keep], metric[keep]

    def _claims(self, x: _Batch, test_boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Steps 1-3: the claims (slot, gt_flat, overlap, t), each (P,)."""
        valid = x.valid
        empty = valid.new_zeros(0), valid.new_zeros(0), x.pred.new_zeros(0), x.pred.new_zeros(0)
        if self.order == "inside_first":
            pairs = _inside_pairs(x.points, test_boxes, self.inside_margin, self.chunk_size, _PAIR_BUDGET)
            claims = [self._top_claims(x, valid[start:][local], anchor) for start, local, anchor in pairs]
            return tuple(torch.cat(parts) for parts in zip(*claims, strict=True)) if claims else empty
        # top-k first: every anchor whose predicted box can overlap the GT is a candidate
        a = x.num_anchors
        claims = []
        for ids, margin in _reach_groups(x.points, x.pred.view(x.batch, a, 4)):
            reach_boxes = x.gt[valid] + x.pred.new_tensor([-margin, -margin, margin, margin])
            pairs = _inside_pairs(x.points[ids], reach_boxes, 0.0, self.chunk_size, _PAIR_BUDGET)
            claims += [self._top_claims(x, valid[start:][local], ids[point]) for start, local, point in pairs]
        if not claims:
            return empty
        slot, gt_flat, overlap, metric = (torch.cat(parts) for parts in zip(*claims, strict=True))
        keep = _segment_topk(gt_flat, slot, metric, self.topk)  # the top-k over all groups
        slot, gt_flat, overlap, metric = slot[keep], gt_flat[keep], overlap[keep], metric[keep]
        row = torch.searchsorted(valid, gt_flat)  # position of each claim's GT in ``valid``
        anchor = slot % a
        inside = _inside_mask(x.points.index_select(0, anchor), test_boxes.index_select(0, row), self.inside_margin)
        return slot[inside], gt_flat[inside], overlap[inside], metric[inside]

    def _resolve(
        self,
        x: _Batch,
        test_boxes: torch.Tensor,
        slot: torch.Tensor,
        gt_flat: torch.Tensor,
        overlap: torch.Tensor,
        metric: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step 4: one (slot, gt_flat, overlap, t) per foreground anchor."""
        b, a = x.batch, x.num_anchors
        if self.resolve == "claimants":
            win = _resolve_claims(slot, gt_flat, overlap, b * a)
            return slot[win], gt_flat[win], overlap[win], metric[win]
        claim_count = torch.bincount(slot, minlength=b * a)  # (B * A,)
        contested = claim_count > 1
        single = ~contested[slot]
        if not contested.any():
            return slot, gt_flat, overlap, metric
        if self.resolve == "inside":
            # every (GT, contested anchor) pair with the anchor inside the GT
            pairs = _inside_pairs(x.points, test_boxes, self.inside_margin, self.chunk_size, _PAIR_BUDGET)
            rival_slot, rival_gt = [], []
            for start, local, anchor in pairs:
                rows = x.valid[start:][local]
                pair_slot = x.slot_of(rows, anchor)
                keep = contested[pair_slot]
                rival_slot.append(pair_slot[keep])
                rival_gt.append(rows[keep])
            rival_slot, rival_gt = torch.cat(rival_slot), torch.cat(rival_gt)
            rival_overlap, _ = self._score(x, rival_slot, rival_gt)
            win = _resolve_claims(rival_slot, rival_gt, rival_overlap, b * a)
            won_slot, won_gt = rival_slot[win], rival_gt[win]
        else:
            won_slot = contested.nonzero().squeeze(1)
            won_gt = _best_gt_of_image(x.pred[won_slot], won_slot // a, x.gt.view(b, -1, 4), x.valid, self.iou_type)
        won_overlap, won_metric = self._score(x, won_slot, won_gt)
        return (
            torch.cat([slot[single], won_slot]),
            torch.cat([gt_flat[single], won_gt]),
            torch.cat([overlap[single], won_overlap]),
            torch.cat([metric[single], won_metric]),
        )
