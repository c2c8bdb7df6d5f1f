"""The learning-rate schedule by hand, and the time-budget plan on a simulated clock."""

from __future__ import annotations

import itertools
import math

import pytest

from lightning_modules.schedule import WarmupCosine, epochs_that_fit, warmup_cosine_factor


def test_warmup_cosine_factor_by_hand():
    # warm-up 10 of 110 steps from 0.1: step 5 -> 0.1 + 0.9 * 5 / 10 = 0.55
    assert warmup_cosine_factor(0, 110, 10, 0.1, 0.05) == pytest.approx(0.1)
    assert warmup_cosine_factor(5, 110, 10, 0.1, 0.05) == pytest.approx(0.55)
    assert warmup_cosine_factor(10, 110, 10, 0.1, 0.05) == pytest.approx(1.0)
    # half-way through the cosine (step 60): 0.05 + 0.95 * (1 + cos(pi / 2)) / 2 = 0.525
    assert warmup_cosine_factor(60, 110, 10, 0.1, 0.05) == pytest.approx(0.525)
    assert warmup_cosine_factor(110, 110, 10, 0.1, 0.05) == pytest.approx(0.05)
    # a quarter: 0.05 + 0.95 * (1 + cos(pi / 4)) / 2
    assert warmup_cosine_factor(35, 110, 10, 0.1, 0.05) == pytest.approx(0.05 + 0.95 * (1 + math.sqrt(0.5)) / 2)
    assert warmup_cosine_factor(0, 100, 0, 0.1, 0.0) == pytest.approx(1.0)  # no warm-up


def test_warmup_cosine_equals_the_closed_form_until_retargeted():
    schedule = WarmupCosine(110, 10, 0.1, 0.05)
    for step in range(0, 120):
        assert schedule(step) == pytest.approx(warmup_cosine_factor(step, 110, 10, 0.1, 0.05))


def test_retarget_keeps_the_progress_and_stretches_the_rest():
    schedule = WarmupCosine(110, 10, 0.1, 0.05)
    before = schedule(60)  # progress 0.5
    schedule.retarget(60, 160)  # the other half now spans 100 steps instead of 50
    assert schedule(60) == pytest.approx(before)
    assert schedule.progress(110) == pytest.approx(0.75)  # 0.5 + 0.5 * 50 / 100
    assert schedule(160) == pytest.approx(0.05)
    schedule.retarget(110, 120)  # shrink: progress 0.75 at 110, the end at 120
    assert schedule.progress(115) == pytest.approx(0.875)
    assert schedule(120) == pytest.approx(0.05) and schedule(500) == pytest.approx(0.05)
    schedule.retarget(130, 100)  # a target in the past ends the decay where it stands
    assert schedule(130) == pytest.approx(0.05)


def test_retarget_during_warmup_only_moves_the_end():
    schedule = WarmupCosine(20, 10, 0.1, 0.0)
    schedule.retarget(4, 110)
    assert schedule(4) == pytest.approx(warmup_cosine_factor(4, 110, 10, 0.1, 0.0))
    assert schedule(60) == pytest.approx(0.5)


def test_epochs_that_fit_by_hand():
    assert epochs_that_fit(100.0, [10.0]) == 9  # 100 / 10.5
    assert epochs_that_fit(100.0, [30.0, 10.0, 10.0, 10.0]) == 9  # only the last three count
    assert epochs_that_fit(100.0, [10.0, 20.0, 10.0]) == 4  # the slowest of them: 100 / 21
    assert epochs_that_fit(5.0, [10.0]) == 0 and epochs_that_fit(-3.0, [10.0]) == 0
    with pytest.raises(ValueError, match="at least one measured epoch"):
        epochs_that_fit(10.0, [])


def test_a_simulated_budget_run_fills_the_budget_with_a_monotone_decay():
    """Epochs of 9-13 s (noise from a fixed pattern) in a 600 s budget, re-planned after each."""
    budget, steps_per_epoch, warmup = 600.0, 50, 50
    schedule = WarmupCosine(warmup + steps_per_epoch, warmup, 0.01, 0.05)
    elapsed, step, measured, factors = 0.0, 0, [], []
    for epoch in range(1000):
        seconds = 11.0 + 2.0 * math.sin(epoch)  # this epoch's length: unknown in advance
        for _ in range(steps_per_epoch):
            factors.append(schedule(step))
            step += 1
        elapsed += seconds
        measured.append(seconds)
        left = epochs_that_fit(budget - elapsed, measured)
        schedule.retarget(step, (epoch + 1 + left) * steps_per_epoch)
        if left == 0:
            break
    assert elapsed <= budget  # the last epoch ended inside the budget
    assert budget - elapsed < 1.05 * 13.0 + 13.0  # ... and less than two epochs were left unused
    after_warmup = factors[warmup:]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(after_warmup))  # never rises
    assert schedule(step) == pytest.approx(0.05, abs=0.02)  # the decay has (nearly) ended
