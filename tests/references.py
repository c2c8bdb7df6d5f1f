"""Plain references written from the documented semantics, for the tests (and benchmarks).

Nothing here imports a private name of detlosses: each reference restates its formula with
dense tensors or loops, the slow obvious way.
"""

from __future__ import annotations

import torch

from detlosses.assigners import AssignResult
from detlosses.boxes import box_iou

# ==================================================================================== assigners


def _rank_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Along the last dim, True for the ``k`` largest values; ties go to the lower index."""
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(values.shape[-1]).expand_as(order))
    return rank < k


def dense_task_aligned(
    pred_scores: torch.Tensor,
    pred_bboxes: torch.Tensor,
    anchor_points: torch.Tensor,
    gt_labels: torch.Tensor,
    gt_bboxes: torch.Tensor,
    gt_mask: torch.Tensor,
    topk: int = 13,
    alpha: float = 1.0,
    beta: float = 6.0,
    eps: float = 1e-9,
    iou_type: str = "iou",
    order: str = "inside_first",
    resolve: str = "claimants",
    inside_margin: float = 1e-9,
    min_gt_size: float = 0.0,
) -> AssignResult:
    """DESIGN.md's task-aligned assignment (steps 1-5, every variant) on dense (B, G, A) tensors."""
    b, a, c = pred_scores.shape
    g = gt_labels.shape[1]
    pred_scores, pred_bboxes = pred_scores.float(), pred_bboxes.float()
    gt_bboxes, anchor_points = gt_bboxes.float(), anchor_points.float()
    if g == 0:
        return AssignResult(
            torch.full((b, a), c, dtype=torch.long),
            torch.zeros(b, a, 4),
            torch.zeros(b, a, c),
            torch.zeros(b, a, dtype=torch.bool),
            torch.zeros(b, a, dtype=torch.long),
        )
    # 1. inside, on the GT boxes grown to min_gt_size about their centres
    test = gt_bboxes.clone()
    if min_gt_size > 0:
        centre = (gt_bboxes[..., :2] + gt_bboxes[..., 2:]) / 2
        size = gt_bboxes[..., 2:] - gt_bboxes[..., :2]
        size = torch.where(size < min_gt_size, torch.full_like(size, min_gt_size), size)
        test = torch.cat([centre - size / 2, centre + size / 2], -1)
    x, y = anchor_points[:, 0], anchor_points[:, 1]  # (A,)
    inside = (
        (x - test[..., 0:1] > inside_margin)
        & (y - test[..., 1:2] > inside_margin)
        & (test[..., 2:3] - x > inside_margin)
        & (test[..., 3:4] - y > inside_margin)
    ) & gt_mask[..., None]  # (B, G, A)
    # 2. t = s**alpha * overlap**beta for every (GT, anchor) pair
    overlap = box_iou(pred_bboxes[:, None], gt_bboxes[:, :, None], mode=iou_type, aligned=True)  # (B, G, A)
    if iou_type == "ciou":
        overlap = overlap.clamp(min=0)
    score = torch.gather(pred_scores.transpose(1, 2), 1, gt_labels.clamp(0, c - 1)[..., None].expand(b, g, a))
    metric = (score.double() ** alpha * overlap.double() ** beta).float()  # (B, G, A)
    # 3. claims
    pool = inside if order == "inside_first" else gt_mask[..., None].expand(b, g, a)
    claimed = _rank_mask(torch.where(pool, metric, -1.0), min(topk, a)) & pool & (metric > 0)
    if order == "topk_first":
        claimed &= inside
    # 4. one GT per claimed anchor
    contested = claimed.sum(1) > 1  # (B, A)
    rivals = {"claimants": claimed, "inside": inside, "all": gt_mask[..., None].expand(b, g, a)}[resolve]
    rivals = torch.where(contested[:, None], rivals, claimed)
    winner = torch.where(rivals, overlap, -torch.inf).argmax(1)  # (B, A), first maximum = lowest GT
    fg = claimed.any(1)
    won = torch.zeros_like(claimed).scatter_(1, winner[:, None], fg[:, None])  # (B, G, A)
    # 5. scores: t * max overlap / (max t + eps) over the anchors each GT holds
    held_metric = metric * won
    max_metric = held_metric.amax(-1, keepdim=True)
    max_overlap = (overlap * won).amax(-1, keepdim=True)
    quality = (held_metric * max_overlap / (max_metric + eps)).gather(1, winner[:, None])[:, 0]  # (B, A)
    labels = torch.where(fg, gt_labels.gather(1, winner), c)
    bboxes = torch.where(fg[..., None], gt_bboxes.gather(1, winner[..., None].expand(b, a, 4)), 0.0)
    scores = torch.zeros(b, a, c + 1).scatter_(2, labels[..., None], quality[..., None])[..., :c]
    return AssignResult(labels, bboxes, scores, fg, torch.where(fg, winner, 0))

