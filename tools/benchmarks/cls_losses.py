"""Forward+backward time of the classification-family losses against reference code.

Part of ``python tools/bench.py losses [--n 16384 --classes 80 --reg-max 16 --repeat 20]``.

Each reference row re-states how a well-known library computes the same formula (the
file it mirrors is named in the comment above it), except torchvision's focal loss,
which is called directly. Timing: ``loss.sum().backward()`` on CPU, ours and the
reference interleaved in every round, median over ``repeat`` rounds after two warm-up rounds.
DFL is timed on ``n`` boxes x 4 sides x (reg_max + 1) bins.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from detlosses.losses.distribution_focal import distribution_focal_loss
from detlosses.losses.focal import sigmoid_focal_loss
from detlosses.losses.quality_focal import quality_focal_loss
from detlosses.losses.varifocal import varifocal_loss

from ._timing import interleaved_median_ms, timing_row

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# mmdet/models/losses/focal_loss.py: py_sigmoid_focal_loss (the pure-PyTorch path)
def _mmdet_focal(pred: torch.Tensor, target: torch.Tensor, alpha=0.25, gamma=2.0) -> torch.Tensor:
    pred_sigmoid = pred.sigmoid()
    pt = (1 - pred_sigmoid) * target + pred_sigmoid * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    return F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight


# mmdet/models/losses/gfocal_loss.py: quality_focal_loss_tensor_target (dense soft target)
def _mmdet_qfl(pred: torch.Tensor, target: torch.Tensor, beta=2.0) -> torch.Tensor:
    pred_sigmoid = pred.sigmoid()
    loss = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none")
    loss = loss * pred_sigmoid.pow(beta)
    pos = target != 0
    scale = target[pos] - pred_sigmoid[pos]
    loss[pos] = F.binary_cross_entropy_with_logits(pred[pos], target[pos], reduction="none") * scale.abs().pow(beta)
    return loss


# the dense one-line form (BCE * |t - p|**beta), e.g. mmdet gfocal_loss.py's
# quality_focal_loss_with_prob on logits, PaddleDetection's soft-target focal loss
def _dense_qfl(pred: torch.Tensor, target: torch.Tensor, beta=2.0) -> torch.Tensor:
    scale = (pred.sigmoid() - target).abs().pow(beta)
    return F.binary_cross_entropy_with_logits(pred, target, reduction="none") * scale


# mmdet/models/losses/varifocal_loss.py: varifocal_loss (iou_weighted=True)
def _mmdet_vfl(pred: torch.Tensor, target: torch.Tensor, alpha=0.75, gamma=2.0) -> torch.Tensor:
    pred_sigmoid = pred.sigmoid()
    focal_weight = (
        target * (target > 0.0).float() + alpha * (pred_sigmoid - target).abs().pow(gamma) * (target <= 0.0).float()
    )
    return F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight


# ultralytics/utils/loss.py: VarifocalLoss.forward (label = one-hot of positives)
def _ultralytics_vfl(pred: torch.Tensor, target: torch.Tensor, alpha=0.75, gamma=2.0) -> torch.Tensor:
    label = (target > 0).float()
    weight = alpha * pred.sigmoid().pow(gamma) * (1 - label) + target * label
    return F.binary_cross_entropy_with_logits(pred.float(), target.float(), reduction="none") * weight


# mmdet/models/losses/gfocal_loss.py: distribution_focal_loss (on (R, n_bins), (R,))
def _mmdet_dfl(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    pred, label = pred.reshape(-1, pred.shape[-1]), label.reshape(-1)
    dis_left = label.long()
    dis_right = dis_left + 1
    weight_left = dis_right.float() - label
    weight_right = label - dis_left.float()
    return (
        F.cross_entropy(pred, dis_left, reduction="none") * weight_left
        + F.cross_entropy(pred, dis_right, reduction="none") * weight_right
    )


# ultralytics/utils/loss.py: DFLoss.__call__ (without the final mean over the 4 sides)
def _ultralytics_dfl(pred_dist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    reg_max = pred_dist.shape[-1]
    target = target.clamp(0, reg_max - 1 - 0.01)
    tl = target.long()
    tr = tl + 1
    wl = tr - target
    wr = 1 - wl
    flat = pred_dist.reshape(-1, reg_max)
    return (
        F.cross_entropy(flat, tl.view(-1), reduction="none").view(tl.shape) * wl
        + F.cross_entropy(flat, tr.view(-1), reduction="none").view(tl.shape) * wr
    )


def _soft_targets(n: int, classes: int, generator: torch.Generator) -> torch.Tensor:
    """One positive class on ~10% of the rows, with an IoU-like quality in (0.1, 1)."""
    target = torch.zeros(n, classes)
    rows = torch.nonzero(torch.rand(n, generator=generator) < 0.1).squeeze(1)
    cols = torch.randint(classes, (rows.numel(),), generator=generator)
    target[rows, cols] = 0.1 + 0.9 * torch.rand(rows.numel(), generator=generator)
    return target


def _fwd_bwd(fn: Loss, logits: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    """A thunk running ``fn(logits, target).sum().backward()`` on a leaf copy of ``logits``."""
    x = logits.detach().clone().requires_grad_()

    def step() -> None:
        x.grad = None
        fn(x, target).sum().backward()

    return step


def run(args: argparse.Namespace) -> list[dict]:
    n, classes, repeat = args.n, args.classes, args.repeat
    n_bins = args.reg_max + 1
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(n, classes, generator=generator) * 2.0 - 3.0
    soft = _soft_targets(n, classes, generator)
    hard = (soft > 0).float()
    dist_logits = torch.randn(n, 4, n_bins, generator=generator)
    dist_target = torch.rand(n, 4, generator=generator) * (n_bins - 1)

    cases = [
        ("FocalLoss", sigmoid_focal_loss, logits, hard, [
            ("torchvision.ops.sigmoid_focal_loss", tv_sigmoid_focal_loss),
            ("mmdet py_sigmoid_focal_loss", _mmdet_focal),
        ]),
        ("QualityFocalLoss", quality_focal_loss, logits, soft, [
            ("mmdet quality_focal_loss_tensor_target", _mmdet_qfl),
            ("dense BCE*abs(t-p)^beta (autograd)", _dense_qfl),
        ]),
        ("VarifocalLoss", varifocal_loss, logits, soft, [
            ("mmdet varifocal_loss", _mmdet_vfl),
            ("ultralytics VarifocalLoss", _ultralytics_vfl),
        ]),
        ("DistributionFocalLoss", distribution_focal_loss, dist_logits, dist_target, [
            ("mmdet distribution_focal_loss", _mmdet_dfl),
            ("ultralytics DFLoss", _ultralytics_dfl),
        ]),
    ]  # fmt: skip
    rows = []
    for name, ours, x, target, refs in cases:
        for ref_name, ref in refs:
            ours_ms, ref_ms = interleaved_median_ms([_fwd_bwd(ours, x, target), _fwd_bwd(ref, x, target)], repeat, 2)
            rows.append(timing_row(name, "x".join(map(str, x.shape)), ref_name, ours_ms, ref_ms))
    return rows
