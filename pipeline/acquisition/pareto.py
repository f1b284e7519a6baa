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

The predictor is fitted off the driver's loop (tans.pipeline.acquisition.fitting): when the
results reach the next `training_size` m, the fit on the first m of them in commit order
starts in a background process and the policy goes on proposing with the newest finished
fit. The first fit starts before it is needed: when a third of the initial phase's
results are in (`early_fit_size`) while its last pairs are still being proposed (fewer jobs
in flight than two thirds of the initial design), the fit on them runs while the rest of the
initial design trains, and the first predictor-driven step proposes with it as the fit on
the results in by then starts. The driver waits for a fit only when none has finished: when
the rest of the initial design trains faster than that fit (a replay build), when more
workers than two thirds of the initial design leave no initial step to start it in (then the
first fit is on the few results in), and at the first step of a build resumed or started on
a zoo past its initial phase without a kept fit. A resumed build does not wait: each fit that
takes over is kept in the zoo (`predictor/fits/`, with the two largest others still on a
prefix of the results), and the largest on a prefix of the results (its rows' hash matches)
is the one the interrupted run was proposing with, so the resumed one proposes with it at once
while the fit on all its results starts.
Each fit is a deterministic function of its rows, their inputs and its seed; given the fit,
proposals are a deterministic function of the zoo state (results with their commit times),
the pending set and the seed. Which fit proposed each pair is recorded (`last_fit_of`; the
driver tags the job's MLflow run with it), and a policy pinned to that fit (`fit_size`)
proposes exactly what the uninterrupted build did. What the policy remembers between steps
(the fits, their MC samples over the whole dataset x arch grid, each dataset's gains for its
front) are memos of those pure functions, which is what makes a step cost milliseconds at
140 x 100.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import numpy as np

from tans.pipeline.acquisition import predictor
from tans.pipeline.acquisition.base import Pair, PolicyContext, first_allowed, taken_pairs
from tans.pipeline.acquisition.compute_priors import load_prior
from tans.pipeline.acquisition.fitting import Fit, Fitter, model_of
from tans.pipeline.acquisition.hypervolume import Normalizer, gains, point_of, points_of
from tans.pipeline.acquisition.priors import Prior, topology_of
from tans.pipeline.acquisition.random import RandomPolicy
from tans.zoo_schema.errors import StorageError
from tans.zoo_schema.layout import PREDICTOR_FIT, PREDICTOR_FITS, predictor_fit_key
from tans.zoo_schema.records import ResultRecord
from tans.zoo_schema.results import ZooState

KEEP_STORED = 3  # fits kept in the zoo: the last that proposed and the two largest others on a prefix


def training_size(n_results: int, n_init_total: int, every: int) -> int:
    """How many results the predictor is trained on, given n results: the largest multiple
    of the retrain interval reached (at least the initial phase's size). The interval is
    `every` up to 16 intervals' worth of results and doubles each time the zoo doubles past
    that, so the predictor of a 14,000-result build is fitted 40 times after its initial phase, not 212."""
    step = every
    while n_results >= 16 * step:
        step *= 2
    m = (n_results // step) * step
    return min(n_results, max(m, n_init_total))


def early_fit_size(n_init_total: int) -> int:
    """The size of the fit started during the initial phase, so the first predictor-driven
    step need not wait for one: a third of the initial phase's results. A replay build at paper
    scale (jobs that take no time) proposes the rest of its initial design in 2-4 s, and there
    the fit started at three quarters made the first predictor step wait 2.4 s, at half
    0.2-0.8 s; a fit on fewer rows proposes only until the fit on all of them is done."""
    return max(4, n_init_total // 3)


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
        self._model_size, self._model_rows = -1, None
        self._fits: list[Fit] = []  # the fits this policy asked for, oldest first
        self._read_stored = False  # whether the zoo's stored fits were looked at (once, at the first fit)
        self._prior_token: tuple[int, str] | None = None
        self.fit_size: int | None = None  # pinned: propose with the fit on this many results
        self.last_fit_of: dict[Pair, int] = {}  # the last proposals' fit sizes (picks by the predictor)
        self.fit_history: list[Fit] = []  # the fits that proposed, in the order they took over
        self.last_scores: dict[Pair, float] = {}
        Fitter.shared().warm()  # the fitting process starts while the initial design runs
        # memos of pure functions of (zoo state, seed): they only save recomputation
        self._grid_key = None
        self._topologies: dict[str, list[int]] = {}
        self._points: dict[str, np.ndarray] = {}
        self._gain_cache: dict[tuple, np.ndarray] = {}

    # -- inputs -----------------------------------------------------------------------------
    def _ensure_prior(self, dataset_ids: list[str]) -> Prior:
        if self.prior is None or not set(dataset_ids) <= set(self.prior.features):
            self.prior = load_prior(self.store, self.manifest, dataset_ids, self.image_size, self.log)
        return self.prior

    def _fit_inputs(self, rows: list[ResultRecord]):
        """A fit's rows as the unique datasets' features, the unique archs' topologies and
        functional embeddings, one (dataset, arch) index pair per row, and the accuracies."""
        datasets, archs = sorted({r.dataset_id for r in rows}), sorted({r.arch for r in rows})
        d_at, a_at = {d: i for i, d in enumerate(datasets)}, {a: j for j, a in enumerate(archs)}
        data = np.stack([self.prior.features[d] for d in datasets])
        topo = np.array([self._topology(a) for a in archs], dtype=np.float32)
        func = np.stack([np.asarray(self.prior.profiles[a].functional_embedding, dtype=np.float32) for a in archs])
        y = [r.accuracy for r in rows]
        return data, topo, func, [d_at[r.dataset_id] for r in rows], [a_at[r.arch] for r in rows], y

    def _fit_key(self, order: list[ResultRecord], m: int) -> int:
        """What a fit on the first m rows of `order` depends on: those rows, the prior's
        inputs, the seed."""
        if self._prior_token is None or self._prior_token[0] != id(self.prior):
            h = hashlib.sha256()
            for d in sorted(self.prior.features):
                h.update(d.encode() + np.asarray(self.prior.features[d], np.float32).tobytes())
            for a in sorted(self.prior.profiles):
                h.update(a.encode() + np.asarray(self.prior.profiles[a].functional_embedding, np.float32).tobytes())
            self._prior_token = (id(self.prior), h.hexdigest())
        h = hashlib.sha256(f"{predictor.FIT_VERSION}:{self._prior_token[1]}:{self.seed}:{m}:".encode())
        h.update("\0".join(r.job_id for r in order[:m]).encode())
        return int(h.hexdigest()[:16], 16)  # stable across processes: it names the fits kept in the zoo

    def _usable_order(self, results: list[ResultRecord]) -> list[ResultRecord]:
        """The results a fit can use (arch and dataset in the prior), in commit order."""
        usable = [r for r in results if r.arch in self.prior.profiles and r.dataset_id in self.prior.features]
        return sorted(usable, key=lambda r: (r.created_at, r.job_id))

    def _request(self, order: list[ResultRecord], m: int) -> Fit:
        """The fit on the first m rows of `order`, asked of the background process (started
        there unless it is done, running, or another fit is running: asked again next step)."""
        key = self._fit_key(order, m)
        fit = next((f for f in self._fits if f.key == key), None) or Fit(m, key, self.seed * 1_000_003 + m)
        if fit not in self._fits:
            self._fits.append(fit)
        Fitter.shared().request(fit, lambda: self._fit_inputs(order[:m]))
        return fit

    def _fit_early(self, state: ZooState, dataset_ids: list[str], n_init_total: int) -> None:
        """During the initial phase, once `early_fit_size` results are in, start the first fit
        (see the module docstring); it is a pure function of those rows, like every fit."""
        m = early_fit_size(n_init_total)
        if self.fit_size is not None or self._model is not None or not m <= len(state.results) < n_init_total:
            return  # pinned, a predictor proposes already, too early, or past an initial phase (datasets added later)
        if max(Counter(r.dataset_id for r in state.results).values()) > self.settings.n_init_per_dataset:
            return  # a dataset past its initial pairs: datasets were added to a grown zoo
        self._ensure_prior(dataset_ids)
        order = self._usable_order(state.results)
        if len(order) >= m:
            self._request(order, m)

    def _predictor(self, results: list[ResultRecord], n_init_total: int):
        """The predictor to propose with (None: too few results yet): the newest finished fit
        on a prefix of the results in commit order, while the fit on the `training_size` prefix
        runs in the background. With none finished, the one running is waited for (a pinned
        `fit_size`: that one)."""
        order = self._usable_order(results)
        m = self.fit_size or training_size(len(order), n_init_total, self.settings.retrain_every)
        if m < 4 or m > len(order):
            return None
        if self._model is None and not self._read_stored:  # a fresh policy: a resumed build's kept fits
            self._read_stored = True
            self._stored_fit(order)
        target = self._request(order, m)
        fitter = Fitter.shared()
        # fits on rows that are no longer a prefix (a result set aside) are dropped
        self._fits = [f for f in self._fits if f.size <= len(order) and f.key == self._fit_key(order, f.size)]
        ready = [f for f in self._fits if f.key in fitter.done] if self.fit_size is None else []
        running = [f for f in self._fits if fitter.running is not None and f.key == fitter.running.key]
        first = running[0] if running and self.fit_size is None else target  # none finished: the one nearest done
        use = (
            max(ready, key=lambda f: f.size)
            if ready
            else fitter.wait_for(first, lambda: self._fit_inputs(order[: first.size]))
        )
        use = fitter.done.get(use.key, use)
        fitter.request(target, lambda: self._fit_inputs(order[:m]))  # the fitter is free again: start it
        self._fits = [f for f in self._fits if f.size >= use.size]  # older fits are not needed again
        if use.key != self._model_rows:
            self._model, self._model_size, self._model_rows = use.model, use.size, use.key
            self.fit_history.append(use)
            if use.seconds is None:
                self.log(
                    f"accuracy predictor on {use.size} results read from the zoo (the fit an earlier run of this "
                    f"build proposed with; held-out MSE {use.model.val_mse:.4f}); it proposes from now"
                )
            else:
                self.log(
                    f"accuracy predictor retrained on {use.size} results in {use.seconds:.1f}s off the loop "
                    f"(held-out MSE {use.model.val_mse:.4f}); it proposes from now"
                )
                self._keep(use, order)
        return self._model

    def _keep(self, fit: Fit, order: list[ResultRecord]) -> None:
        """Keep the fit that proposes from now in the zoo, as safetensors, so a resumed build
        proposes with it at once: it and the largest others still on a prefix of `order`,
        `KEEP_STORED` in all; the rest are deleted. A cache: a storage error is logged, and the
        build goes on."""
        if self.store is None or fit.weights is None:
            return
        from safetensors.numpy import save

        from tans.pipeline.acquisition.fitting import _arrays

        arrays = {k: np.array(v, order="C") for k, v in _arrays(fit.weights).items()}  # weights, val_mse, seconds
        written = predictor_fit_key(fit.size, fit.key)
        try:
            self.store.write_bytes(written, save(arrays))
            fit.weights = None  # kept: no need to hold it twice
            listed = [k for k in self.store.list(PREDICTOR_FITS) if k != written and PREDICTOR_FIT.fullmatch(k)]
            current = [k for k in listed if self._on_prefix(k, order)]
            keep = set(sorted(current, reverse=True)[: KEEP_STORED - 1])  # zero-padded sizes: largest first
            for key in listed:
                if key not in keep:
                    self.store.delete(key)
        except (StorageError, OSError) as e:
            self.log(f"the predictor fit on {fit.size} results was not kept in the zoo ({e}); the build goes on")

    def _on_prefix(self, key: str, order: list[ResultRecord]) -> bool:
        """Whether the kept fit `key` is on the first rows of `order` (its size and hash match)."""
        found = PREDICTOR_FIT.fullmatch(key)
        size = int(found.group(1)) if found else 0
        return 4 <= size <= len(order) and found.group(2) == f"{self._fit_key(order, size):016x}"

    def _stored_fit(self, order: list[ResultRecord]) -> None:
        """The largest fit kept in the zoo whose rows are a prefix of `order` (its key matches
        theirs; with a pinned `fit_size`, that size only), made ready in the fitting process's
        memo: what an interrupted run of this build was proposing with. One that does not
        load is named in the log and deleted, and the build waits for a fit as without it."""
        if self.store is None:
            return
        from safetensors.numpy import load

        from tans.pipeline.acquisition.fitting import _npz

        try:
            listed = sorted(self.store.list(PREDICTOR_FITS), reverse=True)  # zero-padded sizes: largest first
        except (StorageError, OSError) as e:
            self.log(f"the predictor fits kept in the zoo could not be listed ({e}); fitting again")
            return
        for key in listed:
            if not self._on_prefix(key, order):
                continue  # on other rows (a result set aside since, another seed or version): not this build's
            size = int(PREDICTOR_FIT.fullmatch(key).group(1))
            if self.fit_size not in (None, size):
                continue
            rows = self._fit_key(order, size)
            try:
                model = model_of(_npz(**load(self.store.read_bytes(key))))
                row = order[0]  # the prior's shapes: a fit for other inputs fails here, not mid-step
                predictor.mc_samples(
                    model,
                    np.asarray(self.prior.features[row.dataset_id], np.float32)[None],
                    np.asarray([self._topology(row.arch)], np.float32),
                    np.asarray(self.prior.profiles[row.arch].functional_embedding, np.float32)[None],
                    samples=1,
                )
            except Exception as e:  # noqa: BLE001 - a damaged file costs a fit, never the build
                self.log(
                    f"the predictor fit {key} in the zoo does not load ({type(e).__name__}: {e}); "
                    "deleted, fitting again"
                )
                try:
                    self.store.delete(key)
                except (StorageError, OSError):
                    pass
                return
            fit = Fit(size, rows, self.seed * 1_000_003 + size, None, model, None)
            Fitter.shared().done[rows] = fit
            self._fits.append(fit)
            return

    # -- proposals --------------------------------------------------------------------------
    def propose(
        self, state: ZooState, n: int, pending: frozenset[Pair] = frozenset(), universe: frozenset[Pair] | None = None
    ) -> list[Pair]:
        dataset_ids = sorted(d.dataset_id for d in state.datasets)
        self.last_fit_of = {}
        taken = taken_pairs(state, pending)
        allowed = lambda p: p not in taken and (universe is None or p in universe)
        counts = Counter(d for d, _ in taken)
        k = self.settings.n_init_per_dataset

        def initial(pair: Pair) -> bool:  # phase 1: each dataset's first k pairs are random
            if counts[pair.dataset_id] >= k:
                return False
            counts[pair.dataset_id] += 1
            return True

        out = (
            first_allowed(self.random.sequence(dataset_ids), n, taken, universe, initial)
            if any(counts[d] < k for d in dataset_ids)
            else []
        )
        if len(out) >= n:
            self._fit_early(state, dataset_ids, k * len(dataset_ids))
            return out
        self._ensure_prior(dataset_ids)
        model = self._predictor(state.results, k * len(dataset_ids))
        chosen = set(out)
        candidates = [Pair(d, a) for d in dataset_ids for a in self.pool if allowed((d, a)) and (d, a) not in chosen]
        if model is None or not candidates:
            extra = self.random.propose(state, n - len(out), pending=frozenset(pending) | chosen, universe=universe)
            return out + extra
        rng = random.Random(f"{self.seed}:candidates:{len(state.results)}:{len(pending)}")
        if len(candidates) > self.settings.max_candidates:
            candidates = sorted(rng.sample(candidates, self.settings.max_candidates))
        believers = sorted(set(pending) | chosen)
        picks = self._pick(state, model, candidates, believers, n - len(out))
        self.last_fit_of = dict.fromkeys(picks, self._model_size)
        return out + picks

    def _grid(self, model, dataset_ids: list[str]):
        """MC samples [S, D, A] and their mean for every (dataset, pool arch) pair, for this
        model: computed once per retraining (seeded by the model's size), then indexed."""
        key = (self._model_rows, tuple(dataset_ids))
        if self._grid_key != key:
            archs = [a for a in self.pool if a in self.prior.profiles]
            data = np.stack([self.prior.features[d] for d in dataset_ids])
            topo = np.array([self._topology(a) for a in archs], dtype=np.float32)
            func = np.stack([np.asarray(self.prior.profiles[a].functional_embedding, dtype=np.float32) for a in archs])
            samples = predictor.mc_grid(
                model, data, topo, func, self.settings.mc_samples, seed=self.seed * 7919 + self._model_size
            )
            self._grid_key, self._samples, self._mean = key, samples, samples.mean(0)
            self._d_index = {d: i for i, d in enumerate(dataset_ids)}
            self._a_index = {a: j for j, a in enumerate(archs)}
            lat = np.array([self.prior.profiles[a].latency_ms for a in archs])
            par = np.array([self.prior.profiles[a].params for a in archs])
            lat_min, lat_max, par_min, par_max = self.prior.bounds()
            self._norm = Normalizer(lat_min, lat_max, par_min, par_max)
            self._cost = self._norm.objectives(np.zeros(len(archs)), lat, par)[:, 1:]  # [A, 2]
            self._gain_cache.clear()
        return self._samples, self._mean

    def _topology(self, arch: str) -> list[int]:
        if arch not in self._topologies:
            self._topologies[arch] = topology_of(arch)
        return self._topologies[arch]

    def _point(self, r: ResultRecord) -> np.ndarray:
        """A result's objectives (a pure function of the record and the pool profiles)."""
        if r.job_id not in self._points:
            self._points[r.job_id] = point_of(r, self._norm, self.prior)
        return self._points[r.job_id]

    def _believed(self, pair: Pair) -> np.ndarray:
        """A pending pair's objectives at the predictor's mean accuracy."""
        i, j = self._d_index[pair.dataset_id], self._a_index[pair.arch]
        return np.array([1.0 - float(np.clip(self._mean[i, j], 0, 1)), *self._cost[j]])

    def _dataset_gains(self, dataset_id: str, front: list[np.ndarray], done: set[str]) -> np.ndarray:
        """Mean over MC samples of each pool arch's hypervolume gain on this dataset's front
        [A] (-inf for the archs `done` on it, which are never candidates again); memoized by
        (model, front, done), so a step rescores only the datasets it changed."""
        front_arr = np.array(front, dtype=float).reshape(-1, 3)
        open_ = np.array([j for a, j in self._a_index.items() if a not in done], dtype=int)
        key = (dataset_id, np.unique(front_arr, axis=0).tobytes(), open_.tobytes())
        if key not in self._gain_cache:
            acc = self._samples[:, self._d_index[dataset_id], open_]  # [S, a]
            s, a = acc.shape
            objs = np.concatenate(
                [1.0 - np.clip(acc, 0, 1)[..., None], np.broadcast_to(self._cost[open_], (s, a, 2))], axis=2
            )  # [S, a, 3]
            out = np.full(len(self._a_index), -np.inf)
            out[open_] = gains(front_arr, objs.reshape(-1, 3)).reshape(s, a).mean(0)
            self._gain_cache[key] = out
        return self._gain_cache[key]

    def _pick(self, state: ZooState, model, candidates: list[Pair], believers: list[Pair], n: int) -> list[Pair]:
        dataset_ids = sorted(d.dataset_id for d in state.datasets if d.dataset_id in self.prior.features)
        self._grid(model, dataset_ids)
        candidates = [c for c in candidates if c.dataset_id in self._d_index and c.arch in self._a_index]
        fronts: dict[str, list] = {}
        done: dict[str, set[str]] = {}
        new = [r for r in state.results if r.job_id not in self._points]  # all of them in a resumed build's first step
        self._points.update(zip((r.job_id for r in new), points_of(new, self._norm, self.prior)))
        for r in state.results:
            fronts.setdefault(r.dataset_id, []).append(self._point(r))
            done.setdefault(r.dataset_id, set()).add(r.arch)
        for b in map(Pair._make, believers):  # pending jobs at their believed accuracy
            if b.dataset_id in self._d_index and b.arch in self._a_index:
                fronts.setdefault(b.dataset_id, []).append(self._believed(b))
        by_dataset: dict[str, list[int]] = {}
        for i, c in enumerate(candidates):
            by_dataset.setdefault(c.dataset_id, []).append(i)
        scores = np.full(len(candidates), -np.inf)

        def score(d: str) -> None:
            idx = by_dataset[d]
            g = self._dataset_gains(d, fronts.get(d, []), done.get(d, set()))
            scores[idx] = g[[self._a_index[candidates[i].arch] for i in idx]]

        for d in by_dataset:
            score(d)
        self.last_scores = {candidates[i]: float(scores[i]) for i in range(len(candidates))}
        out = []
        for _ in range(min(n, len(candidates))):
            best = int(np.argmax(scores))  # ties: the first in sorted candidate order
            pick = candidates[best]
            out.append(pick)
            scores[best] = -np.inf
            by_dataset[pick.dataset_id] = [i for i in by_dataset[pick.dataset_id] if i != best]
            fronts.setdefault(pick.dataset_id, []).append(self._believed(pick))
            if by_dataset[pick.dataset_id]:
                score(pick.dataset_id)
        return out
