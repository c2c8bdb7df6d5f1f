"""Steps the assigners share (private).

The input checks of the common call signature, the per-anchor conflict resolution of
(GT, anchor) claims, and the construction of an :class:`AssignResult` from the winning
claims. Claims are kept as flat index vectors: ``slot = b * A + a`` names an anchor of an
image and ``gt_flat = b * G + g`` a GT row of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._validation import check_boxes, check_floating
from ..boxes import box_iou
from .assign_result import AssignResult


def _check_inputs(
    pred_scores: torch.Tensor,
    pred_bboxes: torch.Tensor,
    anchor_points: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_bboxes: torch.Tensor,
    gt_mask: torch.Tensor,
) -> None:
    """ValueError naming the argument and the expected shape for inconsistent inputs."""
    check_floating("pred_scores", pred_scores)
    if pred_scores.dim() != 3:
        raise ValueError(f"pred_scores must have shape (B, A, C), got {tuple(pred_scores.shape)}")
    b, a, _ = pred_scores.shape
    check_boxes("pred_bboxes", pred_bboxes)
    if pred_bboxes.shape != (b, a, 4):
        raise ValueError(f"pred_bboxes must have shape (B, A, 4) = {(b, a, 4)}, got {tuple(pred_bboxes.shape)}")
    check_floating("anchor_points", anchor_points)
    if anchor_points.shape != (a, 2):
        raise ValueError(f"anchor_points must have shape (A, 2) = {(a, 2)}, got {tuple(anchor_points.shape)}")
    if not isinstance(gt_labels, torch.Tensor) or gt_labels.dim() != 2 or gt_labels.shape[0] != b:
        shape = tuple(gt_labels.shape) if isinstance(gt_labels, torch.Tensor) else type(gt_labels).__name__
        raise ValueError(f"gt_labels must have shape (B, G) with B = {b}, got {shape}")
    g = gt_labels.shape[1]
    if gt_labels.is_floating_point() or gt_labels.is_complex() or gt_labels.dtype == torch.bool:
        raise ValueError(f"gt_labels must be an integer (long) tensor of shape (B, G), got dtype {gt_labels.dtype}")
    check_boxes("gt_bboxes", gt_bboxes)
    if gt_bboxes.shape != (b, g, 4):
        raise ValueError(f"gt_bboxes must have shape (B, G, 4) = {(b, g, 4)}, got {tuple(gt_bboxes.shape)}")
    if not isinstance(gt_mask, torch.Tensor) or gt_mask.dtype != torch.bool:
        dtype = gt_mask.dtype if isinstance(gt_mask, torch.Tensor) else type(gt_mask).__name__
        raise ValueError(f"gt_mask must be a bool tensor of shape (B, G) = {(b, g)}, got {dtype}")
    if gt_mask.shape != (b, g):
        raise ValueError(f"gt_mask must have shape (B, G) = {(b, g)}, got {tuple(gt_mask.shape)}")
    _check_values(pred_scores, pred_bboxes, gt_bboxes, gt_mask)
    num_classes = pred_scores.shape[2]
    valid_labels = gt_labels[gt_mask]
    if valid_labels.numel() and (valid_labels.min() < 0 or valid_labels.max() >= num_classes):
        raise ValueError(
            f"gt_labels must lie in [0, C) = [0, {num_classes}) where gt_mask is True, "
            f"got values in [{int(valid_labels.min())}, {int(valid_labels.max())}]"
        )


def _check_values(
    pred_scores: torch.Tensor, pred_bboxes: torch.Tensor, gt_bboxes: torch.Tensor, gt_mask: torch.Tensor
) -> None:
    """ValueError for NaN/inf inputs and for scores outside [0, 1]: one reduction per tensor.

    Padding rows (``gt_mask`` False) may hold anything; a NaN anywhere else would silently
    drop anchors (every comparison with NaN is False).
    """
    if not ((pred_scores >= 0) & (pred_scores <= 1)).all():
        if not torch.isfinite(pred_scores).all():
            raise ValueError("pred_scores must be finite probabilities in [0, 1], got NaN or inf")
        lo, hi = pred_scores.aminmax()
        raise ValueError(
            f"pred_scores must be probabilities in [0, 1] (apply sigmoid to logits first), "
            f"got values in [{float(lo):.4g}, {float(hi):.4g}]"
        )
    if not torch.isfinite(pred_bboxes).all():
        raise ValueError("pred_bboxes must be finite, got NaN or inf")
    if not (torch.isfinite(gt_bboxes).all(-1) | ~gt_mask).all():
        raise ValueError("gt_bboxes must be finite on every valid row (gt_mask True), got NaN or inf")


def _resolve_claims(slot: torch.Tensor, gt_flat: torch.Tensor, priority: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Keep, per anchor, the claim with the highest ``priority``; ties go to the lowest GT.

    Args:
        slot: (P,) long anchor slot ``b * A + a`` of each claim; (slot, gt_flat) pairs unique.
        gt_flat: (P,) long GT row ``b * G + g`` of each claim.
        priority: (P,) float, finite.
        num_slots: B * A.

    Returns:
        (P,) bool, exactly one True per claimed slot.
    """
    best = priority.new_full((num_slots,), -torch.inf).scatter_reduce(0, slot, priority, "amax")
    is_best = priority == best[slot]  # (P,)
    no_gt = torch.iinfo(gt_flat.dtype).max
    candidate_gt = torch.where(is_best, gt_flat, no_gt)
    winner = gt_flat.new_full((num_slots,), no_gt).scatter_reduce(0, slot, candidate_gt, "amin")
    return is_best & (gt_flat == winner[slot])


def _best_gt_of_image(
    boxes: torch.Tensor, image: torch.Tensor, gt_boxes: torch.Tensor, valid: torch.Tensor, mode: str = "iou"
) -> torch.Tensor:
    """For each of (M,) boxes, the valid GT of its image with the highest overlap (ties: lowest row).

    Args:
        boxes: (M, 4) xyxy; image: (M,) long image index; gt_boxes: (B, G, 4);
        valid: (V,) long flat rows ``b * G + g`` of the valid GTs; mode: ``"iou"`` or
            ``"ciou"`` (clamped at 0).

    Returns:
        (M,) long flat GT rows ``b * G + g``. Processed in chunks of ~2M (box, GT) pairs.
    """
    b, g, _ = gt_boxes.shape
    gt_valid = torch.zeros(b * g, dtype=torch.bool, device=boxes.device)
    gt_valid[valid] = True
    gt_valid = gt_valid.view(b, g)
    rows = max(1, (1 << 21) // max(g, 1))
    winners = [image.new_zeros(0)]
    for start in range(0, boxes.shape[0], rows):
        chunk = image[start : start + rows]  # (M_c,)
        overlap = box_iou(boxes[start : start + rows, None], gt_boxes[chunk], mode=mode, aligned=True)  # (M_c, G)
        if mode == "ciou":
            overlap = overlap.clamp(min=0)
        overlap = overlap.masked_fill(~gt_valid[chunk], -torch.inf)
        winners.append(chunk * g + overlap.argmax(1))  # first maximum = lowest GT row
    return torch.cat(winners)


def _build_result(
    slot: torch.Tensor,
    gt_flat: torch.Tensor,
    quality: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_bboxes: torch.Tensor,
    num_anchors: int,
    num_classes: int,
) -> AssignResult:
    """AssignResult from the winning claims (one per foreground slot).

    Args:
        slot: (P,) long ``b * A + a``; gt_flat: (P,) long ``b * G + g``;
        quality: (P,) float32 score target placed at the GT's class.
        gt_labels: (B, G) long; gt_bboxes: (B, G, 4) float32.
    """
    b, g = gt_labels.shape
    device = gt_labels.device
    labels = torch.full((b * num_anchors,), num_classes, dtype=torch.long, device=device)
    bboxes = torch.zeros(b * num_anchors, 4, dtype=torch.float32, device=device)
    scores = torch.zeros(b * num_anchors, num_classes, dtype=torch.float32, device=device)
    fg_mask = torch.zeros(b * num_anchors, dtype=torch.bool, device=device)
    gt_index = torch.zeros(b * num_anchors, dtype=torch.long, device=device)
    if slot.numel():
        cls = gt_labels.reshape(-1).long()[gt_flat]  # (P,)
        labels[slot] = cls
        bboxes[slot] = gt_bboxes.reshape(-1, 4)[gt_flat]
        scores[slot, cls] = quality
        fg_mask[slot] = True
        gt_index[slot] = gt_flat % g
    return AssignResult(
        labels.view(b, num_anchors),
        bboxes.view(b, num_anchors, 4),
        scores.view(b, num_anchors, num_classes),
        fg_mask.view(b, num_anchors),
        gt_index.view(b, num_anchors),
    )


def _inside_mask(points: torch.Tensor, boxes: torch.Tensor, eps: float) -> torch.Tensor:
    """Whether each point lies strictly inside each box: every side distance > ``eps``.

    ``points`` (..., 2) and ``boxes`` (..., 4) broadcast against each other -> (...) bool.
    """
    return _inside_sides(points.unbind(-1), boxes.unbind(-1), eps)


def _inside_sides(point: Sequence[torch.Tensor], box: Sequence[torch.Tensor], eps: float) -> torch.Tensor:
    """:func:`_inside_mask` from the coordinates: ``point`` (x, y) and ``box`` (x1, y1, x2, y2), broadcastable.

    One comparison at a time, so only one float temporary of the output size is alive.
    """
    x, y = point
    inside = (x - box[0]) > eps
    inside &= (y - box[1]) > eps
    inside &= (box[2] - x) > eps
    inside &= (box[3] - y) > eps
    return inside


def _default_chunk(num_anchors: int, chunk_size: int | None, budget: int = 1 << 22) -> int:
    """GT rows per chunk: ``chunk_size`` or as many as keep a (rows, A) temporary <= ``budget``."""
    if chunk_size is not None:
        return chunk_size
    return max(1, budget // max(num_anchors, 1))


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def _topk_mask(values: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Mask of the ``k`` largest (or smallest) values of each row; ties go to the lower index.

    ``values`` (N, M) without NaN, ``k <= M`` -> (N, M) bool with exactly ``k`` True per row.
    (``torch.topk`` alone leaves the order of tied values unspecified.)
    """
    kth = values.topk(k, dim=1, largest=largest).values[:, -1:]  # (N, 1)
    better = values > kth if largest else values < kth
    tied = values == kth
    return better | (tied & (tied.cumsum(1) <= k - better.sum(1, keepdim=True)))
