"""Pareto fronts and hypervolumes over (accuracy up, latency down, parameters down).

Hypervolumes follow the paper (eq. 9-10): latency and parameters are min-max normalized
over the zoo's arch pool (fixed per zoo, so values compare across rounds and datasets),
and pygmo computes the volume in minimization form over (1 - accuracy, latency, params)
against the fixed reference point REF. `normalized` divides by the reference box, so a
dataset's hypervolume lies in [0, 1].
"""

from __future__ import annotations

import numpy as np

from tans.pipeline.acquisition.priors import Prior
from tans.zoo_schema.records import ResultRecord

REF = np.array([1.1, 1.1, 1.1])
REF_VOLUME = float(np.prod(REF))


def dominates(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """a = (accuracy, latency, params) is at least as good as b everywhere and better somewhere."""
    no_worse = a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2]
    return no_worse and (a[0] > b[0] or a[1] < b[1] or a[2] < b[2])


def front_indices(points: list[tuple[float, float, float]]) -> list[int]:
    """Indices of the non-dominated (accuracy, latency, params) points."""
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


class Normalizer:
    """Min-max normalization of latency and params over the pool (paper A.1)."""

    def __init__(self, lat_min: float, lat_max: float, par_min: float, par_max: float):
        self.lat = (lat_min, max(lat_max - lat_min, 1e-12))
        self.par = (par_min, max(par_max - par_min, 1e-12))

    def objectives(self, accuracy, latency, params) -> np.ndarray:
        """Minimization objectives [n, 3]: (1 - accuracy, normalized latency, normalized params)."""
        acc = np.atleast_1d(np.asarray(accuracy, dtype=float))
        lat = np.clip((np.atleast_1d(np.asarray(latency, dtype=float)) - self.lat[0]) / self.lat[1], 0, 1)
        par = np.clip((np.atleast_1d(np.asarray(params, dtype=float)) - self.par[0]) / self.par[1], 0, 1)
        return np.stack(np.broadcast_arrays(1.0 - np.clip(acc, 0, 1), lat, par), axis=1)


def nondominated(points: np.ndarray) -> np.ndarray:
    """The rows of a minimization point set that no other row dominates (duplicates kept once)."""
    if len(points) <= 1:
        return points
    points = np.unique(points, axis=0)  # distinct rows: i dominates j when it is <= j in every objective
    le = np.ones((len(points), len(points)), dtype=bool)
    for k in range(points.shape[1]):  # one 2-d comparison per objective: 7x faster than a 3-d one reduced
        le &= points[:, k, None] <= points[None, :, k]
    np.fill_diagonal(le, False)
    return points[~le.any(0)]


def hypervolume(points: np.ndarray) -> float:
    """Volume dominated by minimization points inside the reference box."""
    import pygmo

    if len(points) == 0:
        return 0.0
    return float(pygmo.hypervolume(nondominated(np.asarray(points, dtype=float))).compute(REF))


def normalized_hypervolume(points: np.ndarray) -> float:
    return hypervolume(points) / REF_VOLUME


SMALL_FRONT = 20  # fronts up to this size: gains from one vectorized sweep; larger: pygmo per candidate
_CELLS = 1 << 22  # floats per chunk of the sweep (32 MB)


def gains(front: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Hypervolume added by each candidate point alone: HV(front + c) - HV(front).

    That is the volume of c's box [c, REF] less the part the front already dominates, the
    hypervolume of the front clipped to the box (each point raised to at least c). For fronts
    of up to SMALL_FRONT points it is computed for all candidates at once, exactly: z-slabs
    between the clipped points' z values, and in each slab the staircase area of the points at
    or below it (K^2 cells per candidate). Past that size, pygmo per candidate is cheaper."""
    import pygmo

    front = nondominated(np.asarray(front, dtype=float).reshape(-1, 3))
    candidates = np.minimum(np.asarray(candidates, dtype=float).reshape(-1, 3), REF)  # past REF: an empty box
    k = len(front)
    if k == 0:
        return np.prod(REF - candidates, axis=1)
    out = np.zeros(len(candidates))
    live = np.flatnonzero(~(front[None, :, :] <= candidates[:, None, :]).all(-1).any(1))  # not weakly dominated
    if k > SMALL_FRONT:
        base = hypervolume(front)
        for i in live:
            out[i] = pygmo.hypervolume(np.vstack([front, candidates[i]])).compute(REF) - base
        return out
    front = front[np.argsort(front[:, 2], kind="stable")]  # z order: clipping keeps it
    by_x = np.argsort(front[:, 0], kind="stable")  # x order: the staircase within a slab
    below = np.arange(k)[:, None] >= by_x[None, :]  # [slab j, i]: the i-th point in x order is at or below slab j
    for start in range(0, len(live), max(1, _CELLS // (k * k))):
        idx = live[start : start + max(1, _CELLS // (k * k))]
        clipped = np.maximum(front[None], candidates[idx, None])  # [C, K, 3]
        thick = np.diff(np.concatenate([clipped[:, :, 2], np.full((len(idx), 1), REF[2])], axis=1), axis=1)
        wide = np.diff(np.concatenate([clipped[:, by_x, 0], np.full((len(idx), 1), REF[0])], axis=1), axis=1)
        y = np.where(below[None], clipped[:, by_x, 1][:, None, :], REF[1])  # [C, slab, x order]
        area = ((REF[1] - np.minimum.accumulate(y, axis=2)) * wide[:, None, :]).sum(2)  # [C, slab]
        out[idx] = np.prod(REF - candidates[idx], axis=1) - (thick * area).sum(1)
    return out


# -- over a zoo's results ---------------------------------------------------------------


def point_of(r: ResultRecord, normalizer: Normalizer, prior: Prior) -> np.ndarray:
    """A result as minimization objectives; latency/params from the pool profile when known."""
    prof = prior.profiles.get(r.arch)
    lat, par = (prof.latency_ms, prof.params) if prof else (r.latency_ms, r.params)
    return normalizer.objectives(r.accuracy, lat, par)[0]


def normalizer_for(profiles: dict) -> Normalizer:
    return Normalizer(*Prior({}, profiles).bounds())


def points_of(results: list[ResultRecord], normalizer: Normalizer, prior: Prior) -> np.ndarray:
    """`point_of` of many results at once, [n, 3] (one vectorized normalization)."""
    lat, par = [], []
    for r in results:
        prof = prior.profiles.get(r.arch)
        lat.append(prof.latency_ms if prof else r.latency_ms)
        par.append(prof.params if prof else r.params)
    return normalizer.objectives([r.accuracy for r in results], lat, par).reshape(len(results), 3)


def dataset_hypervolumes(results: list[ResultRecord], profiles: dict, dataset_ids: list[str]) -> dict[str, float]:
    """Each dataset's normalized hypervolume over its results (0 for a dataset without any)."""
    norm, prior = normalizer_for(profiles), Prior({}, profiles)
    rows: dict[str, list] = {d: [] for d in dataset_ids}
    for i, r in enumerate(results):
        if r.dataset_id in rows:
            rows[r.dataset_id].append(i)
    points = points_of(results, norm, prior)
    return {d: normalized_hypervolume(points[idx]) if idx else 0.0 for d, idx in rows.items()}


def hv_history(
    results: list[ResultRecord], profiles: dict, dataset_ids: list[str], at: list[int] | None = None
) -> list[float]:
    """Mean normalized hypervolume across the datasets after each result, in commit order;
    with `at` (ascending 0-based result indices), only after those results: a dataset's
    hypervolume is then recomputed only at a mark where it has new results."""
    ordered = sorted(results, key=lambda r: (r.created_at, r.job_id))
    points = points_of(ordered, normalizer_for(profiles), Prior({}, profiles))
    rows: dict[str, list] = {d: [] for d in dataset_ids}
    hv = {d: 0.0 for d in dataset_ids}
    marks = set(range(len(ordered)) if at is None else at)
    changed, out = set(), []
    for i, r in enumerate(ordered):
        rows.setdefault(r.dataset_id, []).append(i)
        changed.add(r.dataset_id)
        if i in marks:
            for d in changed:
                hv[d] = normalized_hypervolume(points[rows[d]])
            changed.clear()
            out.append(float(np.mean(list(hv.values()))))
    return out


# -- per-dataset summaries for `tans status` ---------------------------------------------


def hypervolume_after(points: np.ndarray, start: int = 0) -> np.ndarray:
    """The normalized hypervolume of the first k+1 minimization points, for each k >= `start`
    (0 before it): the front of the first `start` at once, then one volume computation per
    point that enlarges the front (a weakly dominated point adds nothing)."""
    points = np.asarray(points, dtype=float).reshape(-1, 3)
    out = np.zeros(len(points))
    front = nondominated(points[:start]) if start else np.empty((0, 3))
    hv = normalized_hypervolume(front) if len(front) else 0.0
    for i in range(start, len(points)):
        p = points[i]
        if not (len(front) and (front <= p).all(1).any()):
            front = nondominated(np.vstack([front, p]))
            hv = normalized_hypervolume(front)
        out[i] = hv
    return out


def _beaten(costs: np.ndarray, by: np.ndarray) -> np.ndarray:
    """For each (accuracy, latency, params) row of `costs`: whether a row of `by` dominates it."""
    out = np.zeros(len(costs), dtype=bool)
    for chunk in range(0, len(by), 512):  # [len(costs), 512] comparisons at a time
        q = by[chunk : chunk + 512, None, :]
        no_worse = (q[..., 0] >= costs[:, 0]) & (q[..., 1] <= costs[:, 1]) & (q[..., 2] <= costs[:, 2])
        better = (q[..., 0] > costs[:, 0]) | (q[..., 1] < costs[:, 1]) | (q[..., 2] < costs[:, 2])
        out |= (no_worse & better).any(0)
    return out


def front_after(costs: np.ndarray, start: int = 0) -> np.ndarray:
    """`len(front_indices(costs[:k+1]))` for each k >= `start` (0 before it): the front of the
    first `start` at once, then point by point (a point dominated by any earlier one is
    dominated by one on the front: dominance is transitive, so the front alone decides)."""
    costs = np.asarray(costs, dtype=float).reshape(-1, 3)
    out = np.zeros(len(costs), dtype=np.int64)
    front = costs[:start][~_beaten(costs[:start], costs[:start])] if start else np.empty((0, 3))
    for i in range(start, len(costs)):
        p = costs[i : i + 1]
        if not (len(front) and _beaten(p, front)[0]):
            front = np.vstack([front[~_beaten(front, p)], p])
        out[i] = len(front)
    return out


def commit_order(results: list[ResultRecord]) -> list[ResultRecord]:
    return sorted(results, key=lambda r: (r.created_at, r.job_id))


def summarize_rows(results: list[ResultRecord], profiles: dict | None):
    """The `summarize` of `write_snapshot`: for the new rows of a snapshot refresh, each one's
    rank among its dataset's results in commit order, and its dataset's hypervolume (with the
    pool profiles) and Pareto front size after it. `results` are all committed results."""

    def summarize(new: list[ResultRecord]) -> dict[str, list]:
        wanted = {r.job_id for r in new}
        touched = {r.dataset_id for r in new}
        by_dataset: dict[str, list[ResultRecord]] = {}
        for r in results:
            if r.dataset_id in touched:
                by_dataset.setdefault(r.dataset_id, []).append(r)
        found: dict[str, tuple] = {}
        norm, prior = (normalizer_for(profiles), Prior({}, profiles)) if profiles else (None, None)
        for rows in by_dataset.values():
            rows = commit_order(rows)
            start = min(k for k, r in enumerate(rows) if r.job_id in wanted)  # the rows before: one front
            costs = np.array([(r.accuracy, r.latency_ms, r.params) for r in rows], dtype=float)
            fronts = front_after(costs, start)
            hvs = hypervolume_after(points_of(rows, norm, prior), start) if norm else [None] * len(rows)
            for k in range(start, len(rows)):
                if rows[k].job_id in wanted:
                    found[rows[k].job_id] = (k, hvs[k], int(fronts[k]))
        missing = (None, None, None)
        columns = zip(*(found.get(r.job_id, missing) for r in new))
        return dict(zip(("rank_in_dataset", "hypervolume_after", "front_after"), columns))

    return summarize
