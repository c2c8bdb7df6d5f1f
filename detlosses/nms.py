"""Batched multi-class non-maximum suppression for dense detectors.

:func:`multiclass_nms` turns the per-anchor boxes and class probabilities of a whole batch
into per-image detections, vectorised over the batch (no Python loop over images):

1. candidates: every (anchor, class) pair with score > ``score_thr`` (``multi_label``) or
   each anchor's best class when that score is > ``score_thr`` (single-label);
2. the ``pre_nms_topk`` highest-scoring candidates of each image go to NMS;
3. NMS runs within each (image, class) group, or within each image when
   ``class_agnostic``: ``"hard"`` (greedy, torchvision's kernel), ``"soft"`` (Gaussian
   soft-NMS) or ``"diou"`` (DIoU-NMS);
4. the ``max_det`` highest-scoring survivors of each image are returned, sorted by score.

There is no time limit: every image of the batch is processed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torchvision
from torch import nn

from ._validation import check_boxes, check_floating
from .boxes import box_iou
from .registry import NMS

__all__ = ["NMS_METHODS", "Detections", "MultiClassNMS", "multiclass_nms"]

NMS_METHODS = ("hard", "soft", "diou")
# Candidates per torchvision.ops.nms call (hard NMS): its cost grows with kept boxes times the
# boxes of the call, so the batch is split into calls of whole images near this size.
_NMS_CALL_SIZE = 512


class Detections(NamedTuple):
    """Detections of one image, sorted by score (descending).

    boxes: (K, 4) float32 ``xyxy``; scores: (K,) float32; labels: (K,) long class index.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def _check_params(score_thr: float, iou_thr: float, max_det: int, pre_nms_topk: int, method: str, sigma: float) -> None:
    if method not in NMS_METHODS:
        raise ValueError(f"method must be one of {NMS_METHODS}, got {method!r}")
    if not 0.0 <= iou_thr <= 1.0:
        raise ValueError(f"iou_thr must lie in [0, 1], got {iou_thr}")
    if not 0.0 <= score_thr <= 1.0:
        raise ValueError(f"score_thr must lie in [0, 1], got {score_thr}")
    for name, value in (("max_det", max_det), ("pre_nms_topk", pre_nms_topk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")


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


def _candidates(
    scores: torch.Tensor, score_thr: float, multi_label: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, anchor, label, score) of every candidate, each (N,), image-major; ``anchor``
    indexes the flattened (B * A) anchors.

    The (B, A, C) scores are read once, by a per-anchor max; only the rows of anchors whose
    max passes the threshold are gathered and searched. Everything runs on the float32 bit
    patterns as int32, which order like the floats for scores >= 0 and reduce several times
    faster; a negative score maps to a negative int and stays below any threshold >= 0, and
    a NaN maps above +inf, which is how it is caught (from the (B, A) maxima, not a full pass).
    Single-label ties go to the lowest class index.
    """
    num_anchors, num_classes = scores.shape[1:]
    if scores.numel() == 0:  # A = 0 or C = 0 (a max over an empty dim raises)
        empty = torch.zeros(0, dtype=torch.long, device=scores.device)
        return empty, empty, empty, scores.new_zeros(0)
    bits = scores.view(torch.int32)
    best = bits.amax(-1).reshape(-1)  # (B * A,) bits of each anchor's best score
    if best.max() > _POS_INF_BITS:
        raise ValueError("scores must not contain NaN (found in the (B, A, C) class probabilities)")
    thr_bits = _float_bits(score_thr)
    anchor = (best > thr_bits).nonzero().squeeze(1)  # (Na,)
    rows = bits.reshape(-1, num_classes).index_select(0, anchor)  # (Na, C)
    if multi_label:
        flat = (rows > thr_bits).view(-1).nonzero().squeeze(1)  # (N,) into rows.view(-1)
        label, score = flat % num_classes, rows.view(-1)[flat]
        anchor = anchor.index_select(0, flat // num_classes)
    else:
        score = best.index_select(0, anchor)  # (Na,)
        label = rows.argmax(1)  # the first class holding the max
    return anchor // num_anchors, anchor, label, score.view(torch.float32)


def _float_bits(value: float) -> int:
    """The int32 bit pattern of ``value`` rounded to float32."""
    return int(torch.tensor(value, dtype=torch.float32).view(torch.int32))


_POS_INF_BITS = _float_bits(math.inf)


def _top_per_image(img: torch.Tensor, order: torch.Tensor, k: int, num_images: int) -> torch.Tensor:
    """``order`` (indices by score, descending) regrouped image-major, at most ``k`` per image."""
    order = order[img[order].argsort(stable=True)]  # (N,) grouped by image, by score within
    counts = torch.bincount(img, minlength=num_images)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(order.numel(), device=order.device) - starts[img[order]]
    return order[rank < k]


def _grouped_hard_nms(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, images: torch.Tensor, iou_thr: float
) -> torch.Tensor:
    """Greedy NMS within each group with :func:`torchvision.ops.nms`; kept indices, image-major
    and by score (descending) within an image.

    Groups are kept apart by shifting each by ``group * span`` (span = coordinate range + 1),
    in float64, where adding these integer multiples to float32 coordinates is exact: the
    IoUs are those of the original boxes (a float32 shift loses ~0.01 px at batch scale and
    flips borderline decisions; unlike torchvision's coordinate trick this also holds for
    negative coordinates). The kernel compares every kept box with every later box of its
    call, so one call for the whole batch costs O(kept * N); instead consecutive whole
    images (``images`` is sorted) are packed into calls of at most ``_NMS_CALL_SIZE``
    candidates, an image with more taking a call of its own.
    """
    boxes64 = boxes.double()
    low, high = torch.aminmax(boxes64)
    shifted = boxes64 - low + (groups.double() * (high - low + 1))[:, None]  # (N, 4)
    scores64 = scores.double()
    bounds, end = [0], 0  # candidate ranges of the calls: whole images, <= _NMS_CALL_SIZE each
    for count in torch.bincount(images).tolist():
        if end > bounds[-1] and end + count - bounds[-1] > _NMS_CALL_SIZE:
            bounds.append(end)
        end += count
    bounds.append(end)
    keep = torch.cat([
        torchvision.ops.nms(shifted[start:stop], scores64[start:stop], iou_thr) + start
        for start, stop in itertools.pairwise(bounds)
    ])  # by score within each call
    return keep[images[keep].argsort(stable=True)]


def _sequential_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    num_groups: int,
    mode: str,
    update: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """Greedy selection run in every group at once; the score of each box when selected.

    Each step picks the highest-scoring remaining box of every group (ties: lowest index),
    records its current score, and calls ``update(scores, overlap)`` on the remaining boxes
    with their ``mode`` overlap (``box_iou``) to the box selected in their group; it returns
    the new scores and which boxes stay. Steps = the largest number of selections in a
    group, each a handful of (N,) operations. Returns (N,) with -inf for boxes never selected.
    """
    selected = torch.full_like(scores, float("-inf"))
    idx = torch.arange(scores.numel(), device=scores.device)  # remaining candidates
    while idx.numel():
        pos = torch.arange(idx.numel(), device=idx.device)
        best = scores.new_full((num_groups,), float("-inf"))
        best = best.scatter_reduce(0, groups, scores, "amax")
        is_best = scores == best[groups]
        first = pos.new_full((num_groups,), idx.numel()).scatter_reduce(
            0, groups, torch.where(is_best, pos, idx.numel()), "amin"
        )
        pick = first[groups]  # (M,) position of the box selected in each box's group
        chosen = pos == pick
        selected[idx[chosen]] = scores[chosen]
        overlap = box_iou(boxes, boxes[pick], mode=mode, aligned=True)  # (M,)
        scores, stay = update(scores, overlap)
        stay &= ~chosen
        idx, boxes, scores, groups = idx[stay], boxes[stay], scores[stay], groups[stay]
    return selected


def _run_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    groups: torch.Tensor,
    images: torch.Tensor,
    num_groups: int,
    method: str,
    score_thr: float,
    iou_thr: float,
    sigma: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept candidate indices, image-major and by their (possibly decayed) score within an
    image, descending; and those scores."""
    if method == "hard":
        keep = _grouped_hard_nms(boxes, scores, groups, images, iou_thr)
        return keep, scores[keep]
    if method == "soft":
        # Gaussian soft-NMS (Bodla et al. 2017): s_j <- s_j * exp(-IoU(M, b_j)^2 / sigma);
        # boxes at or below score_thr can no longer be kept and leave the loop.
        def update(s: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            s = s * torch.exp(-iou.square() / sigma)
            return s, s > score_thr

        final = _sequential_nms(boxes, scores, groups, num_groups, "iou", update)
    else:
        # DIoU-NMS (Zheng et al. 2020): suppress b_j when IoU - rho^2 / c^2 > iou_thr.
        def update(s: torch.Tensor, diou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return s, diou <= iou_thr

        final = _sequential_nms(boxes, scores, groups, num_groups, "diou", update)
    keep = (final > score_thr).nonzero().squeeze(1)
    keep = keep[final[keep].argsort(descending=True, stable=True)]
    keep = keep[images[keep].argsort(stable=True)]  # image-major, by score within an image
    return keep, final[keep]


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
        boxes: (B, A, 4) ``xyxy`` boxes of every anchor.
        scores: (B, A, C) class probabilities (after sigmoid), not logits.
        score_thr: candidates need a score > ``score_thr``; for ``"soft"`` also the final
            (decayed) score.
        iou_thr: ``"hard"``: suppress IoU > iou_thr; ``"diou"``: suppress
            IoU - rho^2 / c^2 > iou_thr; unused by ``"soft"``.
        max_det: detections kept per image (the highest scores).
        pre_nms_topk: candidates per image that enter NMS (the highest scores).
        multi_label: every (anchor, class) pair above ``score_thr`` is a candidate;
            otherwise only each anchor's best class.
        class_agnostic: suppress across classes within an image instead of per class.
        method: ``"hard"`` (greedy NMS, :func:`torchvision.ops.nms` on group-shifted
            boxes), ``"soft"`` (Gaussian soft-NMS, Bodla et al. 2017:
            s_j <- s_j * exp(-IoU(M, b_j)^2 / sigma) each time a box M is selected in b_j's
            group) or ``"diou"`` (DIoU-NMS, Zheng et al. 2020; rho is the distance between
            the box centres and c the diagonal of their enclosing box).
        sigma: the Gaussian soft-NMS parameter.

    Returns:
        B :class:`Detections` (boxes (K, 4), scores (K,), labels (K,) long), K <= max_det,
        sorted by score (descending). Boxes and scores are float32 (fp16/bf16 inputs are
        cast) on the input's device.

    Hard NMS keeps exactly what :func:`torchvision.ops.nms` keeps run per image and class
    (a few kernel calls for the batch, each over whole images with exact float64 group
    shifts). Soft and DIoU NMS run
    all groups of the batch together, one vectorised step per selection (steps = the largest
    number of selections in one group).
    """
    _check_inputs(boxes, scores)
    _check_params(score_thr, iou_thr, max_det, pre_nms_topk, method, sigma)
    boxes, scores = boxes.float(), scores.float()
    num_images, num_classes = scores.shape[0], scores.shape[2]

    img, anchor, label, score = _candidates(scores, score_thr, multi_label)
    if score.numel() and torch.bincount(img).max() > pre_nms_topk:
        top = _top_per_image(img, score.argsort(descending=True, stable=True), pre_nms_topk, num_images)
        anchor, img, label, score = anchor[top], img[top], label[top], score[top]
    cand_boxes = boxes.reshape(-1, 4).index_select(0, anchor)  # (N, 4)
    if score.numel():
        groups = img if class_agnostic else img * num_classes + label
        num_groups = num_images if class_agnostic else num_images * num_classes
        keep, score = _run_nms(cand_boxes, score, groups, img, num_groups, method, score_thr, iou_thr, sigma)
        img, label, cand_boxes = img[keep], label[keep], cand_boxes[keep]

    counts = torch.bincount(img, minlength=num_images)
    if score.numel() and counts.max() > max_det:  # keep is by score within an image: cut at max_det
        top = _top_per_image(img, torch.arange(len(img), device=img.device), max_det, num_images)
        img, label, score, cand_boxes = img[top], label[top], score[top], cand_boxes[top]
        counts = counts.clamp(max=max_det)
    counts = counts.tolist()
    parts = zip(cand_boxes.split(counts), score.split(counts), label.split(counts), strict=True)
    return [Detections(*part) for part in parts]


@NMS.register()
class MultiClassNMS(nn.Module):
    """Module form of :func:`multiclass_nms`, built from config:
    ``NMS.build({"type": "MultiClassNMS", "iou_thr": 0.7})``; called as ``nms(boxes, scores)``.
    """

    def __init__(
        self,
        score_thr: float = 0.05,
        iou_thr: float = 0.6,
        max_det: int = 100,
        pre_nms_topk: int = 1000,
        multi_label: bool = True,
        class_agnostic: bool = False,
        method: str = "hard",
        sigma: float = 0.5,
    ) -> None:
        super().__init__()
        _check_params(score_thr, iou_thr, max_det, pre_nms_topk, method, sigma)
        self.score_thr = score_thr
        self.iou_thr = iou_thr
        self.max_det = max_det
        self.pre_nms_topk = pre_nms_topk
        self.multi_label = multi_label
        self.class_agnostic = class_agnostic
        self.method = method
        self.sigma = sigma

    def forward(self, boxes: torch.Tensor, scores: torch.Tensor) -> list[Detections]:
        return multiclass_nms(boxes, scores, **self._kwargs())

    def _kwargs(self) -> dict:
        return {
            "score_thr": self.score_thr,
            "iou_thr": self.iou_thr,
            "max_det": self.max_det,
            "pre_nms_topk": self.pre_nms_topk,
            "multi_label": self.multi_label,
            "class_agnostic": self.class_agnostic,
            "method": self.method,
            "sigma": self.sigma,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._kwargs().items())
