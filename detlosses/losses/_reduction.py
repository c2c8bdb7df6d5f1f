"""Weighting and reduction shared by every loss module (the mmdetection convention)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["REDUCTIONS", "WeightedLoss", "weight_reduce_loss"]

REDUCTIONS = ("none", "mean", "sum")


def weight_reduce_loss(
    loss: torch.Tensor,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply an element weight, then reduce.

    ``weight`` broadcasts against ``loss``; a weight of shape ``loss.shape[:-1]`` (one per
    anchor or box for a ``(..., C)`` or ``(..., 4)`` loss) is expanded over the last dim.
    With ``avg_factor`` and ``reduction="mean"`` the result is ``sum(loss * weight) /
    avg_factor``; a mean over zero elements is 0, not NaN.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if weight is not None:
        if weight.dim() == loss.dim() - 1 and weight.shape == loss.shape[:-1]:
            weight = weight.unsqueeze(-1)
        try:
            torch.broadcast_shapes(weight.shape, loss.shape)
        except RuntimeError:
            raise ValueError(
                f"weight of shape {tuple(weight.shape)} does not broadcast against the loss of shape "
                f"{tuple(loss.shape)} (expected {tuple(loss.shape)} or {tuple(loss.shape[:-1])})"
            ) from None
        loss = loss * weight
    if reduction == "none":
        if avg_factor is not None:
            raise ValueError("avg_factor needs reduction='mean'")
        return loss
    if reduction == "sum":
        if avg_factor is not None:
            raise ValueError("avg_factor needs reduction='mean', not 'sum'")
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
        self.loss_weight = float(loss_weight)
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
