"""The Pareto front of a multi-objective sweep (Tune has no Pareto API).

A trial is on the front when no other trial is at least as good on every task and
strictly better on one: the set of weightings between which a user trades one task's
score for another's. Multi-objective ``OptunaSearch`` gets every task's score; ASHA
still needs one scalar, so it stops trials on the aggregate.
"""

from __future__ import annotations

import math
from typing import Sequence


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """``a`` is at least as good as ``b`` everywhere and strictly better somewhere."""
    better = False
    for x, y, mode in zip(a, b, modes):
        if mode == "min":
            x, y = -x, -y
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (O(n²): sweeps have tens of trials). Points
    with a missing/NaN value cannot be compared and are left out."""
    valid = [i for i, p in enumerate(points) if all(v is not None and not math.isnan(v) for v in p)]
    return [i for i in valid
            if not any(dominates(points[j], points[i], modes) for j in valid if j != i)]


def tradeoffs(rows: list[dict], metrics: list[str]) -> dict[str, list[str]]:
    """For each front trial, the metrics on which it is the best of the front: what it
    buys with what it gives up elsewhere."""
    out = {}
    for r in rows:
        out[r["trial_id"]] = [m for m in metrics if r[m] >= max(o[m] for o in rows)]
    return out
