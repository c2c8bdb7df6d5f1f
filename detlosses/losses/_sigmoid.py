"""Helpers shared by the sigmoid-family classification losses (focal, quality focal, varifocal).

Each loss takes logits ``x`` and a dense soft target ``t`` in [0, 1] of the same shape, computes
in float32 (float64 kept) and runs a fused ``torch.autograd.Function``; these are the pieces
they have in common: the input check and upcast, the stable BCE, the alpha weight and a few
in-place products on temporaries the Functions own.
"""

from __future__ import annotations

import torch

from .._validation import check_floating, check_number, check_range, check_same_shape, upcast

__all__ = ["TINY", "alpha_weight", "as_float_pair", "bce_with_logits", "check_nonnegative", "mul"]

# Smallest normal float32: ``m.clamp_min(TINY) ** (gamma - 1)`` stays finite for gamma >= 0.
TINY = torch.finfo(torch.float32).tiny


def as_float_pair(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a (logits, dense target) pair and return both in float32 (float64 is kept).

    ``target`` must lie in [0, 1] and hold no NaN (a target of 2 gives a negative loss): one
    ``aminmax`` over it and one host read. NaN/inf logits are not checked; they propagate to
    the loss, as in ``torch.nn.functional``. fp16/bf16 inputs (autocast) are upcast, so the
    loss is computed in float32; the cast is outside the autograd Functions, so gradients
    flow back in the input's own dtype.
    """
    check_floating("logits", logits)
    if not isinstance(target, torch.Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}")
    check_same_shape("logits", logits, "target", target)
    x = upcast(logits)
    t = target.to(x.dtype)
    check_range("target", t, 0.0, 1.0, " (soft classification targets: one-hot times a quality)")
    return x, t


def check_nonnegative(name: str, value: object) -> float:
    """A finite number >= 0 (python, NumPy or one-element tensor) as a float."""
    return check_number(name, value, minimum=0.0)


def bce_with_logits(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Element-wise ``BCE(x, t) = max(x, 0) - x*t + log(1 + exp(-|x|))`` (a new tensor).

    No overflow for large ``|x|`` and no cancellation for hard targets: ``max(x, 0) - x*t``
    is exact for t in {0, 1}, and the log term is added to it rather than subtracted, so a
    confidently correct element (BCE ~ exp(-|x|)) keeps its relative precision on either
    side (``softplus(x) - x*t`` loses it for positives, ``(1-t)*x - logsigmoid(x)`` for
    negatives).
    """
    out = torch.relu(x).addcmul_(x, t, value=-1)
    return out.add_(x.abs().neg_().exp_().log1p_())


def alpha_weight(t: torch.Tensor, alpha: float | None) -> torch.Tensor | None:
    """``alpha*t + (1-alpha)*(1-t)``, or None when the weight is disabled."""
    if alpha is None:
        return None
    return (t * (2.0 * alpha - 1.0)).add_(1.0 - alpha)


def mul(a: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``a *= b`` in place (``a`` is a temporary we own); None means 1."""
    return a if b is None else a.mul_(b)
