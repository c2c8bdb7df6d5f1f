"""Reference implementations for the tests: plain autograd formulas written from the papers.

Nothing here imports a private name of detlosses. The losses-and-boxes section imports nothing
from it at all: each function restates its paper's formula with ordinary torch ops, so autograd
differentiates it and the tests compare our fused kernels' values and gradients with it (in
float64). The assigners section restates the documented semantics with dense tensors, the slow
obvious way, on the public ``box_iou`` (itself checked against torchvision) and returns the
public ``AssignResult``. Sections are headed by the components they serve.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from detlosses.assigners import AssignResult
from detlosses.boxes import box_iou

# --- losses and boxes ---
# Classification losses take logits x and a dense soft target t in [0, 1] of the same shape.


def bce(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Element-wise binary cross-entropy of logits."""
    return F.binary_cross_entropy_with_logits(x, t, reduction="none")


def focal_loss(x: torch.Tensor, t: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Lin et al. 2017, eq. 5 with soft targets: FL = alpha_t (1 - p_t)^gamma BCE; alpha < 0: no alpha_t."""
    p = torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    loss = bce(x, t) * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


def quality_focal_loss(x: torch.Tensor, t: torch.Tensor, beta: float = 2.0, alpha: float | None = None) -> torch.Tensor:
    """Li et al. 2020 (GFL), eq. 2: QFL = |t - p|^beta BCE; with alpha also * (alpha t + (1 - alpha)(1 - t))."""
    loss = bce(x, t) * (t - torch.sigmoid(x)).abs() ** beta
    if alpha is not None:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


def varifocal_loss(x: torch.Tensor, t: torch.Tensor, alpha: float = 0.75, gamma: float = 2.0) -> torch.Tensor:
    """Zhang et al. 2021 (VarifocalNet), eq. 2: BCE weighted by t where t > 0, else by alpha p^gamma."""
    weight = torch.where(t > 0, t, alpha * torch.sigmoid(x) ** gamma)
    return bce(x, t) * weight


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor, right_margin: float = 0.01) -> torch.Tensor:
    """Li et al. 2020 (GFL), eq. 6: DFL = -((y_r - y) log S_l + (y - y_l) log S_r), y clamped to n - 1 - margin."""
    n_bins = logits.shape[-1]
    y = target.clamp(0, n_bins - 1 - right_margin)
    left = y.detach().floor().long()
    log_p = torch.log_softmax(logits, dim=-1)
    log_left = log_p.gather(-1, left.unsqueeze(-1)).squeeze(-1)
    log_right = log_p.gather(-1, (left + 1).unsqueeze(-1)).squeeze(-1)
    return -((left + 1 - y) * log_left + (y - left) * log_right)


# Box losses on aligned xyxy boxes (N, 4) -> (N,). ``eps`` sits where detlosses documents it
# (IoU = I / (U + eps), every other denominator + eps); with eps = 0 these are the papers'
# formulas exactly.


def _sizes(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0), (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def _iou_union(pred: torch.Tensor, target: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    wp, hp = _sizes(pred)
    wt, ht = _sizes(target)
    iw = (torch.min(pred[:, 2], target[:, 2]) - torch.max(pred[:, 0], target[:, 0])).clamp(min=0)
    ih = (torch.min(pred[:, 3], target[:, 3]) - torch.max(pred[:, 1], target[:, 1])).clamp(min=0)
    inter = iw * ih
    union = wp * hp + wt * ht - inter
    return inter / (union + eps), union


def _enclosure(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cw = torch.max(pred[:, 2], target[:, 2]) - torch.min(pred[:, 0], target[:, 0])
    ch = torch.max(pred[:, 3], target[:, 3]) - torch.min(pred[:, 1], target[:, 1])
    return cw, ch


def _centre_offset(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sx = (target[:, 0] + target[:, 2] - pred[:, 0] - pred[:, 2]) / 2
    sy = (target[:, 1] + target[:, 3] - pred[:, 1] - pred[:, 3]) / 2
    return sx, sy


def iou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """1 - IoU."""
    return 1 - _iou_union(pred, target, eps)[0]


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Rezatofighi et al. 2019: 1 - IoU + (|C| - U) / |C|, C the smallest enclosing box."""
    iou, union = _iou_union(pred, target, eps)
    cw, ch = _enclosure(pred, target)
    area_c = cw * ch
    return 1 - iou + (area_c - union) / (area_c + eps)


def diou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Zheng et al. 2020: 1 - IoU + rho^2 / c^2, rho the centre distance, c the enclosure diagonal."""
    iou, _ = _iou_union(pred, target, eps)
    cw, ch = _enclosure(pred, target)
    sx, sy = _centre_offset(pred, target)
    return 1 - iou + (sx**2 + sy**2) / (cw**2 + ch**2 + eps)


def ciou_aspect_term(pred: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """CIoU's v = 4/pi^2 (atan(wg/hg) - atan(w/h))^2 and alpha = v / (1 - IoU + v), both differentiable."""
    iou, _ = _iou_union(pred, target, eps)
    wp, hp = _sizes(pred)
    wt, ht = _sizes(target)
    v = 4 / math.pi**2 * (torch.atan(wt / (ht + eps)) - torch.atan(wp / (hp + eps))) ** 2
    return v, v / (1 - iou + v + eps)


def ciou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Zheng et al. 2020: DIoU + alpha v (see :func:`ciou_aspect_term`).

    alpha is a constant in the backward pass (the paper's eq. 12 note; torchvision does the same).
    """
    v, alpha = ciou_aspect_term(pred, target, eps)
    return diou_loss(pred, target, eps) + alpha.detach() * v


def eiou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Zhang et al. 2021 (arXiv:2101.08158): DIoU + (w - wg)^2 / cw^2 + (h - hg)^2 / ch^2."""
    wp, hp = _sizes(pred)
    wt, ht = _sizes(target)
    cw, ch = _enclosure(pred, target)
    return diou_loss(pred, target, eps) + (wp - wt) ** 2 / (cw**2 + eps) + (hp - ht) ** 2 / (ch**2 + eps)


def siou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Gevorgyan 2022 (arXiv:2205.12740), in the paper's arcsin form, theta = 4.

    Angle cost L = cos(2 arcsin(sin a) - pi/2), sin a = min(|sx|, |sy|) / sigma; gamma = 2 - L;
    distance cost sum_t 1 - exp(-gamma (s_t / c_t)^2); shape cost sum_t (1 - exp(-|w - wg| / max(w, wg)))^4;
    loss = 1 - IoU + (distance + shape) / 2. ``eps`` enters the IoU only.
    """
    iou, _ = _iou_union(pred, target, eps)
    sx, sy = _centre_offset(pred, target)
    sigma = torch.sqrt(sx**2 + sy**2)
    sin_alpha = torch.minimum(sx.abs(), sy.abs()) / sigma
    angle = torch.cos(2 * torch.asin(sin_alpha) - math.pi / 2)
    gamma = 2 - angle
    cw, ch = _enclosure(pred, target)
    distance = (1 - torch.exp(-gamma * (sx / cw) ** 2)) + (1 - torch.exp(-gamma * (sy / ch) ** 2))
    wp, hp = _sizes(pred)
    wt, ht = _sizes(target)
    omega_w = (wp - wt).abs() / torch.max(wp, wt)
    omega_h = (hp - ht).abs() / torch.max(hp, ht)
    shape = (1 - torch.exp(-omega_w)) ** 4 + (1 - torch.exp(-omega_h)) ** 4
    return 1 - iou + (distance + shape) / 2


BOX_LOSSES = {
    "iou": iou_loss,
    "giou": giou_loss,
    "diou": diou_loss,
    "ciou": ciou_loss,
    "eiou": eiou_loss,
    "siou": siou_loss,
}


# --- assigners ---


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
