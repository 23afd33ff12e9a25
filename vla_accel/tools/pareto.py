"""Pareto fronts of (quality, cost) points: which configurations no other one beats on every axis.

A point p dominates q when p is at least as good as q on every axis and strictly better on one;
the front is the set of points no point dominates (points equal on every axis are all kept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def pareto_front(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices (ascending) of the non-dominated points.

    points: N points of D coordinates each; maximize: D flags, True = larger is better on that axis,
    False = smaller is better. Points with a None or NaN coordinate are never on the front.
    O(N^2 D): sweeps have tens of points.
    """
    maximize = [bool(m) for m in maximize]
    if not maximize:
        raise ValueError("maximize needs one flag per axis, got none")
    signed = []  # each point as a tuple to maximise on every axis, or None when incomplete
    for i, p in enumerate(points):
        if len(p) != len(maximize):
            raise ValueError(f"point {i} has {len(p)} coordinates, maximize has {len(maximize)} flags")
        if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in p):
            signed.append(None)
        else:
            signed.append(tuple(float(x) if up else -float(x) for x, up in zip(p, maximize)))

    def dominates(a: tuple, b: tuple) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [i for i, p in enumerate(signed)
            if p is not None and not any(q is not None and dominates(q, p) for q in signed)]
