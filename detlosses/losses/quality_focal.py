"""Quality focal loss (GFL), optionally with the focal alpha weight used for TOOD.

Li et al., "Generalized Focal Loss: Learning Qualified and Distributed Bounding Boxes for
Dense Object Detection", NeurIPS 2020 (arXiv:2006.04388).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..registry import LOSSES
from ._reduction import WeightedLoss
from ._sigmoid import TINY, alpha_weight, as_float_pair, bce_with_logits, check_nonnegative, mul

__all__ = ["QualityFocalLoss", "quality_focal_loss"]


def _check_alpha(alpha: float | None) -> float | None:
    if alpha is None:
        return None
    value = check_nonnegative("alpha", alpha)
    if value > 1.0:
        raise ValueError(f"alpha must be in [0, 1] or None (no alpha weight), got {alpha!r}")
    return value


def _dpow(e: torch.Tensor, beta: float) -> torch.Tensor:
    """``d|e|**beta / de = beta * sign(e) * |e|**(beta-1)`` (a new tensor), 0 at e == 0."""
    if beta == 2:
        return e * 2.0
    return e.abs().clamp_min_(TINY).pow_(beta - 1.0).mul_(e.sign()).mul_(beta)


class _QualityFocalFunction(torch.autograd.Function):
    """QFL = a_t * B * d**b with a fused backward (once_differentiable: no second derivatives).

    Forward quantities: p = sigmoid(x), B = BCE(x, t), e = p - t, d = |e|, w = d**b,
    a_t = a*t + (1 - a)*(1 - t) (absent without alpha). Saved for backward: x, p, B, e, w, a_t.

    Chain rule, with dB/dx = e, dB/dt = -x, dp/dx = p(1 - p), de/dt = -1, da_t/dt = 2a - 1 and
    h = dw/de = b * sign(e) * d**(b-1):

    dQFL/dx = a_t * [e * w + B * h * p(1 - p)]
    dQFL/dt = a_t * [-x * w - B * h] + (2a - 1) * B * w

    beta == 2 uses w = e*e and h = 2e (no pow, no abs). Otherwise ``d**(b-1)`` is taken of
    ``d`` clamped to the smallest normal float and multiplied by sign(e), so at p == t the
    gradient is 0, not NaN, for every beta >= 0. ``tests/references.py`` restates QFL with
    plain autograd; the tests compare values and both gradients in float64.
    """

    @staticmethod
    def forward(ctx, x, t, beta: float, alpha: float | None):
        p = torch.sigmoid(x)
        bce = bce_with_logits(x, t)
        e = p - t
        w = e * e if beta == 2 else e.abs().pow_(beta)  # |p - t| ** beta
        a_t = alpha_weight(t, alpha)
        ctx.beta, ctx.alpha = beta, alpha
        ctx.save_for_backward(x, p, bce, e, w, a_t)
        return mul(bce * w, a_t)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, p, bce, e, w, a_t = ctx.saved_tensors
        b = ctx.beta
        grad_x = grad_t = None
        if ctx.needs_input_grad[0]:
            q = torch.addcmul(p, p, p, value=-1.0)  # p(1 - p)
            if b == 2:  # e * (e**2 + 2 * BCE * p(1-p)), written into q
                grad_x = torch.addcmul(w, q, bce, value=2.0, out=q).mul_(e)
            else:
                grad_x = q.mul_(bce).mul_(_dpow(e, b)).addcmul_(e, w)
            grad_x = mul(grad_x, a_t).mul_(grad)
        if ctx.needs_input_grad[1]:
            grad_t = mul(torch.addcmul(_dpow(e, b).mul_(bce), x, w).neg_(), a_t)
            if a_t is not None:
                grad_t.addcmul_(bce, w, value=2.0 * ctx.alpha - 1.0)
            grad_t.mul_(grad)
        return grad_x, grad_t, None, None


def quality_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, beta: float = 2.0, alpha: float | None = None
) -> torch.Tensor:
    """Quality focal loss, element-wise (no reduction).

    ``QFL = BCE(x, t) * |t - sigmoid(x)|**beta`` on a dense soft target (one-hot times the
    IoU / alignment quality). With ``alpha`` the loss is also multiplied by
    ``alpha*t + (1-alpha)*(1-t)``: the soft-target focal form PaddleDetection uses for
    TOOD's classification loss on task-alignment targets.

    Args:
        logits: ``(...)`` float logits; fp16/bf16 are computed in float32.
        target: ``(...)`` soft targets in [0, 1], same shape as ``logits``.
        beta: focusing exponent, >= 0.
        alpha: None (GFL) or a weight in [0, 1] of the positive part.

    Returns:
        ``(...)`` loss of the logits' shape (float32, or float64 for float64 logits).

    Gradients flow to ``logits`` and, if it requires grad, to ``target`` (fused closed
    form, no second derivatives).

    Raises:
        ValueError: non-float logits, a target of another shape, a target outside [0, 1] or
            NaN (one ``aminmax`` over it and one host read), or a bad hyperparameter. NaN/inf
            logits are not checked: they propagate to the loss, as in torch.nn.functional.
    """
    beta = check_nonnegative("beta", beta)
    alpha = _check_alpha(alpha)
    x, t = as_float_pair(logits, target)
    return _QualityFocalFunction.apply(x, t, beta, alpha)


@LOSSES.register()
class QualityFocalLoss(WeightedLoss):
    """Quality focal loss module (GFL; with ``alpha``, TOOD); see :func:`quality_focal_loss`.

    ``loss(logits (..., C), target (..., C), weight=None, avg_factor=None)``; with
    ``avg_factor`` the result is ``loss_weight * sum(QFL * weight) / avg_factor``.
    """

    def __init__(
        self,
        beta: float = 2.0,
        alpha: float | None = None,
        loss_weight: float = 1.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__(loss_weight, reduction)
        self.beta = check_nonnegative("beta", beta)
        self.alpha = _check_alpha(alpha)

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return quality_focal_loss(pred, target, self.beta, self.alpha)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, alpha={self.alpha}, {super().extra_repr()}"
