"""Sigmoid focal loss (RetinaNet) and the helpers the sigmoid-family losses share.

Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (arXiv:1708.02002).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .._validation import check_floating, check_same_shape
from ..registry import LOSSES
from ._reduction import WeightedLoss

__all__ = ["FocalLoss", "sigmoid_focal_loss"]

# Smallest normal float32: ``m.clamp_min(_TINY) ** (gamma - 1)`` stays finite for gamma >= 0.
_TINY = torch.finfo(torch.float32).tiny


def _as_float(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a (logits, dense target) pair and return both in float32 (float64 is kept).

    fp16/bf16 inputs (autocast) are upcast, so the loss is computed in float32; the cast is
    outside the autograd Functions, so gradients flow back in the input's own dtype.
    """
    check_floating("logits", logits)
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    check_same_shape("logits", logits, "target", target)
    x = logits if logits.dtype == torch.float64 else logits.float()
    return x, target.to(x.dtype)


def _check_nonnegative(name: str, value: float) -> float:
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def _bce_with_logits(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Element-wise ``BCE(x, t) = max(x, 0) - x*t + log(1 + exp(-|x|))`` (a new tensor).

    No overflow for large ``|x|`` and no cancellation for hard targets: ``max(x, 0) - x*t``
    is exact for t in {0, 1}, and the log term is added to it rather than subtracted, so a
    confidently correct element (BCE ~ exp(-|x|)) keeps its relative precision on either
    side (``softplus(x) - x*t`` loses it for positives, ``(1-t)*x - logsigmoid(x)`` for
    negatives).
    """
    out = torch.relu(x).addcmul_(x, t, value=-1)
    return out.add_(x.abs().neg_().exp_().log1p_())


def _alpha_weight(t: torch.Tensor, alpha: float | None) -> torch.Tensor | None:
    """``alpha*t + (1-alpha)*(1-t)``, or None when the weight is disabled."""
    if alpha is None:
        return None
    return (t * (2.0 * alpha - 1.0)).add_(1.0 - alpha)


def _mul(a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``a *= b`` in place (``a`` is a temporary we own); None means 1."""
    return a if b is None else a.mul_(b)


class _SigmoidFocalFunction(torch.autograd.Function):
    """FL = a_t * BCE(x, t) * m**g, m = 1 - p_t = p + t - 2pt, with a fused backward.

    dFL/dx = a_t * [(p - t) * m**g + g * BCE * m**(g-1) * (1 - 2t) * p*(1 - p)]
    dFL/dt = (2a - 1) * BCE * m**g + a_t * [-x * m**g + g * BCE * m**(g-1) * (1 - 2p)]

    ``m**g`` is kept as ``m * m**(g-1)``; for 0 < g < 1 the power is taken of ``m`` clamped
    to the smallest normal float, so where m == 0 (then p*(1-p) == 0 as well) the x
    gradient is 0 rather than ``inf * 0 = NaN``. gamma == 0 (BCE; p is only computed in
    the backward pass) and gamma == 2 (multiplies, no pow) are special-cased. Second
    derivatives are not implemented (once_differentiable).
    """

    @staticmethod
    def forward(ctx, x, t, alpha: float | None, gamma: float):
        need_t = ctx.needs_input_grad[1]
        bce = _bce_with_logits(x, t)
        a_t = _alpha_weight(t, alpha)
        if gamma == 0:
            p = m = m_g1 = None
            if not need_t:  # BCE itself is not needed for the x gradient: scale it in place
                loss, bce = _mul(bce, a_t), None
            else:
                loss = bce if a_t is None else bce * a_t
        else:
            p = torch.sigmoid(x)
            m = torch.addcmul(p, p, t, value=-2.0).add_(t)  # 1 - p_t
            m_g1 = None if gamma == 1 else m if gamma == 2 else m.clamp_min(_TINY).pow_(gamma - 1.0)
            loss = _mul(_mul(bce * m, m_g1), a_t)
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
                grad_x = _mul((p - t).mul_(m).add_(q, alpha=g), m_g1)
            grad_x = _mul(grad_x, a_t).mul_(grad)
        if ctx.needs_input_grad[1]:
            da = 0.0 if ctx.alpha is None else 2.0 * ctx.alpha - 1.0  # d a_t / dt
            if g == 0:
                grad_t = _mul(-x, a_t).add_(bce, alpha=da)
            else:
                inner = torch.mul(p, -2.0).add_(1.0).mul_(bce).mul_(g).addcmul_(x, m, value=-1.0)
                grad_t = _mul(_mul(inner, a_t).addcmul_(bce, m, value=da), m_g1)
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
    """
    gamma = _check_nonnegative("gamma", gamma)
    x, t = _as_float(logits, target)
    return _SigmoidFocalFunction.apply(x, t, None if alpha < 0 else float(alpha), gamma)


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
        self.alpha = float(alpha)
        self.gamma = _check_nonnegative("gamma", gamma)

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_loss(pred, target, self.alpha, self.gamma)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, {super().extra_repr()}"
