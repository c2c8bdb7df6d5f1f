"""Input checks shared by the components: fail early, name the argument and the expectation."""

from __future__ import annotations

import math

import torch

__all__ = ["check_boxes", "check_floating", "check_number", "check_range", "check_same_shape", "upcast"]


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


def upcast(tensor: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> float32; float32 and float64 unchanged (losses and box kernels compute in float32)."""
    return tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()


def check_number(name: str, value: object, *, minimum: float | None = None, strict: bool = False) -> float:
    """A finite real number (python, NumPy or a one-element tensor) as a float, optionally bounded below.

    ``minimum`` with ``strict=False`` means ``value >= minimum``, with ``strict=True`` ``value > minimum``.
    NaN, inf, bools and non-numbers are a ValueError naming ``name``.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"{name} must be a real number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        number = float(value)  # python and NumPy numbers
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number!r}")
    if minimum is not None and (number <= minimum if strict else number < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {number!r}")
    return number


def check_range(
    name: str, tensor: torch.Tensor, low: float, high: float, hint: str = "", tolerance: float = 0.0
) -> None:
    """``tensor`` holds no NaN and lies in [low, high] (give or take ``tolerance``).

    Costs one ``aminmax`` pass and one host read. The message names ``name``, the range, the
    values found and ``hint`` (e.g. what the values mean).
    """
    if tensor.numel() == 0:
        return
    found_low, found_high = torch.stack(torch.aminmax(tensor.detach())).tolist()  # NaN propagates into both
    if not (found_low >= low - tolerance and found_high <= high + tolerance):
        what = "NaN" if math.isnan(found_low) else f"values in [{found_low:g}, {found_high:g}]"
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}]{hint}, got {what}")
