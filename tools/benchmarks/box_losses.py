"""Box losses and pairwise IoU: detlosses vs torchvision.ops and plain re-statements.

Rows: forward+backward time of each IoU-family loss on ``--n`` aligned box pairs, next
to torchvision.ops where it has the op (GIoU, DIoU, CIoU) and otherwise next to a plain
re-statement of the formula as mmdetection computes it (mmdet/models/losses/iou_loss.py);
then pairwise ``box_iou`` against torchvision.ops.box_iou / generalized_box_iou.
Times are medians over ``--repeat`` interleaved runs (ours and the reference alternate, so
a noisy machine hurts both alike); ``ratio`` = ours / reference (< 1 is faster).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch
import torchvision.ops as tv

from detlosses.boxes import box_iou
from detlosses.losses.iou import iou_loss

from ._timing import interleaved_median_ms, timing_row


def _random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 600
    wh = torch.rand(n, 2, generator=generator) * 120 + 1
    return torch.cat((xy, xy + wh), dim=1)


# --- plain re-statements in mmdetection's style (mirror mmdet/models/losses/iou_loss.py:
# iou_loss(mode="linear") and siou_loss(neg_gamma=True, the paper's sign); mmdet's eiou_loss
# smooths 1 - IoU, so the EIoU reference is the paper's formula in the same style).
# Written from the formulas, not copied.
def _mm_inter_union(pred: torch.Tensor, target: torch.Tensor, eps: float):
    lt = torch.max(pred[:, :2], target[:, :2])
    rb = torch.min(pred[:, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    ap = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    ag = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    union = ap + ag - overlap + eps
    return overlap / union


def _mm_iou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    return 1 - _mm_inter_union(pred, target, eps)


def _mm_enclose(pred: torch.Tensor, target: torch.Tensor, eps: float):
    wh = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(min=0)
    return wh[:, 0], wh[:, 1]


def _mm_eiou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    ious = _mm_inter_union(pred, target, eps)
    cw, ch = _mm_enclose(pred, target, eps)
    rho2 = (
        (target[:, 0] + target[:, 2] - pred[:, 0] - pred[:, 2]) ** 2
        + (target[:, 1] + target[:, 3] - pred[:, 1] - pred[:, 3]) ** 2
    ) / 4
    w1, h1 = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1]
    w2, h2 = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
    return 1 - ious + rho2 / (cw**2 + ch**2 + eps) + (w1 - w2) ** 2 / (cw**2 + eps) + (h1 - h2) ** 2 / (ch**2 + eps)


def _mm_siou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    ious = _mm_inter_union(pred, target, eps)
    cw, ch = _mm_enclose(pred, target, eps)
    cw, ch = cw.clamp(min=eps), ch.clamp(min=eps)
    w1, h1 = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1] + eps
    w2, h2 = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1] + eps
    s_cw = (target[:, 0] + target[:, 2] - pred[:, 0] - pred[:, 2]) * 0.5 + eps
    s_ch = (target[:, 1] + target[:, 3] - pred[:, 1] - pred[:, 3]) * 0.5 + eps
    sigma = torch.pow(s_cw**2 + s_ch**2, 0.5)
    sin1, sin2 = s_cw.abs() / sigma, s_ch.abs() / sigma
    sin_alpha = torch.where(sin1 > math.sqrt(2) / 2, sin2, sin1)
    angle = torch.cos(torch.asin(sin_alpha) * 2 - math.pi / 2)
    gamma = angle - 2
    dist = 2 - torch.exp(gamma * (s_cw / cw) ** 2) - torch.exp(gamma * (s_ch / ch) ** 2)
    om_w = (w1 - w2).abs() / torch.max(w1, w2)
    om_h = (h1 - h2).abs() / torch.max(h1, h2)
    shape = (1 - torch.exp(-om_w)) ** 4 + (1 - torch.exp(-om_h)) ** 4
    return 1 - (ious - 0.5 * (dist + shape))


LOSS_ROWS: list[tuple[str, str, Callable]] = [
    ("iou", "mmdet iou_loss (re-stated)", _mm_iou_loss),
    ("giou", "torchvision generalized_box_iou_loss", tv.generalized_box_iou_loss),
    ("diou", "torchvision distance_box_iou_loss", tv.distance_box_iou_loss),
    ("ciou", "torchvision complete_box_iou_loss", tv.complete_box_iou_loss),
    ("eiou", "mmdet eiou_loss (re-stated)", _mm_eiou_loss),
    ("siou", "mmdet siou_loss (re-stated)", _mm_siou_loss),
]


def run(args: argparse.Namespace) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    pred0, target = _random_boxes(args.n, gen), _random_boxes(args.n, gen)
    pred0[: args.n // 2] = target[: args.n // 2] + torch.randn(args.n // 2, 4, generator=gen) * 5  # overlapping half
    pred = pred0.clone().requires_grad_(True)

    def fwd_bwd(fn: Callable) -> Callable[[], None]:
        def step() -> None:
            pred.grad = None
            fn(pred, target).sum().backward()

        return step

    rows = []
    for mode, ref_name, ref_fn in LOSS_ROWS:
        ours_ms, ref_ms = interleaved_median_ms(
            [fwd_bwd(lambda p, t, m=mode: iou_loss(p, t, mode=m)), fwd_bwd(ref_fn)], args.repeat
        )
        rows.append(timing_row(f"iou_loss(mode={mode!r})", f"{args.n}x4", ref_name, ours_ms, ref_ms))

    n, m = (int(v) for v in args.pairwise.lower().split("x"))
    a, b = _random_boxes(n, gen), _random_boxes(m, gen)
    for mode, ref_name, ref_fn in (
        ("iou", "torchvision box_iou", tv.box_iou),
        ("giou", "torchvision generalized_box_iou", tv.generalized_box_iou),
    ):
        with torch.no_grad():
            ours_ms, ref_ms = interleaved_median_ms(
                [lambda mode=mode: box_iou(a, b, mode=mode), lambda f=ref_fn: f(a, b)],
                max(3, args.repeat // 10),
            )
        rows.append(timing_row(f"box_iou(mode={mode!r}), no grad", f"{n}x{m} pairs", ref_name, ours_ms, ref_ms))
    return rows
