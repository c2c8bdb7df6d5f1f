"""Distribution focal loss and the integral that decodes a distribution to a distance (GFL).

Li et al., "Generalized Focal Loss: Learning Qualified and Distributed Bounding Boxes for
Dense Object Detection", NeurIPS 2020 (arXiv:2006.04388).

Box distribution logits are laid out ``(..., 4 * n_bins)`` with ``n_bins = reg_max + 1``
and the sides ordered left, top, right, bottom; view them as ``(..., 4, n_bins)`` for the
functions here.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .._validation import check_floating, check_range, upcast
from ..registry import LOSSES
from ._reduction import WeightedLoss

__all__ = ["DistributionFocalLoss", "distribution_focal_loss", "distribution_integral"]

# Targets are clamped to n_bins - 1 - _RIGHT_MARGIN so that the right-hand bin exists.
_RIGHT_MARGIN = 0.01
# Targets further than this outside [0, n_bins - 1] are an error, not rounding noise.
_RANGE_TOL = 1e-3


def _check_bins(logits: torch.Tensor) -> int:
    check_floating("logits", logits)
    if logits.dim() < 1 or logits.shape[-1] < 2:
        raise ValueError(
            f"logits must have shape (..., n_bins) with n_bins >= 2 (reg_max + 1), got {tuple(logits.shape)}"
        )
    return logits.shape[-1]


def distribution_integral(logits: torch.Tensor) -> torch.Tensor:
    """The expected bin of a discretised distribution (GFL's ``Integral``).

    ``softmax(logits, -1) @ [0, 1, ..., n_bins - 1]``: decodes distribution logits to a
    distance in bin units (multiply by the stride for pixels). For box logits laid out
    ``(..., 4 * n_bins)`` use ``distribution_integral(box_logits.unflatten(-1, (4, n_bins)))``
    to get ``(..., 4)`` distances (l, t, r, b).

    Args:
        logits: ``(..., n_bins)`` float logits, n_bins >= 2; fp16/bf16 (and autocast) are
            computed in float32.

    Returns:
        ``(...)`` expected bin in [0, n_bins - 1].
    """
    n_bins = _check_bins(logits)
    x = upcast(logits)
    with torch.autocast(x.device.type, enabled=False):  # keep the matmul out of fp16/bf16
        # (..., n_bins) @ (n_bins,) -> (...)
        return torch.softmax(x, dim=-1) @ torch.arange(n_bins, dtype=x.dtype, device=x.device)


class _DistributionFocalFunction(torch.autograd.Function):
    """DFL = -(w_l * log_softmax(z)[y_l] + w_r * log_softmax(z)[y_r]) on rows z of n bins.

    Forward quantities: y clamped to [0, y_max], y_l = floor(y), y_r = y_l + 1,
    w_l = y_r - y, w_r = y - y_l (w_l + w_r = 1), L = log_softmax(z).
    Saved for backward: L, the bin indices (y_l, y_r), (w_l, w_r), the picked L[y_l], L[y_r]
    and the 0/1 mask of targets strictly inside (0, y_max) (where the clamp passes a gradient).

    Chain rule, with dL[k]/dz = onehot(k) - softmax(z) and dw_l/dy = -1, dw_r/dy = +1:

    dDFL/dz = softmax(z) * (w_l + w_r) - w_l * onehot(y_l) - w_r * onehot(y_r)
            = exp(L) - w_l * onehot(y_l) - w_r * onehot(y_r)
    dDFL/dy = L[y_l] - L[y_r]   (0 unless 0 < y < y_max)

    One log_softmax for both bins (two cross-entropies would compute it twice).
    once_differentiable. ``tests/references.py`` restates DFL with plain autograd; the tests
    compare values and both gradients in float64.
    """

    @staticmethod
    def forward(ctx, z, y, y_max: float):
        # z: (R, n_bins), y: (R,)
        yc = y.clamp(0.0, y_max)
        left = yc.floor()
        w = torch.stack((left + 1.0 - yc, yc - left), dim=-1)  # (R, 2): w_l, w_r
        index = torch.stack((left, left + 1.0), dim=-1).long()  # (R, 2): y_l, y_r
        log_p = torch.log_softmax(z, dim=-1)  # (R, n_bins)
        picked = log_p.gather(-1, index)  # (R, 2)
        inside = ((y > 0.0) & (y < y_max)).to(y.dtype)  # strict, like torch.clamp's gradient
        ctx.save_for_backward(log_p, index, w, picked, inside)
        return (picked * w).sum(-1).neg_()  # (R,)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        log_p, index, w, picked, inside = ctx.saved_tensors
        grad_z = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_z = log_p.exp().scatter_add_(-1, index, -w).mul_(grad.unsqueeze(-1))
        if ctx.needs_input_grad[1]:
            grad_y = (picked[:, 0] - picked[:, 1]).mul_(inside).mul_(grad)
        return grad_z, grad_y, None


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss, element-wise (no reduction).

    ``DFL = (y_r - y) * CE(logits, y_l) + (y - y_l) * CE(logits, y_r)`` with
    ``y_l = floor(y)``, ``y_r = y_l + 1``: the cross-entropy towards the two bins around
    the continuous target, weighted by proximity. Targets are clamped to
    ``[0, n_bins - 1 - 0.01]`` so that the right-hand bin exists.

    Args:
        logits: ``(..., n_bins)`` distribution logits (n_bins = reg_max + 1 >= 2); for box
            logits ``(..., 4 * n_bins)`` pass ``logits.unflatten(-1, (4, n_bins))``.
        target: ``(...)`` = ``logits.shape[:-1]`` float distances in bin units, in
            [0, n_bins - 1] (see ``detlosses.boxes.bbox2distance`` with ``max_dis``).

    Returns:
        ``(...)`` loss (float32, or float64 for float64 logits).

    Raises:
        ValueError: non-float logits, n_bins < 2, a target shape other than
            ``logits.shape[:-1]``, a NaN target, or targets outside [0, n_bins - 1] by more
            than 1e-3 (one ``aminmax`` over the target and one host read).
    """
    n_bins = _check_bins(logits)
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(
            f"target must have shape logits.shape[:-1] = {tuple(logits.shape[:-1])} "
            f"(one distance per distribution), got {tuple(target.shape)}"
        )
    z = upcast(logits)
    y = target.to(z.dtype)
    hint = f" = [0, n_bins - 1] (distances in bin units, see bbox2distance(..., max_dis={n_bins - 1}))"
    check_range("target", y, 0.0, n_bins - 1, hint, tolerance=_RANGE_TOL)
    loss = _DistributionFocalFunction.apply(z.reshape(-1, n_bins), y.reshape(-1), n_bins - 1 - _RIGHT_MARGIN)
    return loss.view(target.shape)


@LOSSES.register()
class DistributionFocalLoss(WeightedLoss):
    """Distribution focal loss module (GFL); see :func:`distribution_focal_loss`.

    ``loss(logits (..., n_bins), target (...), weight=None, avg_factor=None)``: the
    element-wise loss has shape ``(...)`` (e.g. ``(N, 4)`` for the four sides of N boxes);
    a per-box weight of shape ``(N,)`` is expanded over the sides. With ``avg_factor`` the
    result is ``loss_weight * sum(DFL * weight) / avg_factor``.
    """

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return distribution_focal_loss(pred, target)
