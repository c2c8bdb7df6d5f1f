"""Timing helpers shared by the benchmark suites."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def interleaved_median_ms(fns: Sequence[Callable[[], object]], repeat: int, warmup: int = 1) -> list[float]:
    """Median wall time in ms of one call of each thunk.

    The thunks alternate call by call (``warmup`` untimed rounds first), so load from other
    processes on the machine hits every one of them alike.
    """
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(warmup + repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def timing_row(loss: str, shape: str, reference: str, ours_ms: float, ref_ms: float) -> dict:
    """One row of the loss tables: ours beside a reference; ``ratio`` < 1 means ours is faster."""
    return {
        "loss": loss,
        "shape": shape,
        "reference": reference,
        "ours_ms": round(ours_ms, 3),
        "ref_ms": round(ref_ms, 3),
        "ratio": round(ours_ms / ref_ms, 3),
    }
