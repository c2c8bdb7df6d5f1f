"""Weighting and reduction shared by every loss module (the mmdetection convention)."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_number

__all__ = ["REDUCTIONS", "WeightedLoss", "check_avg_factor", "check_weight", "weight_reduce_loss"]

REDUCTIONS = ("none", "mean", "sum")


def check_weight(weight: object, loss_shape: torch.Size) -> torch.Tensor:
    """Return ``weight`` shaped to multiply a loss of ``loss_shape`` element by element.

    Accepted: the loss's own shape; and for a loss ``(..., K)`` (K classes or box sides) one
    weight per row, ``(...)`` or ``(..., 1)``, expanded over the last dim. Any other shape is
    a ValueError: a plain broadcast would let an ``(N, 1)`` weight against an ``(N,)`` loss
    silently build an ``(N, N)`` product.
    """
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
    shape = tuple(loss_shape)
    if weight.shape == loss_shape:
        return weight
    row_shapes = [shape[:-1], (*shape[:-1], 1)] if len(shape) >= 2 else []
    if tuple(weight.shape) in row_shapes:
        return weight.reshape(*shape[:-1], 1)
    expected = " or ".join(str(s) for s in [shape, *row_shapes])
    raise ValueError(f"weight must have shape {expected} (the element-wise loss's), got {tuple(weight.shape)}")


def check_avg_factor(avg_factor: object) -> float | torch.Tensor:
    """A positive finite normaliser: a python/NumPy number, or a 0-d / one-element tensor.

    A number is checked on the host. A tensor's shape is checked on the host; its value with
    one ``.item()`` on CPU (free there), and on other devices with ``torch._assert_async`` so
    a GPU step is not synchronised (a bad value then fails at the next synchronisation, as a
    RuntimeError carrying the same message).
    """
    if not isinstance(avg_factor, torch.Tensor):
        return check_number("avg_factor", avg_factor, minimum=0.0, strict=True)
    if avg_factor.numel() != 1 or avg_factor.is_complex():
        raise ValueError(
            f"avg_factor must be a positive number or a one-element tensor, got shape {tuple(avg_factor.shape)}"
        )
    avg_factor = avg_factor.reshape(())
    if avg_factor.device.type == "cpu":
        check_number("avg_factor", avg_factor, minimum=0.0, strict=True)
    else:
        value = avg_factor.detach().double()
        torch._assert_async((value > 0) & value.isfinite(), "avg_factor must be a positive finite number")
    return avg_factor


def weight_reduce_loss(
    loss: torch.Tensor,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply an element weight, then reduce.

    ``weight`` has the loss's shape or, for a ``(..., K)`` loss, one value per row (``(...)``
    or ``(..., 1)``; see :func:`check_weight`). With ``avg_factor`` (``reduction="mean"``
    only; a positive number or one-element tensor, see :func:`check_avg_factor`) the result
    is ``sum(loss * weight) / avg_factor``; a mean over zero elements is 0, not NaN.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if avg_factor is not None:
        if reduction != "mean":
            raise ValueError(f"avg_factor needs reduction='mean', not {reduction!r}")
        avg_factor = check_avg_factor(avg_factor)
    if weight is not None:
        loss = loss * check_weight(weight, loss.shape)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if avg_factor is None:
        return loss.sum() / max(loss.numel(), 1)
    return loss.sum() / avg_factor


class WeightedLoss(nn.Module):
    """Base of the loss modules: ``loss_weight * reduce(weight * elementwise(pred, target))``.

    Subclasses implement :meth:`elementwise` with the functional form of their loss.
    """

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.loss_weight = check_number("loss_weight", loss_weight)
        self.reduction = reduction

    def elementwise(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None = None,
        avg_factor: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        loss = self.elementwise(pred, target)
        return self.loss_weight * weight_reduce_loss(loss, weight, self.reduction, avg_factor)

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}, reduction={self.reduction!r}"
