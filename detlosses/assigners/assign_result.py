"""The result every assigner returns."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["AssignResult"]


class AssignResult(NamedTuple):
    """Per-anchor training targets of a batch (B images, A anchors, C classes).

    Attributes:
        labels: (B, A) long, the class of the assigned GT; ``C`` for background.
        bboxes: (B, A, 4) float32 ``xyxy`` box of the assigned GT; zeros for background.
        scores: (B, A, C) float32 soft classification target: the assigner's quality
            (normalised alignment metric or IoU) at the assigned class, zeros elsewhere.
        fg_mask: (B, A) bool, True for foreground anchors.
        gt_index: (B, A) long, the row in ``G`` of the assigned GT; 0 for background
            (check ``fg_mask`` before using it).
    """

    labels: torch.Tensor
    bboxes: torch.Tensor
    scores: torch.Tensor
    fg_mask: torch.Tensor
    gt_index: torch.Tensor
