"""Batched multi-class non-maximum suppression for dense detectors.

:func:`multiclass_nms` turns the per-anchor boxes and class probabilities of a whole batch
into per-image detections, vectorised over the batch (no Python loop over images or classes):

1. candidates: every (anchor, class) pair with score > ``score_thr`` (``multi_label``) or
   each anchor's best class when that score is > ``score_thr`` (single-label);
2. the ``pre_nms_topk`` highest-scoring candidates of each image go to NMS;
3. NMS runs within each (image, class) group, or within each image when
   ``class_agnostic``: ``"hard"`` (greedy, exactly torchvision's kernel), ``"soft"``
   (Gaussian soft-NMS) or ``"diou"`` (DIoU-NMS);
4. the ``max_det`` highest-scoring survivors of each image are returned, sorted by score.

Equal scores are ordered by the candidate's position in the (image, anchor, class) layout
of ``scores`` (lower first) — in the top-k cuts, in NMS and in the output. There is no
time limit: every image of the batch is processed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import operator
import struct
from typing import NamedTuple

import torch
import torchvision
from torch import nn

from ._validation import check_boxes, check_floating
from .boxes import box_iou
from .registry import NMS

__all__ = ["NMS_METHODS", "Detections", "MultiClassNMS", "NMSSettings", "multiclass_nms"]

NMS_METHODS = ("hard", "soft", "diou")
_INT64_MAX = 2**63 - 1
# A group whose boxes have more than this many window partners each, on average, goes to
# torchvision's kernel instead (it skips suppressed boxes, which pays off in heavy clusters).
_PAIRS_PER_BOX_FOR_TORCHVISION = 24
# Fixed-point rounds of the hard-NMS kernel between prunings of the pairs to the groups still
# changing, and in all before those go to torchvision's kernel.
_ROUNDS_BEFORE_TORCHVISION = 8
_MAX_ROUNDS = 64
# Groups holding at most this many box pairs in all have every pair tested (no x-sweep).
_ALL_PAIRS_MAX = 1 << 18
# Boxes after each box whose overlap bounds are tested at once by the hard/DIoU sweep.
_SWEEP_WINDOW = 16
# Hard and DIoU NMS first run on each image's max(4 * max_det, this) highest candidates.
_FIRST_PREFIX = 1024
# Score thresholds from which the candidate search gathers only the rows of anchors whose L2
# norm passes (the squares of candidates are normal floats then).
_NORM_FLOOR = 2.0**-60


class Detections(NamedTuple):
    """Detections of one image, sorted by score (descending).

    boxes: (K, 4) float32 ``xyxy``; scores: (K,) float32; labels: (K,) long class index.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def _as_float(name: str, value: object) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _as_count(name: str, value: object) -> int:
    """A positive integer from anything integer-like (int, NumPy or 0-dim torch integers);
    values past the int64 range mean "no limit" and are clamped to it."""
    try:
        if isinstance(value, bool):
            raise TypeError
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a positive integer, got {value!r}") from None
    if count < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return min(count, _INT64_MAX)


@dataclasses.dataclass(frozen=True)
class NMSSettings:
    """The validated settings of :func:`multiclass_nms` (see there); integer-like counts are
    converted to ``int`` and clamped to the int64 range, thresholds to ``float``."""

    score_thr: float = 0.05
    iou_thr: float = 0.6
    max_det: int = 100
    pre_nms_topk: int = 1000
    multi_label: bool = True
    class_agnostic: bool = False
    method: str = "hard"
    sigma: float = 0.5

    def __post_init__(self) -> None:
        set_ = object.__setattr__.__get__(self)
        if self.method not in NMS_METHODS:
            raise ValueError(f"method must be one of {NMS_METHODS}, got {self.method!r}")
        for name in ("score_thr", "iou_thr", "sigma"):
            set_(name, _as_float(name, getattr(self, name)))
        if not 0.0 <= self.iou_thr <= 1.0:
            raise ValueError(f"iou_thr must lie in [0, 1], got {self.iou_thr}")
        if not 0.0 <= self.score_thr <= 1.0:
            raise ValueError(f"score_thr must lie in [0, 1], got {self.score_thr}")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        for name in ("max_det", "pre_nms_topk"):
            set_(name, _as_count(name, getattr(self, name)))
        for name in ("multi_label", "class_agnostic"):
            set_(name, bool(getattr(self, name)))


def _check_inputs(boxes: torch.Tensor, scores: torch.Tensor) -> None:
    check_boxes("boxes", boxes)
    check_floating("scores", scores)
    if boxes.dim() != 3:
        raise ValueError(f"boxes must have shape (B, A, 4), got {tuple(boxes.shape)}")
    if scores.dim() != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise ValueError(
            f"scores must have shape (B, A, C) with (B, A) = {tuple(boxes.shape[:2])} from boxes, "
            f"got {tuple(scores.shape)}"
        )


def _score_key(prefix: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """int64 keys that sort ascending by ``prefix`` (an int >= 0), then by ``score``
    descending; scores must be > 0 and finite (their int32 bit patterns, in [1, 2**31), then
    order like them, and each prefix p gets the keys in ((p - 1) * 2**31, p * 2**31))."""
    return (prefix << 31) - score.view(torch.int32)


def _ordered_bits(x: torch.Tensor) -> torch.Tensor:
    """int64 in [0, 2**32) ordering like the float32 values ``x`` (-0.0 counts as 0.0)."""
    bits = (x + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).long() + 2**31


def _top_per_image(
    img: torch.Tensor, score: torch.Tensor, k: int, num_images: int, always_sort: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Indices of the ``k`` highest scores of each image (equal scores: the lower index first)
    and how many each image keeps, (num_images,); ``img`` is sorted and scores are > 0. Sorted
    by image, then score (descending), then index; without ``always_sort`` in index order,
    and None when every entry is kept.

    Images with more than ``k`` entries first find their k-th highest score with one
    ``topk`` over an image-padded copy: entries above it are in, and of those equal to it the
    first ones in index order, until the image holds ``k``.
    """
    counts = torch.bincount(img, minlength=num_images)
    idx = None
    if score.numel() and int(counts.max()) > k:
        idx = torch.arange(score.numel(), device=score.device)
        starts = (counts.cumsum(0) - counts).index_select(0, img)  # (N,) first entry of its image
        padded = score.new_full((num_images, int(counts.max())), -math.inf)
        padded[img, idx - starts] = score
        kth = padded.topk(k, dim=1, sorted=False).values.amin(1).index_select(0, img)  # (N,), -inf below k entries
        above, tied = score > kth, score == kth
        room = k - torch.zeros_like(counts).index_add_(0, img, above.long())  # (B,) places left for ties
        ties_before = tied.long().cumsum(0) - tied.long()  # (N,) equal to the k-th score, earlier in the batch
        ties_before -= ties_before.index_select(0, starts)  # ... earlier in the image
        idx = (above | (tied & (ties_before < room.index_select(0, img)))).nonzero().squeeze(1)
        img, score, counts = img.index_select(0, idx), score.index_select(0, idx), counts.clamp_(max=k)
    if always_sort:
        order = _score_key(img, score).argsort(stable=True)
        idx = order if idx is None else idx.index_select(0, order)
    return idx, counts


def _candidates(
    scores: torch.Tensor, norms: torch.Tensor, score_thr: float, pre_nms_topk: int, multi_label: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, anchor, label, score) of the candidates, each (N,): at most ``pre_nms_topk``
    per image (the highest scores; equal scores by position), by image, then position in
    ``scores``; ``anchor`` indexes the flattened (B * A) anchors. ``scores`` must be finite,
    ``norms`` (B, A) the L2 norm of each anchor's scores.

    ``scores`` is not read again as a whole: only the rows of anchors whose norm passes the
    threshold are gathered. The norm computed in float32 is at least the row's max m: the
    rounded sum of rounded squares is at least the rounded m**2 (adding numbers >= 0 never
    rounds below a partial sum), and the rounded square root of the rounded m**2 is m, unless
    m**2 is subnormal, which ``score_thr >= _NORM_FLOOR`` rules out (for smaller thresholds
    every row is searched). An image with more than ``pre_nms_topk`` of them keeps the
    anchors whose max ranks among its k highest: no pair outside them can be among its top
    k. The search runs on the float32 bit patterns as int32, which order like the floats for
    scores >= 0; a negative score has a negative pattern and stays below any threshold >= 0.
    Single-label ties go to the lowest class index.
    """
    num_images, num_anchors, num_classes = scores.shape
    all_rows = scores.view(torch.int32).view(-1, num_classes)  # (B * A, C)
    low = _float_bits(score_thr) + 1  # the least pattern of a candidate
    # (Na,) flattened, image-major; every anchor when the threshold is too small for the bound
    search_all = score_thr < _NORM_FLOOR
    anchor = torch.arange(len(all_rows), device=scores.device) if search_all else _nonzero(norms > score_thr)
    rows = all_rows if anchor.numel() == all_rows.shape[0] else all_rows.index_select(0, anchor)  # (Na, C)
    img = anchor.div(num_anchors, rounding_mode="floor")
    if anchor.numel() > pre_nms_topk and int(torch.bincount(img, minlength=num_images).max()) > pre_nms_topk:
        best = rows.amax(1)
        # the k-th highest anchor max: k pairs reach it, so no lower pair is among the top k
        kth = _kth_per_image(img, best.view(torch.float32), pre_nms_topk, pre_nms_topk, num_images)
        # (Na,) the least pattern of a pair that can be in its image's top k (kth -inf: none cut)
        low = kth.view(torch.int32).clamp(min=low).index_select(0, img)
        top = (best >= low).nonzero().squeeze(1)
        anchor, img, low, rows = (t.index_select(0, top) for t in (anchor, img, low, rows))
        low = low[:, None] if multi_label else low
    if multi_label:
        index = _nonzero(rows >= low)  # (N,) into rows, by anchor, then class
        row = index.div(num_classes, rounding_mode="floor")
        label = index - row * num_classes
        img, anchor = img.index_select(0, row), anchor.index_select(0, row)
        score = rows.view(-1).index_select(0, index).view(torch.float32)
    else:
        label = rows.argmax(1)  # the first class holding the max
        best = rows.gather(1, label[:, None]).squeeze(1)
        has = (best >= low).nonzero().squeeze(1)
        img, anchor, label, score = (t.index_select(0, has) for t in (img, anchor, label, best.view(torch.float32)))
    if img.numel() > pre_nms_topk:  # some image may hold more than k
        top = _top_per_image(img, score, pre_nms_topk, num_images, always_sort=False)[0]
        if top is not None:
            img, anchor, label, score = (t.index_select(0, top) for t in (img, anchor, label, score))
    return img, anchor, label, score


def _float_bits(value: float) -> int:
    """The int32 bit pattern of ``value`` (finite) rounded to float32 (to nearest, as torch)."""
    return struct.unpack("<i", struct.pack("<f", value))[0]


def _check_finite(boxes: torch.Tensor, scores: torch.Tensor, norms: torch.Tensor) -> None:
    """NaN (either sign bit) or +-inf in either input: a ValueError naming it. ``norms``: the
    L2 norm of each anchor's scores, non-finite iff its scores hold NaN or +-inf, or their
    squares overflow. One host sync: the sum of the boxes and the norms is finite iff every
    element is, unless it overflows, which the exact checks after it tell apart."""
    if math.isfinite(boxes.sum(dtype=torch.float32).add_(norms.sum()).item()):
        return
    for name, tensor in (("boxes", boxes), ("scores", scores)):
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name} must be finite: found NaN or +-inf")


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    """``mask.view(-1).nonzero().squeeze(1)`` for a contiguous bool ``mask``, quicker when
    few entries are True: ``nonzero`` runs over words of 8 entries (an int64 view) first,
    then over the entries of the words holding one. That costs about as much as the plain
    ``nonzero`` when a quarter of the words hold one (CPU, measured on 67 200 and 204 240
    entries); above that the plain one runs."""
    flat = mask.view(-1)
    if flat.numel() % 8:
        return flat.nonzero().squeeze(1)
    words = flat.view(torch.int64).nonzero().squeeze(1)
    if 4 * words.numel() > len(flat) // 8:  # not that few
        return flat.nonzero().squeeze(1)
    hits = flat.view(-1, 8).index_select(0, words).view(-1).nonzero().squeeze(1)
    return (words.index_select(0, hits >> 3) << 3) | (hits & 7)


def _float32_below(value: float) -> float:
    """The largest float32 <= ``value`` (in [0, 1]): for a float32 ``x``, ``x > value`` iff
    ``x > this``."""
    bits = _float_bits(value)
    if struct.unpack("<f", struct.pack("<i", bits))[0] > value:  # rounded up: the float32 below (> 0)
        bits -= 1
    return struct.unpack("<f", struct.pack("<i", bits))[0]


def _group_pair_edges(
    boxes: torch.Tensor, groups: torch.Tensor, iou_thr: float, diou: bool
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Every pair (p, q), p < q, of boxes of the same group whose IoU (DIoU if ``diou``) is
    > ``iou_thr``, as index tensors (E,), found by testing every pair of each group; ``groups``
    must be sorted (contiguous). None when the groups hold more than ``_ALL_PAIRS_MAX`` pairs.

    The IoU is that of :func:`_kernel_iou`.
    """
    sizes = torch.unique_consecutive(groups, return_counts=True)[1]
    ends = sizes.cumsum(0).repeat_interleave(sizes, output_size=groups.numel())  # (N,) past the box's group
    partners = ends - torch.arange(1, groups.numel() + 1, device=groups.device)  # (N,) later boxes of the group
    last = partners.cumsum(0)  # (N,) past the box's pairs in the list
    total = int(last[-1])
    if total > _ALL_PAIRS_MAX:
        return None
    p = torch.repeat_interleave(partners, output_size=total)  # (E,)
    q = torch.arange(total, device=groups.device) - (last - ends).index_select(0, p)
    index = (_kernel_iou(boxes, p, q, diou) > iou_thr).nonzero().squeeze(1)
    return p.index_select(0, index), q.index_select(0, index)


def _sweep_edges(
    boxes: torch.Tensor, groups: torch.Tensor, iou_thr: float, diou: bool, keep_all_groups: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs (p, q) of boxes of the same group whose IoU (DIoU if ``diou``) is
    > ``iou_thr`` (>= 0), as index tensors (E,) into ``boxes``, and the groups left to
    torchvision's kernel (bool (num groups,), their pairs not listed: groups whose boxes have
    more than ``_PAIRS_PER_BOX_FOR_TORCHVISION`` x-partners each on average; none for DIoU
    or with ``keep_all_groups``).

    With a group's boxes sorted by x1, q can overlap p by more than t only if
    x1_q < x2_p - t * w_p and y1_q < y2_p - t * h_p and y1_p < y2_q - t * h_q (IoU > t needs
    an overlap > t * max(w_p, w_q) in x and > t * max(h_p, h_q) in y; bounds loosened by a
    margin for float rounding). These tests run on strided windows of the next
    ``_SWEEP_WINDOW`` boxes (views, no copies); boxes with more x-partners get the rest listed
    explicitly. Only the pairs passing them get the exact IoU, computed as in torchvision's
    kernel (:func:`_kernel_iou`).
    """
    width = _SWEEP_WINDOW
    keys = groups << 32 | _ordered_bits(boxes[:, 0])
    by_x = keys.argsort()  # (N,) by group, then x1
    keys, grp, bx = (t.index_select(0, by_x) for t in (keys, groups, boxes))
    x1, y1, x2, y2 = bx.unbind(1)
    loose = 0.999 * max(iou_thr - 1e-5 if diou else iou_thr, 0.0)
    # keys of a box's x-partners are below its x_end
    x_end = grp << 32 | _ordered_bits(x2 - loose * (x2 - x1) + 1e-5 * (x1.abs() + x2.abs()))
    y_end = y2 - loose * (y2 - y1) + 1e-5 * (y1.abs() + y2.abs())  # (N,)

    def window(col: torch.Tensor, fill: float) -> torch.Tensor:  # (N, width): col[p + 1 .. p + width]
        return torch.cat([col, col.new_full((width,), fill)]).unfold(0, width, 1)[1:]

    in_x = window(keys, _INT64_MAX) < x_end[:, None]  # (N, width)
    near = in_x & (window(y1, math.inf) < y_end[:, None]) & (y1[:, None] < window(y_end, -math.inf))
    count = in_x.sum(1)  # x-partners of each box, exact below the window's width
    wide = in_x[:, -1].nonzero().squeeze(1)  # boxes with x-partners past the window
    count.index_copy_(0, wide, torch.searchsorted(keys, x_end.index_select(0, wide)) - wide - 1)
    num_groups = int(groups.max()) + 1
    group_pairs = torch.zeros(num_groups, dtype=torch.long, device=boxes.device).index_add_(0, grp, count)
    to_torchvision = group_pairs > _PAIRS_PER_BOX_FOR_TORCHVISION * torch.bincount(groups, minlength=num_groups)
    to_torchvision &= not (diou or keep_all_groups)
    tv_box = to_torchvision.index_select(0, grp)  # (N,)
    near &= ~tv_box[:, None]
    row, step = near.nonzero(as_tuple=True)
    p, q = [row], [row + 1 + step]
    wide = wide.index_select(0, (~tv_box.index_select(0, wide)).nonzero().squeeze(1))
    if wide.numel():  # the x-partners past the window, listed
        extra = count.index_select(0, wide) - width
        total = int(extra.sum())
        pw = wide.repeat_interleave(extra, output_size=total)
        first = (wide + width + 1 - (extra.cumsum(0) - extra)).repeat_interleave(extra, output_size=total)
        qw = torch.arange(total, device=boxes.device) + first
        ok = (y1.index_select(0, qw) < y_end.index_select(0, pw)) & (y1.index_select(0, pw) < y_end.index_select(0, qw))
        ok = ok.nonzero().squeeze(1)
        p.append(pw.index_select(0, ok))
        q.append(qw.index_select(0, ok))
    p, q = torch.cat(p), torch.cat(q)
    index = (_kernel_iou(bx, p, q, diou) > iou_thr).nonzero().squeeze(1)
    p, q = p.index_select(0, index), q.index_select(0, index)
    return by_x.index_select(0, p), by_x.index_select(0, q), to_torchvision


def _kernel_iou(boxes: torch.Tensor, p: torch.Tensor, q: torch.Tensor | None, diou: bool) -> torch.Tensor:
    """IoU (DIoU: box_iou's) of the box pairs (p, q), (E,); ``q`` None: every box in order
    (E = N, no copy of the boxes). The IoU with the operations of torchvision's CPU NMS
    kernel in its order, so every value is bit-identical to the one the kernel compares."""
    bp, bq = boxes.index_select(0, p), boxes if q is None else boxes.index_select(0, q)  # (E, 4)
    if diou:
        return box_iou(bp, bq, mode="diou", aligned=True)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (N,) as the kernel's
    wh = (torch.minimum(bp[:, 2:], bq[:, 2:]) - torch.maximum(bp[:, :2], bq[:, :2])).clamp_(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (area.index_select(0, p) + (area if q is None else area.index_select(0, q)) - inter)


def _greedy_nms(
    boxes: torch.Tensor, score: torch.Tensor, groups: torch.Tensor, num_groups: int, iou_thr: float, diou: bool
) -> torch.Tensor:
    """Greedy NMS within groups (``groups`` in [0, num_groups)): the kept mask (N,). A box
    outranks the boxes of its group with a lower score, and of equal scores the later ones;
    scores must be > 0 and N < 2**32.

    The top box of each group is kept, and every box it suppresses is not (one overlap per
    box, no sort). Suppressed boxes suppress nothing and the top suppresses none of the
    others, so the others' fate is their own greedy run without them: :func:`_cluster_nms` on
    what is left, in priority order (in trained-like output each group's top box takes most
    of its cluster).
    """
    pos = torch.arange(groups.numel(), device=groups.device)
    # the top of each group: the highest score, ties to the lowest index (score patterns order
    # like the scores; keys > 0 as patterns >= 1 and pos < 2**32)
    key = (score.view(torch.int32).long() << 32) - pos
    best = key.new_zeros(num_groups).scatter_reduce_(0, groups, key, "amax")
    top = best.index_select(0, groups).neg_().bitwise_and_(2**32 - 1)  # (N,) the top box of its group
    keep = top == pos  # the tops; the others are out unless Cluster-NMS on the rest keeps them
    # the rest: neither a top nor suppressed by its top (NaN IoU, 0/0: not suppressed)
    rest = (_kernel_iou(boxes, top, None, diou) > iou_thr).logical_or_(keep).logical_not_().nonzero().squeeze(1)
    if rest.numel():
        rest_groups = groups.index_select(0, rest)
        rest = rest.index_select(0, _score_key(rest_groups, score.index_select(0, rest)).argsort(stable=True))
        keep[rest] = _cluster_nms(boxes.index_select(0, rest), groups.index_select(0, rest), iou_thr, diou)
    return keep


def _cluster_nms(boxes: torch.Tensor, groups: torch.Tensor, iou_thr: float, diou: bool) -> torch.Tensor:
    """Greedy NMS within groups; boxes are in priority order (a box outranks every later box
    of its group) and ``groups`` sorted. Returns the kept mask (N,), N >= 1.

    The greedy result is the unique ``keep`` with keep[j] = no kept i < j suppresses j.
    It is found by iterating that equation from all-kept over the sparse list of
    suppressing pairs (Cluster-NMS, Zheng et al. 2021): after round r every box whose
    longest chain of suppressors is shorter than r is final, and a round that changes
    nothing has reached the fixed point — exactly the greedy set. Groups are independent:
    every ``_ROUNDS_BEFORE_TORCHVISION`` rounds the pairs of groups that no longer change are
    dropped, and a group still changing after ``_MAX_ROUNDS`` rounds goes to torchvision's
    kernel (hard NMS).
    """
    keep = torch.ones(groups.numel(), dtype=torch.bool, device=boxes.device)
    edges = _group_pair_edges(boxes, groups, iou_thr, diou)
    if edges is None:  # large groups: an x-sweep finds the pairs that can overlap enough
        p, q, to_torchvision = _sweep_edges(boxes, groups, iou_thr, diou)
        src, dst = torch.minimum(p, q), torch.maximum(p, q)  # the earlier box suppresses the later
    else:
        (src, dst), to_torchvision = edges, None
    hits = torch.zeros(groups.numel(), dtype=torch.int32, device=boxes.device)
    active = None  # boxes whose group may still change (None: all)
    for round_ in itertools.count(1):
        if not src.numel():
            break
        # no kept suppressor
        free = hits.zero_().index_add_(0, dst, keep.index_select(0, src).int()) == 0
        if active is not None:
            free = torch.where(active, free, keep)
        if torch.equal(free, keep):
            break
        if round_ % _ROUNDS_BEFORE_TORCHVISION == 0:
            # long suppression chains (grids of equal boxes): a group that did not change is at
            # its fixed point; the others go on alone, or to torchvision's kernel after
            # _MAX_ROUNDS rounds (hard NMS)
            num_groups = int(groups[-1]) + 1
            changing = torch.zeros(num_groups, dtype=torch.bool, device=boxes.device)
            changing.index_fill_(0, groups[free != keep], True)  # (G,)
            if round_ >= _MAX_ROUNDS and not diou:
                to_torchvision = changing if to_torchvision is None else to_torchvision | changing
                break
            active = changing.index_select(0, groups)
            live = active.index_select(0, dst).nonzero().squeeze(1)
            src, dst = src.index_select(0, live), dst.index_select(0, live)
        keep = free
    if to_torchvision is not None and to_torchvision.any():
        # torchvision's kernel per group (contiguous here), fed the priority order as distinct scores
        sizes = torch.bincount(groups, minlength=to_torchvision.numel())
        starts, sizes = (sizes.cumsum(0) - sizes).tolist(), sizes.tolist()
        for g in to_torchvision.nonzero().squeeze(1).tolist():
            start, stop = starts[g], starts[g] + sizes[g]
            rank = torch.arange(stop - start, 0, -1, dtype=torch.float32, device=boxes.device)
            group_keep = torch.zeros(stop - start, dtype=torch.bool, device=boxes.device)
            keep[start:stop] = group_keep.index_fill_(0, torchvision.ops.nms(boxes[start:stop], rank, iou_thr), True)
    return keep


def _soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    images: torch.Tensor,
    sigma: float,
    score_thr: float,
    max_det: int,
) -> torch.Tensor:
    """Gaussian soft-NMS within groups; the score of each box when selected, (N,), -inf for
    boxes that fell to ``score_thr`` or below first or that cannot be among the ``max_det``
    highest final scores of their image (``images``: (N,) sorted image index).

    Greedy soft-NMS selects the highest-scoring remaining box of a group, then decays every
    other remaining box, s_j <- s_j * exp(-IoU(M, b_j)^2 / sigma); see :func:`_soft_nms_rounds`.

    Only the ``max_det`` highest final scores of an image are output, so an image with more
    than 4k candidates (k = ``_SOFT_FIRST_CUT * max_det``) first runs on those scoring >= tau,
    its k-th highest score. That is exact for every selection scoring >= tau: a left-out box d
    (score s_d < tau) is never the highest remaining box of its group while one scores above
    s_d, so it neither decays nor blocks any box until its group's selections have fallen to
    s_d or below — and scores only fall. An image with ``max_det`` such selections (above
    ``score_thr``) is done: its other selections all score < tau. The other images run again
    with k four times as large (so a failed cut costs at most about a quarter more).
    """
    final = torch.full_like(scores, -math.inf)
    if not scores.numel():
        return final
    num_images = int(images[-1]) + 1
    todo = torch.arange(scores.numel(), device=scores.device)  # (T,) candidates of unfinished images
    k = _SOFT_FIRST_CUT * max_det
    while todo.numel():
        img = images[todo]
        tau = _kth_per_image(img, scores[todo], k, 4 * k, num_images)  # (B,), -inf: image not cut
        run = todo[scores[todo] >= tau[img]]  # (R,)
        run_img, run_tau = images[run], tau[images[run]]
        selected = _soft_nms_rounds(boxes[run], scores[run], groups[run], sigma, score_thr)  # (R,)
        exact = (selected >= run_tau) & (selected > score_thr)
        done = (tau == -math.inf) | (torch.bincount(run_img[exact], minlength=num_images) >= max_det)  # (B,)
        finished = done[run_img]
        final[run[finished]] = selected[finished].where(exact[finished], -math.inf)
        todo = todo[~done[img]]
        k *= 4
    return final


# _soft_nms first runs on this many times max_det candidates of each image (the highest scores)
_SOFT_FIRST_CUT = 4


def _kth_per_image(img: torch.Tensor, score: torch.Tensor, k: int, min_count: int, num_images: int) -> torch.Tensor:
    """(num_images,) the k-th highest score of each image with more than ``min_count`` >= k
    entries, -inf for the others; ``img`` is sorted."""
    counts = torch.bincount(img, minlength=num_images)
    kth = score.new_full((num_images,), -math.inf)
    most = int(counts.max()) if score.numel() else 0
    if most <= min_count:
        return kth
    rank = torch.arange(score.numel(), device=score.device) - (counts.cumsum(0) - counts)[img]
    padded = score.new_full((num_images, most), -math.inf)
    padded[img, rank] = score
    top = padded.topk(k, dim=1, sorted=False).values.amin(1)
    return torch.where(counts > min_count, top, kth)


def _soft_nms_rounds(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, sigma: float, score_thr: float
) -> torch.Tensor:
    """Gaussian soft-NMS within groups, all groups at once; the score of each box when
    selected, (N,), -inf for boxes that fell to ``score_thr`` or below first.

    Only overlapping boxes (IoU > 0) decay each other, and scores only fall, so a remaining
    box that outscores all its remaining overlapping boxes (ties: the lower index) is
    selected before any of them, at its current score, whatever happens elsewhere in the
    group. Each round therefore selects every such box at once and applies their decays: the
    same selections and scores as the one-box-a-step loop, in as many rounds as the longest
    chain of overlaps (a box decayed by several boxes of one round gets exp of the summed
    exponents: equal up to float rounding).
    """
    final = torch.full_like(scores, -math.inf)
    if not scores.numel():
        return final
    p, q, _ = _sweep_edges(boxes, groups, 0.0, diou=False, keep_all_groups=True)  # pairs with IoU > 0
    log_decay = -box_iou(boxes[p], boxes[q], aligned=True).square() / sigma  # (E,)
    p, q = torch.minimum(p, q), torch.maximum(p, q)  # p wins ties
    alive = scores > score_thr
    while alive.any():
        live = (alive[p] & alive[q]).nonzero().squeeze(1)  # pairs of remaining boxes
        p, q, log_decay = p[live], q[live], log_decay[live]
        p_first = scores[p] >= scores[q]  # (E,) p is selected before q
        winner, loser = torch.where(p_first, p, q), torch.where(p_first, q, p)
        selected = alive & (torch.bincount(loser, minlength=scores.numel()) == 0)  # beaten by no remaining box
        final = torch.where(selected, scores, final)
        alive &= ~selected
        hit = selected[winner]  # the loser is still remaining
        scores = scores * torch.zeros_like(scores).index_add_(0, loser, log_decay.where(hit, 0.0)).exp()
        alive &= scores > score_thr
    return final


def multiclass_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    score_thr: float = 0.05,
    iou_thr: float = 0.6,
    max_det: int = 100,
    pre_nms_topk: int = 1000,
    multi_label: bool = True,
    class_agnostic: bool = False,
    method: str = "hard",
    sigma: float = 0.5,
) -> list[Detections]:
    """Multi-class NMS over a batch of dense predictions, in one pass for the whole batch.

    Args:
        boxes: (B, A, 4) ``xyxy`` boxes of every anchor; finite.
        scores: (B, A, C) class probabilities (after sigmoid), not logits; finite.
        score_thr: candidates need a score > ``score_thr``; for ``"soft"`` also the final
            (decayed) score.
        iou_thr: ``"hard"``: suppress IoU > iou_thr; ``"diou"``: suppress
            IoU - rho^2 / c^2 > iou_thr; unused by ``"soft"``.
        max_det: detections kept per image (the highest scores); any integer-like number,
            values past int64 mean no limit.
        pre_nms_topk: candidates per image that enter NMS (the highest scores); as max_det.
        multi_label: every (anchor, class) pair above ``score_thr`` is a candidate;
            otherwise only each anchor's best class.
        class_agnostic: suppress across classes within an image instead of per class.
        method: ``"hard"`` (greedy NMS; the kept set is exactly that of
            :func:`torchvision.ops.nms` run per image and class), ``"soft"`` (Gaussian
            soft-NMS, Bodla et al. 2017: s_j <- s_j * exp(-IoU(M, b_j)^2 / sigma) each time
            a box M is selected in b_j's group) or ``"diou"`` (DIoU-NMS, Zheng et al. 2020;
            rho is the distance between the box centres and c the diagonal of their
            enclosing box).
        sigma: the Gaussian soft-NMS parameter.

    Returns:
        B :class:`Detections` (boxes (K, 4), scores (K,), labels (K,) long), K <= max_det,
        sorted by score (descending; equal scores by position in ``scores``). Boxes and
        scores are float32 (fp16/bf16 inputs are cast) on the input's device.

    Raises:
        ValueError: bad shapes or settings, or NaN / +-inf in ``boxes`` or ``scores``.

    ``scores`` is read once as a whole: the L2 norm of each anchor's scores is non-finite iff
    they hold NaN or +-inf (checked) and at least their max, so only the rows of anchors
    whose norm passes ``score_thr`` are searched for candidates.
    Hard and DIoU NMS first run on the max(4 * max_det, 1024) highest candidates of each
    image (greedy NMS keeps exactly the full run's survivors among any score-ordered prefix),
    again with 8 times as many for an image left with fewer than max_det survivors. They run
    every (image, class) group of the batch at once: each group's top box is kept and drops
    the boxes it suppresses; of the rest, every pair of small groups, or the pairs of a
    group that can overlap by more than ``iou_thr`` (a sweep over x with y bounds), get
    their overlap computed with the kernel's own float32 arithmetic, and greedy suppression
    is iterated to its fixed point over those pairs (Cluster-NMS); groups with very dense
    clusters or very long suppression chains go to torchvision's kernel. No float64
    anywhere (MPS has none).
    Soft-NMS runs all groups together, in rounds that each select every box outscoring its
    remaining overlapping boxes.
    """
    _check_inputs(boxes, scores)
    cfg = NMSSettings(score_thr, iou_thr, max_det, pre_nms_topk, multi_label, class_agnostic, method, sigma)
    checked = boxes, scores
    boxes, scores = boxes.float().contiguous(), scores.float().contiguous()  # views below need a flat layout
    norms = torch.linalg.vector_norm(scores, dim=-1)  # (B, A): the one pass over all scores
    _check_finite(*checked, norms)
    if cfg.method == "soft":
        return _detections(boxes, scores, norms, cfg, cfg.pre_nms_topk)[0]
    # Greedy NMS keeps a box iff no kept box of its group outranks and suppresses it, so on
    # the k highest candidates of an image it keeps exactly the full run's survivors among
    # them: an image with max_det survivors there is done; the others go again with 8 k.
    dets: list[Detections] = [None] * scores.shape[0]  # type: ignore[list-item]
    todo = list(range(scores.shape[0]))
    prefix = min(cfg.pre_nms_topk, max(4 * cfg.max_det, _FIRST_PREFIX))
    while todo:
        part, again = _detections(boxes, scores, norms, cfg, prefix)
        for i, det in zip(todo, part, strict=True):
            dets[i] = det
        if again:
            index = torch.tensor(again, device=boxes.device)
            boxes, scores, norms = boxes[index], scores[index], norms[index]
        todo = [todo[i] for i in again]
        prefix = min(cfg.pre_nms_topk, 8 * prefix)
    return dets


def _detections(
    boxes: torch.Tensor, scores: torch.Tensor, norms: torch.Tensor, cfg: NMSSettings, pre_nms_topk: int
) -> tuple[list[Detections], list[int]]:
    """NMS with ``cfg`` on the ``pre_nms_topk`` highest candidates of each image: the
    detections and the images that might have more survivors past that prefix (fewer than
    max_det kept while the prefix was full and shorter than ``cfg.pre_nms_topk``)."""
    num_images, _, num_classes = scores.shape
    if scores.numel():
        img, anchor, label, score = _candidates(scores, norms, cfg.score_thr, pre_nms_topk, cfg.multi_label)
    else:  # A = 0 or C = 0 (a max over an empty dim raises)
        img = anchor = label = torch.zeros(0, dtype=torch.long, device=scores.device)
        score = scores.new_zeros(0)
    cand_boxes = boxes.view(-1, 4).index_select(0, anchor)  # (N, 4)
    groups = img if cfg.class_agnostic else img * num_classes + label

    # candidates are by image, then position
    if cfg.method == "soft":
        score = _soft_nms(cand_boxes, score, groups, img, cfg.sigma, cfg.score_thr, cfg.max_det)
        keep = (score > cfg.score_thr).nonzero().squeeze(1)
    else:
        # torchvision compares the float32 IoU with the threshold as a double
        thr = _float32_below(cfg.iou_thr) if cfg.method == "hard" else cfg.iou_thr
        num_groups = num_images if cfg.class_agnostic else num_images * num_classes
        keep = _greedy_nms(cand_boxes, score, groups, num_groups, thr, cfg.method == "diou").nonzero().squeeze(1)
    top, counts = _top_per_image(img.index_select(0, keep), score.index_select(0, keep), cfg.max_det, num_images)
    keep = keep.index_select(0, top)  # by image, then score
    again = []
    if pre_nms_topk < cfg.pre_nms_topk:
        short = (counts < cfg.max_det) & (torch.bincount(img, minlength=num_images) >= pre_nms_topk)
        again = short.nonzero().squeeze(1).tolist()
    counts = counts.tolist()
    label, score = label.index_select(0, keep), score.index_select(0, keep)
    out_boxes = cand_boxes.index_select(0, keep)
    parts = zip(out_boxes.split(counts), score.split(counts), label.split(counts), strict=True)
    return [Detections(*part) for part in parts], again


@NMS.register()
class MultiClassNMS(nn.Module):
    """:func:`multiclass_nms` with its settings fixed, built from config:
    ``NMS.build({"type": "MultiClassNMS", "iou_thr": 0.7})``; called as ``nms(boxes, scores)``.
    Keyword arguments: those of :class:`NMSSettings`.
    """

    def __init__(self, **settings: object) -> None:
        super().__init__()
        self.settings = NMSSettings(**settings)

    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> list[Detections]:
        return multiclass_nms(boxes, scores, **dataclasses.asdict(self.settings))

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self.settings).items())
