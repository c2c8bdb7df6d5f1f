"""Input checks shared by the components: fail early, name the argument and the expectation."""

from __future__ import annotations

import torch

__all__ = ["check_boxes", "check_floating", "check_same_shape"]


def check_floating(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (logits/coordinates), got dtype {tensor.dtype}")


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def check_boxes(name: str, boxes: torch.Tensor) -> None:
    check_floating(name, boxes)
    if boxes.dim() < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4) with boxes in the last dim, got {tuple(boxes.shape)}")
