"""Task-aligned assignment (TOOD) in the variants of mmdetection, PaddleDetection and ultralytics."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
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
    _inside_sides,
    _resolve_claims,
)
from .assign_result import AssignResult

__all__ = ["TaskAlignedAssigner"]

_IOU_TYPES = ("iou", "ciou")
_ORDERS = ("inside_first", "topk_first")
_RESOLVES = ("claimants", "inside", "all")
# (GT, anchor) pairs tested per chunk: the ~10 int64/float per-pair temporaries stay at a few MiB
# each. Larger chunks are slower on CPU (tood at 4 x 5000 GTs: 2^21 pairs 1.3x the time of
# 2^19, 2^20 1.03x, 2^18 1.1x): allocations that large come fresh from the OS (page faults) each
# time and overflow the cache
_PAIR_BUDGET = 1 << 19
# bands of the pair search a box spans on average (see _inside_pairs)
_BANDS_PER_BOX = 6
# entries of the key-count table of a pair search (int64): bands are widened to keep within it
_KEY_TABLE = 1 << 21
# reach groups of the top-k-first search per doubling of the reach
_REACH_STEPS = 2
# searches with at most this many (box, point) pairs test every pair instead (small inputs: a
# few large ops beat the many small ops of the sorted searches)
_DENSE_PAIRS = 1 << 20


def _alignment_metric(score: torch.Tensor, overlap: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """t = score**alpha * overlap**beta, elementwise, float32.

    Evaluated in float64 and rounded once: float32 ``pow`` on CPU takes a vectorised path
    for most elements and a scalar one for the tail, which can differ by one ulp, so the
    float32 result would depend on where a pair sits in the tensor (and chunked assignment
    would not reproduce unchunked assignment bit for bit).
    """
    return (score.double().pow(alpha) * overlap.double().pow(beta)).float()


def _inside_pairs(
    points: torch.Tensor, boxes: torch.Tensor, eps: float | None, chunk_size: int | None, budget: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """All (box, point) pairs with the point strictly inside the box, a chunk of boxes at a time.

    Points are ranked by their distinct x and y values and cut into bands of ``per_band``
    consecutive distinct x values, then sorted by (band, y rank) into one integer key. A box's
    candidates are, in each band its x-range meets, the contiguous key range of the points
    with y1 < y < y2 (from a table of key counts), so they are the points strictly inside the box
    plus those of its first and last band outside it in x. Only these get the exact test
    (:func:`_inside_mask`, every side > ``eps`` >= 0), so the pairs are those of the dense
    test. With ``eps=None`` the candidates are yielded untested (a superset, for searches
    whose pairs get a stricter test anyway). ``per_band`` is chosen so that a box spans
    ~:data:`_BANDS_PER_BOX` bands. A chunk ends after ``chunk_size`` boxes or once its
    candidates number ``budget``.

    Args:
        points: (A, 2); boxes: (N, 4) xyxy.

    Yields:
        (box, point): (P,) integer pairs (int32 from the sorted search, see :func:`_index_dtype`),
        ``box`` indexing ``boxes`` (ascending) and ``point`` indexing ``points``.
    """
    device = boxes.device
    if boxes.shape[0] * points.shape[0] <= _DENSE_PAIRS:
        yield from _all_pairs(points, boxes, eps, chunk_size, budget)
        return
    distinct_x, x_rank = torch.unique(points[:, 0], sorted=True, return_inverse=True)
    distinct_y, y_rank = torch.unique(points[:, 1], sorted=True, return_inverse=True)
    # distinct-x ranks [q1, q2) and distinct-y ranks [r1, r2) lie strictly inside each box
    q1 = torch.searchsorted(distinct_x, boxes[:, 0].contiguous(), right=True)
    q2 = torch.searchsorted(distinct_x, boxes[:, 2].contiguous())
    r1 = torch.searchsorted(distinct_y, boxes[:, 1].contiguous(), right=True)
    r2 = torch.searchsorted(distinct_y, boxes[:, 3].contiguous())
    span = (q2 - q1).clamp(min=0)
    stride = distinct_y.numel() + 1
    per_band = max(
        1,
        int(span.float().mean().div(_BANDS_PER_BOX).ceil()) if span.numel() else 1,
        -(-distinct_x.numel() * stride // max(_KEY_TABLE, points.shape[0])),  # the table's bound
    )
    key = torch.div(x_rank, per_band, rounding_mode="floor") * stride + y_rank  # (A,)
    # before[v]: the number of keys < v, for every v a range can end at (a binary search in
    # one gather; the keys are < bands * stride <= max(_KEY_TABLE, A) + stride)
    num_keys = -(-distinct_x.numel() // per_band) * stride
    before = torch.zeros(num_keys + 1, dtype=torch.long, device=device)
    torch.cumsum(torch.bincount(key, minlength=num_keys), 0, out=before[1:])
    # a chunk's candidates number < budget + A (a box's ranges hold each point once) and their
    # key positions are < A: the per-candidate indices of the loop fit this dtype
    index_dtype = _index_dtype(max(points.shape[0] + budget, boxes.shape[0]))
    order = torch.argsort(key).to(index_dtype)
    first_band = torch.div(q1, per_band, rounding_mode="floor")
    num_bands = torch.where(span > 0, torch.div(q2 - 1, per_band, rounding_mode="floor") - first_band + 1, 0)
    # one range per (box, band), box-major
    index = torch.arange(boxes.shape[0], device=device)
    range_box = torch.repeat_interleave(index, num_bands)  # (R,)
    range_first = num_bands.cumsum(0) - num_bands  # (N,) first range of each box
    band = first_band[range_box] + torch.arange(range_box.numel(), device=device) - range_first[range_box]
    lo = before.index_select(0, band * stride + r1[range_box])
    count = (before.index_select(0, band * stride + r2[range_box]) - lo).clamp(min=0)  # (R,)
    offset = count.cumsum(0) - count  # (R,) offset of each range in the candidate list
    base = lo - offset  # candidate j sits at key position base[r] + j
    box_count = torch.zeros_like(index).index_add_(0, range_box, count)  # (N,)
    first = box_count.cumsum(0) - box_count
    new_chunk = torch.diff(first // budget, prepend=first.new_ones(1).neg()) != 0
    if chunk_size is not None:
        new_chunk |= index % chunk_size == 0
    bounds = [*index[new_chunk].tolist(), boxes.shape[0]]
    range_bounds = torch.cat([range_first, range_first.new_tensor([range_box.numel()])])[bounds].tolist()
    if eps is not None:  # columns, so that the test's gathers and differences run on contiguous rows
        table = points.index_select(0, order).t().contiguous()  # (2, A) the points in key order
        columns = boxes.t().contiguous()  # (4, N)
    for start, (r_start, r_stop) in zip(bounds[:-1], itertools.pairwise(range_bounds), strict=True):
        pair_range = torch.repeat_interleave(count[r_start:r_stop].to(index_dtype))  # (P,) range - r_start
        pos = (base[r_start:r_stop] + first[start]).to(index_dtype).index_select(0, pair_range)
        pos += torch.arange(pos.numel(), dtype=index_dtype, device=device)
        box = range_box[r_start:r_stop].to(index_dtype).index_select(0, pair_range)  # (P,)
        if eps is not None:
            inside = _inside_sides(_gather(table, pos), _gather(columns, box), eps).nonzero().squeeze(1)
            pos, box = pos.index_select(0, inside), box.index_select(0, inside)
        yield box, order.index_select(0, pos)


def _index_dtype(bound: int) -> torch.dtype:
    """int32 for indices below ``bound`` if they fit (half the memory traffic of int64), else int64."""
    return torch.int32 if bound <= torch.iinfo(torch.int32).max else torch.long


def _all_pairs(
    points: torch.Tensor, boxes: torch.Tensor, eps: float | None, chunk_size: int | None, budget: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`_inside_pairs` for small inputs: every (box, point) pair gets the exact test.

    Chunks of at most ``chunk_size`` boxes and ``budget`` pairs (at least one box). With
    ``eps=None`` the test is the plain one (every side distance > 0): the points strictly
    inside, which the superset of the sorted search holds too.
    """
    rows = max(1, min(chunk_size or boxes.shape[0], budget // max(points.shape[0], 1)))
    for start in range(0, boxes.shape[0], rows):
        inside = _inside_mask(points, boxes[start : start + rows, None], eps or 0.0)  # (n, A)
        box, point = inside.nonzero(as_tuple=True)
        yield box + start, point


def _ranges(start: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The integer ranges [start[i], start[i] + count[i]) laid end to end.

    Args:
        start, count: (N,) long, count >= 0.

    Returns:
        (owner, value), each (sum(count),): the range ``owner`` each value comes from.
    """
    owner = torch.repeat_interleave(torch.arange(start.numel(), device=start.device), count)
    offset = count.cumsum(0) - count  # (N,) where each range begins in the output
    value = torch.arange(owner.numel(), device=start.device) + (start - offset).index_select(0, owner)
    return owner, value


def _segment_topk(
    segment: torch.Tensor, index: torch.Tensor, value: torch.Tensor, k: int, num_index: int
) -> torch.Tensor:
    """Per segment, the ``k`` largest values; ties go to the lower ``index``.

    Elements are ranked by one int64 key, unique within a segment: the bit pattern of the
    positive float32 value (which sorts like the value) above ``num_index - 1 - index``.
    Segments are made contiguous (a stable sort by segment, unless they already are); those
    of more than ``k`` elements are laid out, per bucket of lengths in (L / 2, L] with L a
    power of two, as the rows of a padded (n, L) table of keys, and ``torch.topk`` picks
    each row's ``k`` largest. No sort of the elements themselves.

    Args:
        segment: (P,) long segment id; index: (P,) long tie-break key in [0, num_index),
        unique per segment; value: (P,) float32, > 0.

    Returns:
        (P,) bool mask of the kept elements.
    """
    num = segment.numel()
    order = None
    if num > 1 and not bool((segment[1:] >= segment[:-1]).all()):
        order = torch.argsort(segment, stable=True)
        segment, index, value = segment[order], index[order], value[order]
    index_bits = max(num_index - 1, 1).bit_length()
    key = value.view(torch.int32).long() << index_bits | (num_index - 1 - index)  # (P,) > 0
    _, counts = torch.unique_consecutive(segment, return_counts=True)
    keep = torch.repeat_interleave(counts <= k, counts)  # short segments keep every element
    starts = counts.cumsum(0) - counts
    longest = int(counts.max()) if counts.numel() else 0
    length = 1 << k.bit_length()  # the first power of two > k
    while longest > k:
        rows = ((counts > max(length // 2, k)) & (counts <= length)).nonzero().squeeze(1)
        if rows.numel():
            position = starts[rows, None] + torch.arange(length, device=key.device)  # (n, L)
            present = position < (starts + counts)[rows, None]
            table = key[position.clamp(max=num - 1)].masked_fill_(~present, -1)
            keep[position.gather(1, table.topk(k, dim=1, sorted=False).indices)] = True
        if length >= longest:
            break
        length *= 2
    if order is not None:
        keep = torch.empty_like(keep).scatter_(0, order, keep)
    return keep


def _grow_boxes(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """(N, 4) ``xyxy`` boxes with every side shorter than ``min_size`` set to it about the centre.

    Computed through centre and size, as ultralytics 8.4 does for its inside-box test.
    """
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = boxes[:, 2:] - boxes[:, :2]
    size = torch.where(size < min_size, torch.full_like(size, min_size), size)
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def _reach_groups(points: torch.Tensor, pred_boxes: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Anchor slots grouped by how far their predicted boxes reach, for the top-k-first search.

    A slot's reach in x (in y) is the largest distance from its anchor point to the left or
    right (top or bottom) side of its predicted box; a predicted box can overlap a GT only if
    the anchor point lies within the GT grown by the reach. Slots are grouped by
    ``floor(_REACH_STEPS * log2(max reach + 1))`` so that each group is searched with margins
    close to its own reach.

    Args:
        points: (A, 2); pred_boxes: (B, A, 4) xyxy.

    Returns:
        [(slots (n,) long ``b * A + a``, margin (2,))] with margin = the group's largest x and
        y reach + 1 px (slack for the rounding of the grown boxes).
    """
    reach = torch.maximum(points - pred_boxes[..., :2], pred_boxes[..., 2:] - points).clamp(min=0).view(-1, 2)
    group = torch.log2(reach.amax(1) + 1).mul(_REACH_STEPS).floor().long()  # (B * A,)
    groups = []
    for value in torch.unique(group).tolist():
        slots = (group == value).nonzero().squeeze(1)
        groups.append((slots, reach[slots].amax(0) + 1.0))
    return groups


def _gather(columns: torch.Tensor, index: torch.Tensor) -> list[torch.Tensor]:
    """The (P,) rows ``columns[i, index]`` of (k, N) ``columns``, one 1-D gather per row.

    (On CPU ``columns.index_select(1, index)`` takes ~2.5x as long as these k gathers.)
    """
    return [row.index_select(0, index) for row in columns]


def _box_columns(boxes: torch.Tensor) -> torch.Tensor:
    """(5, N) rows x1, y1, x2, y2 and area of (N, 4) ``xyxy`` boxes, the area as :func:`box_iou` takes it.

    :func:`_gather` takes every term a pair's IoU needs as contiguous rows.
    """
    size = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    return torch.cat([boxes.t(), (size[:, 0] * size[:, 1])[None]])


def _aligned_iou(pred: Sequence[torch.Tensor], gt: Sequence[torch.Tensor], eps: float = 1e-7) -> torch.Tensor:
    """``box_iou(pred_boxes, gt_boxes, aligned=True)`` bit for bit, from (P,) rows of :func:`_box_columns`.

    The same float32 operations in the same order (intersection, then areas + areas -
    intersection, then division by union + eps), on contiguous rows and precomputed areas.
    ``pred`` and ``gt``: x1, y1, x2, y2, area (further rows are ignored).
    """
    width = torch.minimum(pred[2], gt[2]).sub_(torch.maximum(pred[0], gt[0])).clamp_(min=0)
    height = torch.minimum(pred[3], gt[3]).sub_(torch.maximum(pred[1], gt[1])).clamp_(min=0)
    inter = width.mul_(height)
    return inter / (pred[4] + gt[4] - inter + eps)


def _cat(parts: list[tuple[torch.Tensor, ...]], index: torch.Tensor, value: torch.Tensor, width: int):
    """Concatenate (long, long, float, ...) tuples of ``width`` tensors; empty ones without parts."""
    if parts:
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))
    return (index.new_zeros(0), index.new_zeros(0), *(value.new_zeros(0) for _ in range(width - 2)))


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
    pred_cols: torch.Tensor  # (5, B * A) x1, y1, x2, y2, area of the predicted boxes (:func:`_box_columns`)
    gt_cols: torch.Tensor  # (5, B * G) the same of the GT boxes

    @classmethod
    def of(cls, batch, num_anchors, num_gt, scores, pred, labels, gt, points, valid) -> _Batch:
        """The batch with the box columns of ``pred`` and ``gt``."""
        return cls(
            batch, num_anchors, num_gt, scores, pred, labels, gt, points, valid, _box_columns(pred), _box_columns(gt)
        )

    @property
    def small(self) -> bool:
        """Whether every (valid GT, anchor) pair fits in :data:`_DENSE_PAIRS` (searches test them all)."""
        return self.valid.numel() * self.num_anchors <= _DENSE_PAIRS


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

    Memory and time: the dense (G, A) tensors are never formed. Anchors are sorted once into
    bands of x and, within a band, by y; each GT tests only the anchors of the key ranges
    of the bands its box spans (found in a table of key counts), and one walk over these inside
    pairs gives every variant's claims. Each GT's top-k is taken with ``torch.topk`` on
    padded rows of one packed key, without sorting the pairs. ``"topk_first"`` then adds only
    the anchors outside the GT that can outrank its weakest inside claim (their overlap,
    hence their predicted box's reach, is bounded below, see :meth:`_topk_over_all`);
    ``"inside"`` takes each contested anchor's best inside GT from the same walk, and
    ``"all"`` compares it only with the GTs whose centre lies in a window the IoU bound
    allows (see :meth:`_best_of_image`). Small inputs (at most :data:`_DENSE_PAIRS` valid GT x
    anchor pairs, e.g. a training batch of a few GTs per image) skip the searches: every pair
    gets the exact test, which costs fewer (larger) operations there.
    GT rows are processed in chunks of at most ~0.5M tested pairs (and at most ``chunk_size``
    rows if given); only the top-k claims of each GT and each anchor's best inside GT
    outlive its chunk. The result does not depend on the chunking.

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
        x = _Batch.of(
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

        track_best = self.resolve == "inside" or (self.resolve == "all" and not x.small)
        (slot, gt_flat, overlap, metric), best = self._claims(x, test_boxes, track_best)
        slot, gt_flat, overlap, metric = self._resolve(x, best, slot, gt_flat, overlap, metric)
        # normalisation over the anchors each GT holds: t * max_overlap / (max_t + eps)
        max_metric = metric.new_zeros(b * g).scatter_reduce(0, gt_flat, metric, "amax")
        max_overlap = overlap.new_zeros(b * g).scatter_reduce(0, gt_flat, overlap, "amax")
        quality = metric * max_overlap[gt_flat] / (max_metric[gt_flat] + self.eps)
        return _build_result(slot, gt_flat, quality, gt_labels, gt_boxes, a, c)

    def _overlap(self, x: _Batch, slot: torch.Tensor, gt_flat: torch.Tensor) -> torch.Tensor:
        """(P,) overlap of pairs of anchor slots ``b * A + a`` and GT rows ``b * G + g``."""
        if self.iou_type == "iou":
            return _aligned_iou(_gather(x.pred_cols, slot), _gather(x.gt_cols, gt_flat))
        overlap = box_iou(x.pred.index_select(0, slot), x.gt.index_select(0, gt_flat), mode=self.iou_type, aligned=True)
        return overlap.clamp(min=0)

    def _score(
        self, x: _Batch, slot: torch.Tensor, gt_flat: torch.Tensor, iou: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(overlap, t) of (P,) pairs of anchor slots ``b * A + a`` and GT rows ``b * G + g``.

        ``iou``: the pairs' (P,) :func:`_aligned_iou` if already known (the overlap of ``"iou"``).
        """
        overlap = iou if iou is not None and self.iou_type == "iou" else self._overlap(x, slot, gt_flat)
        num_classes = x.scores.shape[1]
        cls = x.labels.index_select(0, gt_flat)
        score = x.scores.view(-1).index_select(0, slot * num_classes + cls)  # (P,)
        return overlap, _alignment_metric(score, overlap, self.alpha, self.beta)

    def _top_claims(
        self, x: _Batch, slot: torch.Tensor, rows: torch.Tensor, overlap: torch.Tensor, metric: torch.Tensor
    ):
        """Step 3 on (P,) scored pairs: (slot, gt_flat, overlap, t) of each GT's top-k with t > 0."""
        positive = (metric > 0).nonzero().squeeze(1)
        if positive.numel() < metric.numel():
            slot, rows, overlap, metric = (v.index_select(0, positive) for v in (slot, rows, overlap, metric))
        keep = _segment_topk(rows, slot, metric, self.topk, x.batch * x.num_anchors).nonzero().squeeze(1)
        return tuple(v.index_select(0, keep) for v in (slot, rows, overlap, metric))

    def _claims(self, x: _Batch, test_boxes: torch.Tensor, track_best: bool) -> tuple[tuple[torch.Tensor, ...], ...]:
        """Steps 1-3: the claims (slot, gt_flat, overlap, t), each (P,).

        With ``track_best`` also, for every anchor slot inside some GT, the inside GT of the
        highest overlap (ties: lowest row) as (slot, gt_flat, overlap), from the same walk.
        """
        claims, best = [], []
        # (V,) the first anchor slot b * A of each valid GT's image
        image_slot = torch.div(x.valid, x.num_gt, rounding_mode="floor") * x.num_anchors
        pairs = _inside_pairs(x.points, test_boxes, self.inside_margin, self.chunk_size, _PAIR_BUDGET)
        for box, anchor in pairs:
            rows = x.valid.index_select(0, box)
            slot = image_slot.index_select(0, box) + anchor  # (P,) b * A + a
            overlap, metric = self._score(x, slot, rows)
            if track_best:
                win = _resolve_claims(slot, rows, overlap, x.batch * x.num_anchors)
                best.append((slot[win], rows[win], overlap[win]))
            claims.append(self._top_claims(x, slot, rows, overlap, metric))
        claims = _cat(claims, x.valid, x.pred, 4)
        if best:
            slot, rows, overlap = _cat(best, x.valid, x.pred, 3)
            win = _resolve_claims(slot, rows, overlap, x.batch * x.num_anchors)
            best = slot[win], rows[win], overlap[win]
        if self.order == "topk_first":
            claims = self._topk_over_all(x, test_boxes, *claims)
        return claims, best

    def _topk_over_all(
        self,
        x: _Batch,
        test_boxes: torch.Tensor,
        slot: torch.Tensor,
        gt_flat: torch.Tensor,
        overlap: torch.Tensor,
        metric: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """Top-k first from the inside top-k claims: those still in the GT's top-k over all anchors.

        An anchor outside the GT matters only if its t reaches the GT's weakest inside claim
        theta. As s**alpha <= 1 (alpha >= 0), that needs overlap >= c = theta**(1/beta), so
        the IoU too (CIoU <= IoU), and an IoU >= c needs an intersection >= c * the GT's area,
        so an x-overlap >= c * area / min(2 * reach_y, GT height) (the same in y). A predicted
        box lies within its anchor's reach of the anchor point, so the anchor point lies in the
        GT shrunk by that overlap and grown by the reach: each reach group is searched with
        that box, for all images at once (c taken 1 % low, 1 px slack against rounding; see
        :meth:`_near_pairs`). The found pairs get the IoU bound, lose the inside pairs (the
        claims hold them), and keep t >= theta and each GT's k best per chunk; with the inside
        claims they give each GT's top-k over all anchors.
        """
        b, g, a = x.batch, x.num_gt, x.num_anchors
        weakest = metric.new_full((b * g,), torch.inf).scatter_reduce(0, gt_flat, metric, "amin")
        position = (weakest[x.valid] < torch.inf).nonzero().squeeze(1)  # (V',) into valid: GTs with claims
        rows = x.valid[position]
        theta = weakest[rows]  # (V',) > 0
        # (with alpha < 0, s**alpha is not bounded by 1: no bound)
        cover = theta.double().pow(1.0 / self.beta).float() * 0.99 if self.alpha >= 0 else torch.zeros_like(theta)
        # per GT with claims, as columns: (6, V') its box columns and cover, (4, V') its inside-test box
        gt_cols = torch.cat([x.gt_cols.index_select(1, rows), cover[None]])
        test_cols = test_boxes.index_select(0, position).t().contiguous()
        point_cols = x.points.t().contiguous()  # (2, A)
        found = [(slot, gt_flat, overlap, metric, torch.ones_like(slot, dtype=torch.bool))]
        for pair, pair_slot in self._near_pairs(x, rows, cover):
            # the IoU bound first (it drops most; CIoU <= IoU), then the inside pairs (the claims hold them)
            gt = _gather(gt_cols, pair)  # 6 x (P,)
            iou = _aligned_iou(_gather(x.pred_cols, pair_slot), gt)
            near = (iou >= gt[5]).nonzero().squeeze(1)
            pair, pair_slot, iou = (v.index_select(0, near) for v in (pair, pair_slot, iou))
            anchor = pair_slot % a
            inside = _inside_sides(_gather(point_cols, anchor), _gather(test_cols, pair), self.inside_margin)
            outside = (~inside).nonzero().squeeze(1)
            pair, pair_slot, iou = (v.index_select(0, outside) for v in (pair, pair_slot, iou))
            pair_rows = rows.index_select(0, pair)
            pair_overlap, pair_metric = self._score(x, pair_slot, pair_rows, iou)
            # those reaching theta; beyond a GT's k best here none can be in its top-k
            reach = (pair_metric >= theta[pair]).nonzero().squeeze(1)
            pair_slot, pair_rows = pair_slot[reach], pair_rows[reach]
            pair_overlap, pair_metric = pair_overlap[reach], pair_metric[reach]
            best = _segment_topk(pair_rows, pair_slot, pair_metric, self.topk, b * a)
            found.append(
                (
                    pair_slot[best],
                    pair_rows[best],
                    pair_overlap[best],
                    pair_metric[best],
                    torch.zeros_like(pair_slot[best], dtype=torch.bool),
                )
            )
        slot, gt_flat, overlap, metric, inside = (torch.cat(parts) for parts in zip(*found, strict=True))
        keep = _segment_topk(gt_flat, slot, metric, self.topk, b * a) & inside
        return slot[keep], gt_flat[keep], overlap[keep], metric[keep]

    def _near_pairs(
        self, x: _Batch, rows: torch.Tensor, cover: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Candidate (GT, anchor) pairs of :meth:`_topk_over_all`, a chunk at a time.

        Every pair whose predicted box can reach an IoU >= ``cover`` with the GT is among
        them (the bound of :meth:`_topk_over_all`); with at most :data:`_DENSE_PAIRS` pairs in
        all, every anchor of the GT's image is.

        Args:
            rows: (V',) long GT rows ``b * G + g``, ascending; cover: (V',) IoU bound.

        Yields:
            (pair, slot): (P,) long positions into ``rows`` and anchor slots ``b * A + a``.
        """
        b, g, a = x.batch, x.num_gt, x.num_anchors
        if rows.numel() * a <= _DENSE_PAIRS:
            per_chunk = max(1, _PAIR_BUDGET // max(a, 1))
            for start in range(0, rows.numel(), per_chunk):
                image = torch.div(rows[start : start + per_chunk], g, rounding_mode="floor")
                pair, slot = _ranges(image * a, torch.full_like(image, a))
                yield pair + start, slot
            return
        boxes = x.gt[rows]
        size = boxes[:, 2:] - boxes[:, :2]  # (V', 2)
        area = size.prod(1)  # (V',)
        sign = boxes.new_tensor([-1.0, -1.0, 1.0, 1.0])
        image = torch.div(rows, g, rounding_mode="floor").float()  # (V',)
        pred_area = (x.pred[:, 2:] - x.pred[:, :2]).clamp(min=0).prod(1)  # (B * A,)
        for slots, margin in _reach_groups(x.points, x.pred.view(b, a, 4)):
            # a predicted box is <= 2 * margin wide and high, and the union >= both areas: an
            # x-overlap >= c * max(area, the group's least predicted area) / min(2 * margin_y, GT
            # height) (the same in y), and no GT if that exceeds min(2 * margin_x, GT width)
            least = torch.maximum(area, pred_area.index_select(0, slots).min())  # (V',)
            reach = size.clamp(max=2 * margin)  # (V', 2) the largest overlap in x and y
            shrink = torch.where(reach.flip(1) > 0, (cover * least)[:, None] / reach.flip(1), torch.inf)
            shrink = torch.where((shrink > reach).any(1, keepdim=True), torch.inf, shrink)
            region = boxes + sign * (margin - shrink).repeat(1, 2)  # (V', 4) empty for no GT
            # one search for all images: image i's anchors and regions move down by i * offset,
            # past every other image's (the rounding of the move is far below the 1 px slack).
            # The search's y ranges are exact, so its untested candidates (a region's points
            # plus those of its end bands in x) are all of the GT's image: the exact IoU test
            # of the caller is their only test
            points = x.points.index_select(0, slots % a)
            lo = torch.minimum(points[:, 1].min(), region[:, 1].min())
            offset = torch.maximum(points[:, 1].max(), region[:, 3].max()) - lo + 2.0
            points[:, 1] += torch.div(slots, a, rounding_mode="floor").float() * offset
            region[:, 1::2] += (image * offset)[:, None]
            for pair, point in _inside_pairs(points, region, None, self.chunk_size, _PAIR_BUDGET):
                yield pair, slots.index_select(0, point)

    def _resolve(
        self,
        x: _Batch,
        best: tuple[torch.Tensor, ...],
        slot: torch.Tensor,
        gt_flat: torch.Tensor,
        overlap: torch.Tensor,
        metric: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step 4: one (slot, gt_flat, overlap, t) per foreground anchor.

        ``best``: per anchor slot inside some GT, its inside GT of the highest overlap
        (:meth:`_claims` with ``track_best``); used by ``"inside"``, and by ``"all"`` unless
        the input is small (then every valid GT of the image is compared, without a search).
        """
        b, a = x.batch, x.num_anchors
        if self.resolve == "claimants":
            win = _resolve_claims(slot, gt_flat, overlap, b * a)
            return slot[win], gt_flat[win], overlap[win], metric[win]
        claim_count = torch.bincount(slot, minlength=b * a)  # (B * A,)
        contested = claim_count > 1
        single = ~contested[slot]
        if not contested.any():
            return slot, gt_flat, overlap, metric
        won_slot = contested.nonzero().squeeze(1)  # (M,) ascending
        if self.resolve == "all" and x.small:  # every valid GT of the image, no window search
            image = torch.div(won_slot, a, rounding_mode="floor")
            won_gt = _best_gt_of_image(x.pred[won_slot], image, x.gt.view(b, -1, 4), x.valid, self.iou_type)
        else:
            best_slot, best_gt, best_overlap = best
            best_of_slot = best_gt.new_empty(b * a)
            best_of_slot[best_slot] = torch.arange(best_slot.numel(), device=best_slot.device)
            best_of_slot = best_of_slot[won_slot]  # (M,) every claimed anchor is inside its claimants
            won_gt = best_gt[best_of_slot]
            if self.resolve == "all":
                won_gt = self._best_of_image(x, won_slot, won_gt, best_overlap[best_of_slot])
        won_overlap, won_metric = self._score(x, won_slot, won_gt)
        return (
            torch.cat([slot[single], won_slot]),
            torch.cat([gt_flat[single], won_gt]),
            torch.cat([overlap[single], won_overlap]),
            torch.cat([metric[single], won_metric]),
        )

    def _best_of_image(
        self, x: _Batch, won_slot: torch.Tensor, won_gt: torch.Tensor, floor: torch.Tensor
    ) -> torch.Tensor:
        """For (M,) anchor slots, the valid GT of their image with the highest overlap (ties: lowest row).

        ``won_gt`` (M,) is a GT of overlap ``floor`` (M,) with each: only GTs of overlap >= floor
        can win. An overlap (so an IoU) >= c with a predicted box of width w needs an x-overlap
        >= c * max(w, w_gt), hence w_gt <= w / c and a centre distance <= (w + w_gt) / 2 -
        c * max(w, w_gt) <= w * max(1 - c, (1 / c - 1) / 2) (the same in y). So the GTs whose
        centre lies in that window about the predicted box's centre (c taken 1 % low, 1 px
        slack) are the only candidates; each image's GT centres are strip-searched with the
        windows of its anchors.
        """
        a, g = x.num_anchors, x.num_gt
        pred = x.pred.index_select(0, won_slot)  # (M, 4)
        cover = floor * 0.99
        factor = torch.maximum(1 - cover, (1 / cover - 1) / 2)
        half = (pred[:, 2:] - pred[:, :2]) * factor[:, None] + 1.0  # (M, 2)
        half = torch.where((cover > 0)[:, None], half, torch.inf)
        centre = (pred[:, :2] + pred[:, 2:]) / 2
        window = torch.cat([centre - half, centre + half], dim=1)  # (M, 4)
        gt_centre = (x.gt[x.valid, :2] + x.gt[x.valid, 2:]) / 2  # (V, 2)
        image = torch.div(won_slot, a, rounding_mode="floor")
        splits = torch.arange(x.batch + 1, device=won_slot.device)
        anchor_split = torch.searchsorted(image, splits).tolist()
        gt_split = torch.searchsorted(x.valid, splits * g).tolist()
        num_slots = x.batch * a
        best = x.pred.new_full((num_slots,), -torch.inf)
        best[won_slot] = floor
        no_gt = torch.iinfo(won_gt.dtype).max
        winner = won_gt.new_full((num_slots,), no_gt)
        winner[won_slot] = won_gt
        for i in range(x.batch):
            m0, m1, v0, v1 = anchor_split[i], anchor_split[i + 1], gt_split[i], gt_split[i + 1]
            if m0 == m1:
                continue
            for box, point in _inside_pairs(gt_centre[v0:v1], window[m0:m1], None, None, _PAIR_BUDGET):
                slot, rows = won_slot[m0 + box], x.valid[v0 + point]
                overlap = self._overlap(x, slot, rows)
                # merge this chunk's candidates into (best, winner): higher overlap, then lower row
                chunk_best = best.scatter_reduce(0, slot, overlap, "amax")
                better = chunk_best > best
                tie_gt = torch.where(overlap == chunk_best[slot], rows, no_gt)
                chunk_winner = torch.where(better, no_gt, winner).scatter_reduce(0, slot, tie_gt, "amin")
                best, winner = chunk_best, chunk_winner
        return winner[won_slot]
