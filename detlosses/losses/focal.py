"""Sigmoid focal loss (RetinaNet).

Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (arXiv:1708.02002).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .._validation import check_number
from ..registry import LOSSES
from ._reduction import WeightedLoss
from ._sigmoid import TINY, alpha_weight, as_float_pair, bce_with_logits, check_nonnegative, mul

__all__ = ["FocalLoss", "sigmoid_focal_loss"]


class _SigmoidFocalFunction(torch.autograd.Function):
    """FL = a_t * B * m**g with a fused backward (once_differentiable: no second derivatives).

    Forward quantities: p = sigmoid(x), B = BCE(x, t), m = 1 - p_t = p + t - 2pt,
    a_t = a*t + (1 - a)*(1 - t) (absent when alpha is disabled).
    Saved for backward: x, t, p, B, a_t, m and m**(g-1).

    Chain rule, with dB/dx = p - t, dm/dx = (1 - 2t) * p(1 - p), dB/dt = -x, dm/dt = 1 - 2p
    and da_t/dt = 2a - 1:

    dFL/dx = a_t * [(p - t) * m**g + g * B * m**(g-1) * (1 - 2t) * p(1 - p)]
    dFL/dt = (2a - 1) * B * m**g + a_t * [-x * m**g + g * B * m**(g-1) * (1 - 2p)]

    ``m**g`` is kept as ``m * m**(g-1)``; for 0 < g < 1 the power is taken of ``m`` clamped
    to the smallest normal float, so where m == 0 (then p*(1-p) == 0 as well) the x
    gradient is 0 rather than ``inf * 0 = NaN``. gamma == 0 (BCE; p is only computed in
    the backward pass) and gamma == 2 (multiplies, no pow) are special-cased.
    ``tests/references.py`` restates FL with plain autograd; the tests compare values and
    both gradients in float64.
    """

    @staticmethod
    def forward(ctx, x, t, alpha: float | None, gamma: float):
        need_t = ctx.needs_input_grad[1]
        bce = bce_with_logits(x, t)
        a_t = alpha_weight(t, alpha)
        if gamma == 0:
            p = m = m_g1 = None
            if not need_t:  # BCE itself is not needed for the x gradient: scale it in place
                loss, bce = mul(bce, a_t), None
            else:
                loss = bce if a_t is None else bce * a_t
        else:
            p = torch.sigmoid(x)
            m = torch.addcmul(p, p, t, value=-2.0).add_(t)  # 1 - p_t
            m_g1 = None if gamma == 1 else m if gamma == 2 else m.clamp_min(TINY).pow_(gamma - 1.0)
            loss = mul(mul(bce * m, m_g1), a_t)
        ctx.alpha, ctx.gamma = alpha, gamma
        ctx.save_for_backward(x, t, p, bce, a_t, m, m_g1)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, t, p, bce, a_t, m, m_g1 = ctx.saved_tensors
        g = ctx.gamma
        grad_x = grad_t = None
        if ctx.needs_input_grad[0]:
            if g == 0:
                grad_x = torch.sigmoid(x).sub_(t)
            else:
                q = torch.addcmul(p, p, p, value=-1.0).mul_(bce)  # BCE * p(1-p)
                q.addcmul_(q, t, value=-2.0)  # * (1 - 2t)
                grad_x = mul((p - t).mul_(m).add_(q, alpha=g), m_g1)
            grad_x = mul(grad_x, a_t).mul_(grad)
        if ctx.needs_input_grad[1]:
            da = 0.0 if ctx.alpha is None else 2.0 * ctx.alpha - 1.0  # d a_t / dt
            if g == 0:
                grad_t = mul(-x, a_t).add_(bce, alpha=da)
            else:
                inner = torch.mul(p, -2.0).add_(1.0).mul_(bce).mul_(g).addcmul_(x, m, value=-1.0)
                grad_t = mul(mul(inner, a_t).addcmul_(bce, m, value=da), m_g1)
            grad_t.mul_(grad)
        return grad_x, grad_t, None, None


def sigmoid_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss, element-wise (no reduction).

    ``FL = BCE(x, t) * alpha_t * (1 - p_t)**gamma`` with ``p = sigmoid(x)``,
    ``p_t = p*t + (1-p)*(1-t)`` and ``alpha_t = alpha*t + (1-alpha)*(1-t)``; a negative
    ``alpha`` disables ``alpha_t`` (as torchvision.ops.sigmoid_focal_loss, whose values and
    gradients this matches). Soft targets in [0, 1] are allowed. ``gamma = 0`` is BCE.

    Args:
        logits: ``(...)`` float logits; fp16/bf16 are computed in float32.
        target: ``(...)`` targets in [0, 1], same shape as ``logits``.
        alpha: weight of the positive class in ``alpha_t``; < 0 disables it.
        gamma: focusing exponent, >= 0.

    Returns:
        ``(...)`` float32 (float64 for float64 logits) loss of the logits' shape.

    Gradients flow to ``logits`` and, if it requires grad, to ``target``; a fused closed
    form is used for both (no second derivatives).

    Raises:
        ValueError: non-float logits, a target of another shape, a target outside [0, 1] or
            NaN (one ``aminmax`` over it and one host read), or a bad hyperparameter. NaN/inf
            logits are not checked: they propagate to the loss, as in torch.nn.functional.
    """
    gamma = check_nonnegative("gamma", gamma)
    alpha = check_number("alpha", alpha)
    x, t = as_float_pair(logits, target)
    return _SigmoidFocalFunction.apply(x, t, None if alpha < 0 else alpha, gamma)


@LOSSES.register()
class FocalLoss(WeightedLoss):
    """Sigmoid focal loss module (RetinaNet); see :func:`sigmoid_focal_loss`.

    ``loss(logits (..., C), target (..., C), weight=None, avg_factor=None)`` returns
    ``loss_weight * reduce(weight * FL)``; with ``avg_factor`` the mean is
    ``sum(FL * weight) / avg_factor``.
    """

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 2.0,
        loss_weight: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(loss_weight, reduction)
        self.alpha = check_number("alpha", alpha)
        self.gamma = check_nonnegative("gamma", gamma)

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_loss(pred, target, self.alpha, self.gamma)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, {super().extra_repr()}"
