"""Learning-rate schedule of the reference detector, over a number of epochs or a time budget.

:class:`WarmupCosine` is a linear warm-up followed by a cosine decay (SGDR, Loshchilov & Hutter,
2017, without restarts) whose length may be re-estimated while training runs: the decay is a
function of a progress ``q`` in [0, 1] that continues from where it stands at each re-estimate,
so the learning rate never jumps and never rises after the warm-up.

:func:`epochs_that_fit` is the time-budget plan: how many more epochs (validation included) fit
in what is left of ``trainer.max_time``, from the measured epoch times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["WarmupCosine", "epochs_that_fit", "warmup_cosine_factor"]


def warmup_cosine_factor(
    step: int, total_steps: int, warmup_steps: int, warmup_start: float, min_ratio: float
) -> float:
    """Learning-rate multiplier: linear warm-up then cosine decay, in closed form.

    ``warmup_start + (1 - warmup_start) * step / warmup_steps`` for ``step < warmup_steps``,
    then ``min_ratio + (1 - min_ratio) * (1 + cos(pi * q)) / 2`` with
    ``q = (step - warmup_steps) / (total_steps - warmup_steps)`` clamped to [0, 1].
    """
    if step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    q = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return _cosine(q, min_ratio)


def _cosine(q: float, min_ratio: float) -> float:
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * q))


class WarmupCosine:
    """``LambdaLR`` multiplier: :func:`warmup_cosine_factor` whose ``total_steps`` can change.

    Until :meth:`retarget` is called it equals ``warmup_cosine_factor(step, total_steps, ...)``.
    ``retarget(step, total_steps)`` keeps the cosine progress reached at ``step`` and spreads
    the rest of it over the steps up to the new ``total_steps``. Its state is plain attributes,
    so ``LambdaLR.state_dict()`` (and with it every checkpoint) carries it.
    """

    def __init__(self, total_steps: int, warmup_steps: int, warmup_start: float, min_ratio: float) -> None:
        if warmup_steps < 0 or total_steps < warmup_steps:
            raise ValueError(f"need 0 <= warmup_steps <= total_steps, got {warmup_steps} and {total_steps}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_start = float(warmup_start)
        self.min_ratio = float(min_ratio)
        self.anchor_step = self.warmup_steps  # the cosine progress is anchor_progress there
        self.anchor_progress = 0.0

    def progress(self, step: int) -> float:
        """Cosine progress ``q`` in [0, 1] at ``step`` (0 during the warm-up)."""
        if step <= self.anchor_step:
            return self.anchor_progress
        span = max(1, self.total_steps - self.anchor_step)
        return min(1.0, self.anchor_progress + (1.0 - self.anchor_progress) * (step - self.anchor_step) / span)

    def retarget(self, step: int, total_steps: int) -> None:
        """From ``step`` on, reach the end of the decay at ``total_steps`` (at least ``step``)."""
        if step > self.anchor_step:
            self.anchor_progress, self.anchor_step = self.progress(step), int(step)
        self.total_steps = max(int(total_steps), self.anchor_step)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
        return _cosine(self.progress(step), self.min_ratio)


def epochs_that_fit(remaining_s: float, epoch_seconds: Sequence[float], safety: float = 1.05) -> int:
    """How many more whole epochs fit in ``remaining_s`` seconds.

    An epoch is taken to last ``safety`` times the longest of the last three measured
    ``epoch_seconds`` (training and validation), so that the last validation and checkpoint end
    before the budget does.
    """
    if not epoch_seconds:
        raise ValueError("epochs_that_fit needs at least one measured epoch")
    epoch_s = safety * max(epoch_seconds[-3:])
    return max(0, math.floor(remaining_s / epoch_s))
