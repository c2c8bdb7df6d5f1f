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
# Box pairs whose overlap is computed at once: bounds the memory of the pair kernel and keeps
# its temporaries in cache.
_PAIR_CHUNK = 1 << 17
# A group whose boxes have more than this many window partners each, on average, goes to
# torchvision's kernel instead (it skips suppressed boxes, which pays off in heavy clusters).
_PAIRS_PER_BOX_FOR_TORCHVISION = 24
# Fixed-point rounds of the hard-NMS kernel before the groups still changing go to torchvision.
_ROUNDS_BEFORE_TORCHVISION = 8


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
    descending; scores must be > 0 and finite (their int32 bit patterns then order like them)."""
    return (prefix << 31) | (0x7FFFFFFF - score.view(torch.int32)).long()


def _ordered_bits(x: torch.Tensor) -> torch.Tensor:
    """int64 in [0, 2**32) ordering like the float32 values ``x`` (-0.0 counts as 0.0)."""
    bits = (x + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).long() + 2**31


def _first_per_image(img: torch.Tensor, k: int, num_images: int) -> torch.Tensor:
    """Mask of the first ``k`` entries of each image; ``img`` is sorted."""
    counts = torch.bincount(img, minlength=num_images)
    starts = counts.cumsum(0) - counts
    return torch.arange(img.numel(), device=img.device) - starts[img] < k


def _top_per_image(img: torch.Tensor, score: torch.Tensor, k: int, num_images: int, always_sort: bool = True):
    """Indices of the ``k`` highest scores of each image, sorted by image, then score
    (descending), then index; ``img`` is sorted and scores are > 0. Without
    ``always_sort``, an input with no image past ``k`` comes back as it is (all indices).

    Images with more than ``k`` entries first find their k-th highest score with one
    ``topk`` over an image-padded copy, so only about ``k`` entries per image are sorted.
    """
    idx = torch.arange(score.numel(), device=score.device)
    counts = torch.bincount(img, minlength=num_images)
    cut = score.numel() > 0 and int(counts.max()) > k
    if not (cut or always_sort):
        return idx
    if cut:
        rank = idx - (counts.cumsum(0) - counts)[img]
        padded = score.new_full((num_images, int(counts.max())), -math.inf)
        padded[img, rank] = score
        kth = padded.topk(k, dim=1, sorted=False).values.amin(1)  # (B,), -inf below k entries
        idx = (score >= kth[img]).nonzero().squeeze(1)  # ties at the k-th score are all here
    idx = idx[_score_key(img[idx], score[idx]).argsort(stable=True)]
    if cut:
        idx = idx[_first_per_image(img[idx], k, num_images)]
    return idx


def _candidates(
    scores: torch.Tensor, score_thr: float, pre_nms_topk: int, multi_label: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, anchor, label, score) of the candidates, each (N,): at most ``pre_nms_topk``
    per image, image-major; within an image by position in ``scores``, or after a top-k cut
    by score (descending), then position; ``anchor``
    indexes the flattened (B * A) anchors. ``scores`` must be finite.

    ``scores`` is read once, by a per-anchor max; only the rows of anchors whose max passes
    the threshold and ranks among the ``pre_nms_topk`` highest of its image are gathered (no
    pair outside them can be among the image's top k). The search runs on the float32 bit
    patterns as int32, which order like the floats for scores >= 0 and reduce faster; a
    negative score has a negative pattern and stays below any threshold >= 0. Single-label
    ties go to the lowest class index.
    """
    num_images, num_anchors, num_classes = scores.shape
    bits = scores.view(torch.int32)
    thr = _float_bits(score_thr)
    best = bits.amax(-1)  # (B, A)
    is_cand = best > thr  # (B, A)
    anchor_cut = num_anchors > pre_nms_topk and int(torch.count_nonzero(is_cand, 1).max()) > pre_nms_topk
    if anchor_cut:
        kth = best.topk(pre_nms_topk, dim=1, sorted=False).values.amin(1, keepdim=True)  # (B, 1)
        is_cand &= best >= kth
    if not multi_label:
        img, anchor = is_cand.nonzero(as_tuple=True)  # (Na,) each, image-major
        if 4 * img.numel() > is_cand.numel():  # most anchors (epoch 1): one pass, no gather
            label = scores.max(-1).indices[img, anchor]  # the first class holding the max
        else:
            label = bits[img, anchor].argmax(1)
        score = best[img, anchor].view(torch.float32)
        top = _top_per_image(img, score, pre_nms_topk, num_images, always_sort=False)
        return img[top], img[top] * num_anchors + anchor[top], label[top], score[top]

    img, anchor = is_cand.nonzero(as_tuple=True)  # (Na,) each, image-major
    if 2 * img.numel() < is_cand.numel():  # gather the rows of the candidate anchors, image-padded
        counts = torch.bincount(img, minlength=num_images)
        slot = torch.arange(img.numel(), device=img.device) - (counts.cumsum(0) - counts)[img]
        anchor_of = anchor.new_zeros(num_images, int(counts.max()))
        anchor_of[img, slot] = anchor
        rows = bits.new_full((*anchor_of.shape, num_classes), torch.iinfo(torch.int32).min)
        rows[img, slot] = bits[img, anchor]  # (B, S, C)
    else:  # most anchors: all rows (one below the threshold has no pair above it)
        anchor_of, rows = None, bits
    flat = rows.reshape(num_images, -1)  # (B, S * C)
    index = (flat > thr).view(-1).nonzero().squeeze(1)  # (N,) into flat, by image, then position
    img, score = index // flat.shape[1], flat.view(-1)[index].view(torch.float32)
    top = _top_per_image(img, score, pre_nms_topk, num_images, always_sort=False)
    img, pair, score = img[top], index[top] % flat.shape[1], score[top]
    anchor = pair // num_classes if anchor_of is None else anchor_of[img, pair // num_classes]
    return img, img * num_anchors + anchor, pair % num_classes, score


def _float_bits(value: float) -> int:
    """The int32 bit pattern of ``value`` rounded to float32."""
    return int(torch.tensor(value, dtype=torch.float32).view(torch.int32))


def _check_finite(boxes: torch.Tensor, scores: torch.Tensor) -> None:
    """NaN (either sign bit) or +-inf in either input: a ValueError naming it. One reduction
    each (a sum: finite iff every element is, unless it overflows, which the exact check
    after it tells apart) and one host sync."""
    names = ("boxes", "scores")
    sums = torch.stack([boxes.sum(dtype=torch.float32), scores.sum(dtype=torch.float32)])
    for name, tensor, ok in zip(names, (boxes, scores), torch.isfinite(sums).tolist(), strict=True):
        if not ok and not torch.isfinite(tensor).all():
            raise ValueError(f"{name} must be finite: found NaN or +-inf")


def _float32_below(value: float) -> float:
    """The largest float32 <= ``value``: for a float32 ``x``, ``x > value`` iff ``x > this``."""
    f = torch.tensor(value, dtype=torch.float32)
    if f.item() > value:
        f = torch.nextafter(f, torch.tensor(-math.inf))
    return f.item()


def _window_iou(cols: list[torch.Tensor], p: torch.Tensor, width: int) -> torch.Tensor:
    """(P, width) IoU of each box p with boxes p + 1 .. p + width of the (padded) columns
    x1, y1, x2, y2, area, with the operations of torchvision's CPU NMS kernel in its order,
    so every value is bit-identical to the one the kernel compares."""
    (x1p, y1p, x2p, y2p, area_p), (x1q, y1q, x2q, y2q, area_q) = (
        [c[p, None] for c in cols],
        [c.unfold(0, width, 1).index_select(0, p + 1) for c in cols],  # runs of `width`
    )
    w = (torch.minimum(x2p, x2q) - torch.maximum(x1p, x1q)).clamp_(min=0)
    h = (torch.minimum(y2p, y2q) - torch.maximum(y1p, y1q)).clamp_(min=0)
    inter = w.mul_(h)
    return inter.div_((area_p + area_q).sub_(inter))


def _suppression_edges(
    boxes: torch.Tensor, groups: torch.Tensor, iou_thr: float, diou: bool = False, keep_all_groups: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair (p, q), p < q, of boxes of the same group whose IoU (DIoU if ``diou``)
        is > ``iou_thr``, as index tensors (E,), and the groups left to torchvision's kernel
        (bool (num groups,); none for DIoU or with ``keep_all_groups``).

        Only pairs that can overlap by more than ``iou_thr`` are looked at: IoU > t needs an
        x-overlap > t * max(w_p, w_q), so with the group's boxes sorted by x1 the partners of p
        are the next boxes with x1 < x2_p - t * w_p (counted by one ``searchsorted``; the bound
        is loosened by a margin that covers float rounding, the exact test decides). Their IoUs
        are computed for boxes with similar numbers of partners together, each against its next
    (group's most) partners, read as strided windows of the x-sorted columns. DIoU <= IoU
        (box_iou's, up to rounding), so DIoU pairs are the IoU pairs above t - 1e-5 that pass
        box_iou's DIoU test.
    """
    num = groups.numel()
    keys = groups << 32 | _ordered_bits(boxes[:, 0])
    by_x = keys.argsort()  # (N,) by group, then x1
    keys = keys[by_x]
    grp, bx = groups[by_x], boxes[by_x]
    x1s, x2s = bx[:, 0], bx[:, 2]
    bound = x2s - (0.999 * iou_thr) * (x2s - x1s) + 1e-5 * (x1s.abs() + x2s.abs())
    end = torch.searchsorted(keys, grp << 32 | _ordered_bits(bound), right=True)  # (N,)
    pos = torch.arange(num, device=boxes.device)
    count = (end - pos - 1).clamp_(min=0)  # window partners of each box
    num_groups = int(groups.max()) + 1
    group_pairs = torch.zeros(num_groups, dtype=torch.long, device=boxes.device).index_add_(0, grp, count)
    group_size = torch.bincount(groups, minlength=num_groups)
    to_torchvision = group_pairs > _PAIRS_PER_BOX_FOR_TORCHVISION * group_size
    to_torchvision &= not (diou or keep_all_groups)
    count = count.masked_fill_(to_torchvision[grp], 0)

    # boxes with 2**(k-1) < partners <= 2**k share a window of width 2**k: at most twice the work
    width_class = torch.frexp(count.float()).exponent  # (N,) k, 0 for no partners
    pad = bx.new_zeros(2 * int(count.max()) + 1 if num else 1, 4)
    x1, y1, x2, y2 = torch.cat([bx, pad]).unbind(1)
    cols = [x1, y1, x2, y2, (x2 - x1) * (y2 - y1)]  # (N + pad,) contiguous; areas as the kernel's
    thr = iou_thr - 1e-5 if diou else iou_thr
    src, dst = [], []
    widest = int(count.max()) if num else 0
    if widest * num <= _PAIR_CHUNK:  # small: every box in one call, at the widest window
        width_class = torch.where(count > 0, widest.bit_length(), 0)
    for k in torch.bincount(width_class).nonzero().squeeze(1).tolist():  # the classes present
        if k == 0:
            continue
        width = 1 << k
        members = (width_class == k).nonzero().squeeze(1)
        for p in members.split(max(1, _PAIR_CHUNK // width)):
            hit = _window_iou(cols, p, width) > thr  # (P, width)
            hit &= torch.arange(width, device=hit.device) < count[p, None]
            row, step = hit.nonzero(as_tuple=True)
            src.append(p[row])
            dst.append(p[row] + 1 + step)
    empty = torch.zeros(0, dtype=torch.long, device=boxes.device)
    p, q = (torch.cat(src), torch.cat(dst)) if src else (empty, empty)
    if diou:
        hit = box_iou(bx[p], bx[q], mode="diou", aligned=True) > iou_thr
        p, q = p[hit], q[hit]
    return by_x[p], by_x[q], to_torchvision


def _greedy_nms(
    boxes: torch.Tensor,
    groups: torch.Tensor,
    iou_thr: float,
    diou: bool,
) -> torch.Tensor:
    """Greedy NMS within groups; boxes are in priority order (a box outranks every later box
    of its group). Returns the kept mask (N,).

    The greedy result is the unique ``keep`` with keep[j] = no kept i < j suppresses j.
    It is found by iterating that equation from all-kept over the sparse list of
    suppressing pairs (Cluster-NMS, Zheng et al. 2021): after round r every box whose
    longest chain of suppressors is shorter than r is final, and a round that changes
    nothing has reached the fixed point — exactly the greedy set. A group still changing
    after ``_ROUNDS_BEFORE_TORCHVISION`` rounds goes to torchvision's kernel (hard NMS).
    """
    keep = torch.ones(groups.numel(), dtype=torch.bool, device=boxes.device)
    if not groups.numel():
        return keep
    p, q, to_torchvision = _suppression_edges(boxes, groups, iou_thr, diou)
    src, dst = torch.minimum(p, q), torch.maximum(p, q)  # the earlier box suppresses the later
    for round_ in itertools.count(1):
        if not src.numel():
            break
        suppressed = torch.zeros_like(keep)
        suppressed[dst[keep[src]]] = True
        changed = suppressed == keep  # (N,) where the next keep differs
        if not changed.any():
            break
        keep = ~suppressed
        if round_ == _ROUNDS_BEFORE_TORCHVISION and not diou:
            # long suppression chains (grids of equal boxes): the groups still changing (the
            # others are at their fixed point) go to torchvision's kernel
            to_torchvision = to_torchvision.index_fill(0, groups[changed], True)
            break
    if to_torchvision.any():
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
    p, q, _ = _suppression_edges(boxes, groups, 0.0, keep_all_groups=True)  # pairs with IoU > 0
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

    Hard and DIoU NMS run every (image, class) group of the batch at once: the pairs of a
    group that can overlap by more than ``iou_thr`` (a sweep over x) get their overlap
    computed with the kernel's own float32 arithmetic, and greedy suppression is iterated
    to its fixed point over those pairs (Cluster-NMS); groups with very dense clusters or
    long suppression chains go to torchvision's kernel. No float64 anywhere (MPS has none).
    Soft-NMS runs all groups together, in rounds that each select every box outscoring its
    remaining overlapping boxes.
    """
    _check_inputs(boxes, scores)
    cfg = NMSSettings(score_thr, iou_thr, max_det, pre_nms_topk, multi_label, class_agnostic, method, sigma)
    _check_finite(boxes, scores)
    boxes, scores = boxes.float(), scores.float()
    num_images, _, num_classes = scores.shape
    if scores.numel():
        img, anchor, label, score = _candidates(scores, cfg.score_thr, cfg.pre_nms_topk, cfg.multi_label)
    else:  # A = 0 or C = 0 (a max over an empty dim raises)
        img = anchor = label = torch.zeros(0, dtype=torch.long, device=scores.device)
        score = scores.new_zeros(0)
    cand_boxes = boxes.reshape(-1, 4).index_select(0, anchor)  # (N, 4)
    groups = img if cfg.class_agnostic else img * num_classes + label

    # candidates are by image, then position or score; equal scores always by position
    if cfg.method == "soft":
        score = _soft_nms(cand_boxes, score, groups, img, cfg.sigma, cfg.score_thr, cfg.max_det)
        keep = (score > cfg.score_thr).nonzero().squeeze(1)
    else:
        # torchvision compares the float32 IoU with the threshold as a double
        thr = _float32_below(cfg.iou_thr) if cfg.method == "hard" else cfg.iou_thr
        # priority within a group: score (descending), then position
        prio = _score_key(groups, score).argsort(stable=True)
        kept = _greedy_nms(cand_boxes[prio], groups[prio], thr, cfg.method == "diou")
        keep = torch.zeros_like(kept).index_put_((prio,), kept).nonzero().squeeze(1)
    keep = keep[_top_per_image(img[keep], score[keep], cfg.max_det, num_images)]  # by image, score
    img, label, score, cand_boxes = img[keep], label[keep], score[keep], cand_boxes[keep]
    counts = torch.bincount(img, minlength=num_images).tolist()
    parts = zip(cand_boxes.split(counts), score.split(counts), label.split(counts), strict=True)
    return [Detections(*part) for part in parts]


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
