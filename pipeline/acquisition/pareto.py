"""Efficient zoo construction (paper Algorithm 1), batched over parallel workers.

Phase 1: every dataset gets `n_init_per_dataset` random pool architectures (paper: 5-6).
Phase 2: the accuracy predictor S_zoo, trained on the zoo's results, draws MC-dropout
samples for a candidate subset C_t of the untrained (dataset, pool arch) pairs; each
candidate's score f_zoo is the mean, over samples, of the gain in its dataset's
hypervolume over (accuracy, normalized latency, normalized params); the best is proposed.

Pending jobs (in flight on other workers) are added to their dataset's front at the
predictor's mean accuracy before scoring ("believer" fantasies), and so is each proposal
of a batch before the next is chosen. A pending job on D thus lowers the gain of D's
similar candidates, and W workers do not get W near-identical pairs. The believer costs
one predictor pass; sampling fantasies would multiply the hypervolume work by the number
of fantasies for little difference at these batch sizes.

The policy keeps no state that cannot be rebuilt from the zoo: the predictor is a
deterministic function of the results (trained on m of them in job-id order, m the
largest multiple of `retrain_every` reached, at least the initial phase's size), its
seed and the pending set. The same zoo state and seed give the same proposals, whether
the results came from Ray or from replay, and a resumed build proposes what an
uninterrupted one would.
"""
from __future__ import annotations

import random
from collections import Counter

import numpy as np

from pipeline.acquisition import predictor
from pipeline.acquisition.base import Pair, PolicyContext, first_allowed, taken_pairs
from pipeline.acquisition.hypervolume import Normalizer, gains, point_of
from pipeline.acquisition.profiles import Prior, topology_of
from pipeline.acquisition.profiling import load_prior
from pipeline.acquisition.random import RandomPolicy
from zoo_schema.records import ResultRecord
from zoo_schema.results import ZooState


def training_size(n_results: int, n_init_total: int, every: int) -> int:
    """How many results the predictor is trained on, given n results."""
    m = (n_results // every) * every
    return min(n_results, max(m, n_init_total))


class ParetoPolicy:
    """Algorithm 1 (see the module's docstring); random pairs until every dataset has its
    initial ones, and whenever the predictor cannot be trained yet."""

    def __init__(self, context: PolicyContext):
        self.seed = context.seed
        self.pool = list(context.pool)
        self.random = RandomPolicy(context)
        self.store, self.manifest = context.store, context.manifest
        self.image_size = context.image_size
        self.settings = context.pareto
        self.prior: Prior | None = context.prior
        self.log = context.log
        self._model = None
        self._model_size = -1
        self.last_scores: dict[Pair, float] = {}

    # -- inputs -----------------------------------------------------------------------------
    def _ensure_prior(self, dataset_ids: list[str]) -> Prior:
        if self.prior is None or not set(dataset_ids) <= set(self.prior.features):
            self.prior = load_prior(self.store, self.manifest, dataset_ids, self.image_size, self.log)
        return self.prior

    def _inputs(self, pairs: list[Pair]):
        prior = self.prior
        data = np.stack([prior.features[d] for d, _ in pairs])
        topo = np.array([topology_of(a) for _, a in pairs], dtype=np.float32)
        func = np.stack([np.asarray(prior.profiles[a].functional_embedding, dtype=np.float32) for _, a in pairs])
        return data, topo, func

    def _predictor(self, results: list[ResultRecord], n_init_total: int):
        usable = [r for r in sorted(results, key=lambda r: r.job_id) if r.arch in self.prior.profiles
                  and r.dataset_id in self.prior.features]
        m = training_size(len(usable), n_init_total, self.settings.retrain_every)
        if m < 4:
            return None
        if m != self._model_size:
            rows = usable[:m]
            data, topo, func = self._inputs([(r.dataset_id, r.arch) for r in rows])
            y = np.array([r.accuracy for r in rows], dtype=np.float32)
            self._model = predictor.fit(data, topo, func, y, seed=self.seed * 1_000_003 + m)
            self._model_size = m
            self.log(f"accuracy predictor retrained on {m} results (held-out MSE {self._model.val_mse:.4f})")
        return self._model

    # -- proposals --------------------------------------------------------------------------
    def propose(self, state: ZooState, n: int, pending: frozenset[Pair] = frozenset(),
                universe: frozenset[Pair] | None = None) -> list[Pair]:
        dataset_ids = sorted(d.dataset_id for d in state.datasets)
        taken = taken_pairs(state, pending)
        allowed = (lambda p: p not in taken and (universe is None or p in universe))
        counts = Counter(d for d, _ in taken)
        k = self.settings.n_init_per_dataset

        def initial(pair: Pair) -> bool:  # phase 1: each dataset's first k pairs are random
            if counts[pair.dataset_id] >= k:
                return False
            counts[pair.dataset_id] += 1
            return True
        out = first_allowed(self.random.sequence(dataset_ids), n, taken, universe, initial) \
            if any(counts[d] < k for d in dataset_ids) else []
        if len(out) >= n:
            return out
        self._ensure_prior(dataset_ids)
        model = self._predictor(state.results, k * len(dataset_ids))
        chosen = set(out)
        candidates = [Pair(d, a) for d in dataset_ids for a in self.pool
                      if allowed((d, a)) and (d, a) not in chosen]
        if model is None or not candidates:
            extra = self.random.propose(state, n - len(out), pending=frozenset(pending) | chosen, universe=universe)
            return out + extra
        rng = random.Random(f"{self.seed}:candidates:{len(state.results)}:{len(pending)}")
        if len(candidates) > self.settings.max_candidates:
            candidates = sorted(rng.sample(candidates, self.settings.max_candidates))
        believers = sorted(set(pending) | chosen)
        return out + self._pick(state, model, candidates, believers, n - len(out))

    def _pick(self, state: ZooState, model, candidates: list[Pair], believers: list[Pair], n: int) -> list[Pair]:
        lat_min, lat_max, par_min, par_max = self.prior.bounds()
        norm = Normalizer(lat_min, lat_max, par_min, par_max)
        pairs = candidates + [b for b in believers if b[1] in self.prior.profiles]
        data, topo, func = self._inputs(pairs)
        seed = self.seed * 7919 + len(state.results)  # not the pending set: see mc_samples
        samples = predictor.mc_samples(model, data, topo, func, self.settings.mc_samples, seed)
        mean = samples.mean(0)
        lat = np.array([self.prior.profiles[a].latency_ms for _, a in pairs])
        par = np.array([self.prior.profiles[a].params for _, a in pairs])

        fronts: dict[str, list] = {}
        for r in state.results:
            fronts.setdefault(r.dataset_id, []).append(point_of(r, norm, self.prior))
        for i in range(len(candidates), len(pairs)):  # pending jobs at their believed accuracy
            fronts.setdefault(pairs[i][0], []).append(norm.objectives(mean[i], lat[i], par[i])[0])

        by_dataset: dict[str, list[int]] = {}
        for i, (d, _) in enumerate(candidates):
            by_dataset.setdefault(d, []).append(i)
        scores = np.full(len(candidates), -np.inf)

        def score(d: str) -> None:
            idx = np.array(by_dataset[d])
            objs = np.stack([norm.objectives(samples[s, idx], lat[idx], par[idx])
                             for s in range(samples.shape[0])])  # [S, c, 3]
            g = gains(np.array(fronts.get(d, [])).reshape(-1, 3), objs.reshape(-1, 3))
            scores[idx] = g.reshape(samples.shape[0], len(idx)).mean(0)

        for d in by_dataset:
            score(d)
        self.last_scores = {candidates[i]: float(scores[i]) for i in range(len(candidates))}
        out = []
        for _ in range(min(n, len(candidates))):
            best = int(np.argmax(scores))  # ties: the first in sorted candidate order
            d = candidates[best][0]
            out.append(candidates[best])
            scores[best] = -np.inf
            by_dataset[d] = [i for i in by_dataset[d] if i != best]
            fronts.setdefault(d, []).append(norm.objectives(mean[best], lat[best], par[best])[0])
            if by_dataset[d]:
                score(d)
        return out
