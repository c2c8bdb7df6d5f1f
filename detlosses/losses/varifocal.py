"""Varifocal loss (VarifocalNet; the classification loss of PP-YOLOE).

Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector", CVPR 2021
(arXiv:2008.13367).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..registry import LOSSES
from ._reduction import WeightedLoss
from ._sigmoid import as_float_pair, bce_with_logits, check_nonnegative

__all__ = ["VarifocalLoss", "varifocal_loss"]


class _VarifocalFunction(torch.autograd.Function):
    """VFL = B * w, w = t where t > 0 else alpha * p**g, with a fused backward (once_differentiable).

    Forward quantities: p = sigmoid(x), B = BCE(x, t), pos = [t > 0] (a 0/1 float), w.
    Saved for backward: x, t, p, B, pos, w.

    The weight is differentiated too (as mmdetection and ultralytics do: they do not detach
    it). Chain rule, with dB/dx = p - t, dB/dt = -x, d(alpha * p**g)/dx = g * alpha * p**g *
    (1 - p) = g * w * (1 - p) on negatives, and dw/dt = pos:

    dVFL/dx = w * [(p - t) + (1 - pos) * g * B * (1 - p)]
    dVFL/dt = -x * w + pos * B

    (no division, so nothing to guard at p == 0). ``tests/references.py`` restates VFL with
    plain autograd; the tests compare values and both gradients in float64.
    """

    @staticmethod
    def forward(ctx, x, t, alpha: float, gamma: float):
        p = torch.sigmoid(x)
        bce = bce_with_logits(x, t)
        pos = torch.sign(t).clamp_min_(0.0)  # 1.0 where t > 0, else 0.0
        w = p * p if gamma == 2 else p.pow(gamma)
        w.mul_(alpha).lerp_(t, pos)  # exact at the ends: t where pos, alpha p**g elsewhere
        ctx.gamma = gamma
        ctx.save_for_backward(x, t, p, bce, pos, w)
        return bce * w

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, t, p, bce, pos, w = ctx.saved_tensors
        grad_x = grad_t = None
        if ctx.needs_input_grad[0]:
            n = torch.addcmul(bce, p, bce, value=-1.0)  # BCE * (1 - p)
            n.addcmul_(n, pos, value=-1.0).mul_(ctx.gamma)  # g * BCE * (1 - p) where t <= 0
            grad_x = n.add_(p).sub_(t).mul_(w).mul_(grad)
        if ctx.needs_input_grad[1]:
            grad_t = torch.mul(bce, pos).addcmul_(x, w, value=-1.0).mul_(grad)
        return grad_x, grad_t, None, None


def varifocal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.75, gamma: float = 2.0) -> torch.Tensor:
    """Varifocal loss, element-wise (no reduction).

    ``VFL = BCE(x, t) * (t if t > 0 else alpha * sigmoid(x)**gamma)``: positives (t > 0,
    t the IoU-aware target score) are weighted by their target, negatives are
    down-weighted focally. The gradient flows through ``alpha * sigmoid(x)**gamma`` as in
    mmdetection's ``varifocal_loss`` and ultralytics' ``VarifocalLoss``, whose values and
    gradients this reproduces.

    Args:
        logits: ``(...)`` float logits; fp16/bf16 are computed in float32.
        target: ``(...)`` IoU-aware targets in [0, 1] (0 for negatives), same shape.
        alpha: weight of the negatives, >= 0.
        gamma: focusing exponent of the negatives, >= 0.

    Returns:
        ``(...)`` loss of the logits' shape (float32, or float64 for float64 logits).

    Gradients flow to ``logits`` and, if it requires grad, to ``target`` (fused closed
    form, no second derivatives).

    Raises:
        ValueError: non-float logits, a target of another shape, a target outside [0, 1] or
            NaN (one ``aminmax`` over it and one host read), or a bad hyperparameter. NaN/inf
            logits are not checked: they propagate to the loss, as in torch.nn.functional.
    """
    alpha = check_nonnegative("alpha", alpha)
    gamma = check_nonnegative("gamma", gamma)
    x, t = as_float_pair(logits, target)
    return _VarifocalFunction.apply(x, t, alpha, gamma)


@LOSSES.register()
class VarifocalLoss(WeightedLoss):
    """Varifocal loss module (VarifocalNet, PP-YOLOE); see :func:`varifocal_loss`.

    ``loss(logits (..., C), target (..., C), weight=None, avg_factor=None)``; with
    ``avg_factor`` the result is ``loss_weight * sum(VFL * weight) / avg_factor``.
    """

    def __init__(
        self,
        alpha: float = 0.75,
        gamma: float = 2.0,
        loss_weight: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(loss_weight, reduction)
        self.alpha = check_nonnegative("alpha", alpha)
        self.gamma = check_nonnegative("gamma", gamma)

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return varifocal_loss(pred, target, self.alpha, self.gamma)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, {super().extra_repr()}"
