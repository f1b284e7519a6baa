"""Pareto fronts over (accuracy up, latency down, parameters down)."""
from __future__ import annotations


def dominates(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """a = (accuracy, latency, params) is at least as good as b everywhere and better somewhere."""
    no_worse = a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2]
    return no_worse and (a[0] > b[0] or a[1] < b[1] or a[2] < b[2])


def front_indices(points: list[tuple[float, float, float]]) -> list[int]:
    """Indices of the non-dominated points."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]
