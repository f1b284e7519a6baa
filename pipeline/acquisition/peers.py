"""Peer acquisition policies: Optuna's NSGA-II and TPE samplers and BoTorch's qNEHVI (through
optuna-integration), run on the zoo as multi-objective black-box optimizers.

- One study per dataset, three objectives: maximize accuracy, minimize latency_ms, minimize
  params (latency and params from the pool profile of the arch, as the Pareto policy's).
  Hypervolume is per dataset, and accuracies of different datasets do not belong in one
  front, so the datasets are not mixed in one study.
- Which dataset gets the next pair: the one with the fewest done + pending + already chosen
  (in this batch) pairs; ties in a seeded order. Datasets with no allowed pair left are
  skipped. A dataset that gets all its allowed archs in one batch gets them in pool order,
  without a sampler: the set is forced, and the order within a batch does not change what
  the zoo will hold.
- The first STARTUP pairs of each dataset are the same initial design as the random and
  Pareto policies' (the dataset's seeded permutation of the pool): every strategy starts from
  the same pairs, and the samplers' own random start (a random genome snapped to the pool)
  would favour the archs with the largest Voronoi cells, rarely the pool's extremes.
- The search space is the arch genome: 5 depths in 2..4, 20 kernels in {3,5,7} and 20 expand
  ratios in 3..6 (inactive slots hold OFA's fill, 3: `Arch.ofa_config()`). The pool is finite,
  so a sampled genome is snapped to the nearest allowed pool arch of that dataset (not taken,
  in `universe`): the smallest Euclidean distance between genomes scaled to [0, 1] per
  dimension, ties by pool order. (qNEHVI maximizes its acquisition over the allowed pool
  genomes directly, so its snap is the identity: see QNEHVIPolicy.)
- No hidden state (base.py's contract): each pick rebuilds its dataset's study in memory from
  the zoo: the dataset's results as finished trials in commit order (created_at, job_id), then
  its pending and already chosen pairs as running trials, and asks one trial of a sampler
  seeded by (seed, dataset, number of trials). A resumed build thus proposes what an
  uninterrupted one would, and a batch picks what one pair at a time would, with the earlier
  picks pending (but for the forced datasets' order). NSGA-II's generations are rebuilt as
  attributes: the i-th result is in generation i // population_size. Pending pairs enter only
  once the dataset has STARTUP results: before, every sampler samples at random, and BoTorch
  would count running trials as its startup trials and fit a GP to fewer results than that.

optuna, optuna-integration and botorch are imported here only (the registry loads this module
when one of these strategies is created).
"""

from __future__ import annotations

import contextlib
import random
import warnings
import zlib
from collections import Counter

import numpy as np

from tans.pipeline.acquisition.base import Pair, PolicyContext, taken_pairs
from tans.pipeline.acquisition.random import RandomPolicy
from tans.workers.networks.ofa_space import SLOTS, UNITS, Arch
from tans.zoo_schema.errors import ConfigError
from tans.zoo_schema.results import ZooState

STARTUP = 3  # random trials per dataset before TPE / qNEHVI model the results
POPULATION = 4  # NSGA-II: a dataset gets ~18 of 30 archs in the benchmark, so Optuna's
# default of 50 would never leave generation 0 (random sampling)
GENERATION_KEY = "NSGAIISampler:generation"  # optuna/samplers/_ga/_base.py: f"{cls.__name__}:generation"
DIRECTIONS = ["maximize", "minimize", "minimize"]  # accuracy, latency_ms, params

NAMES = [f"d{i}" for i in range(UNITS)] + [f"k{i}" for i in range(SLOTS)] + [f"e{i}" for i in range(SLOTS)]
LOW = np.array([2] * UNITS + [3] * SLOTS + [3] * SLOTS, dtype=float)
HIGH = np.array([4] * UNITS + [7] * SLOTS + [6] * SLOTS, dtype=float)


def genome(arch_id: str) -> dict[str, int]:
    """The arch as the study's parameters (inactive slots hold OFA's fill, 3)."""
    config = Arch.parse(arch_id).ofa_config()
    return dict(zip(NAMES, config["d"] + config["ks"] + config["e"]))


def distributions() -> dict:
    from optuna.distributions import IntDistribution

    out = {f"d{i}": IntDistribution(2, 4) for i in range(UNITS)}
    out.update({f"k{i}": IntDistribution(3, 7, step=2) for i in range(SLOTS)})
    out.update({f"e{i}": IntDistribution(3, 6) for i in range(SLOTS)})
    return out


@contextlib.contextmanager
def quiet():
    """Optuna's info logs and experimental/numerical warnings off, restored after."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


PEER_MODULES = ("optuna", "optuna_integration", "botorch")  # the optional extra `tans[peers]`


def require_peers() -> None:
    """A clear error when the optional peers are not installed (they are an extra)."""
    import importlib.util
    import sys

    def installed(module: str) -> bool:
        try:
            return module in sys.modules or importlib.util.find_spec(module) is not None
        except ValueError:  # imported lazily, without a spec: it is there
            return True

    missing = [m for m in PEER_MODULES if not installed(m)]
    if missing:
        raise ConfigError(
            f"the peer strategies (nsga2, tpe, qnehvi) need {', '.join(missing)}, which are "
            "not installed; install them with `pip install 'tans[peers]'`, or use --strategy "
            "pareto (the default) or random"
        )


class PeerPolicy:
    """A per-dataset Optuna study, rebuilt for every pick (see the module's docstring)."""

    def __init__(self, context: PolicyContext):
        require_peers()
        self.seed = context.seed
        self.pool = list(context.pool)
        self.context = context
        self._profiles = context.prior.profiles if context.prior is not None else None
        self.random = RandomPolicy(context)
        self._genomes = np.array([[genome(a)[k] for k in NAMES] for a in self.pool], dtype=float)
        self._genomes = self._genomes.reshape(-1, len(NAMES))  # raw values, in NAMES order

    def sampler(self, seed: int, dataset_id: str, done: list, free: list[int]):
        raise NotImplementedError

    def system_attrs(self, i: int) -> dict:
        """Attributes of the i-th finished trial of a study."""
        return {}

    def profiles(self) -> dict:
        if self._profiles is None:  # only the pool profiles (cached in the zoo), not the dataset features
            from tans.pipeline.acquisition.compute_priors import profile_pool

            c = self.context
            self._profiles = profile_pool(c.store, c.manifest, c.image_size, c.log)
        return self._profiles

    def plan(self, state: ZooState, n: int, pending, free: dict[str, list[int]]) -> list[str]:
        """The dataset of each of the next (at most) n picks: the fewest done + pending + planned
        first, ties in an order seeded by that total; datasets with nothing allowed left skipped."""
        counts = Counter(r.dataset_id for r in state.results) + Counter(d for d, _ in pending)
        left = {d: len(f) for d, f in free.items()}
        out: list[str] = []
        while len(out) < n:
            order = [d for d in sorted(free) if left[d]]
            if not order:
                break
            random.Random(f"{self.seed}:order:{sum(counts[d] for d in free)}").shuffle(order)
            d = min(order, key=lambda d: counts[d])  # the first of the fewest, in the seeded order
            out.append(d)
            counts[d] += 1
            left[d] -= 1
        return out

    def propose(
        self, state: ZooState, n: int, pending: frozenset[Pair] = frozenset(), universe: frozenset[Pair] | None = None
    ) -> list[Pair]:
        taken = taken_pairs(state, pending)
        datasets = sorted(d.dataset_id for d in state.datasets)
        free = {
            d: [i for i, a in enumerate(self.pool) if (d, a) not in taken and (universe is None or (d, a) in universe)]
            for d in datasets
        }
        plan = self.plan(state, n, pending, free)
        forced = {d for d in datasets if plan.count(d) >= len(free[d])}
        done: dict[str, list] = {d: [] for d in datasets}
        running: dict[str, list[str]] = {d: [] for d in datasets}
        if set(plan) - forced:  # (the counts decide between the initial design and the sampler)
            profiles = self.profiles()
            for r in sorted(state.results, key=lambda r: (r.created_at, r.job_id)):
                if r.dataset_id in done and r.arch in profiles:
                    done[r.dataset_id].append(r)
            for d, a in pending:
                if d in running:
                    running[d].append(a)
        out: list[Pair] = []
        for d in plan:
            if d in forced:
                i = free[d][0]
            elif len(done[d]) + len(running[d]) < STARTUP:  # the shared initial design
                i = next(j for j in self._initial(d) if j in free[d])
            else:
                i = self.pick(d, done[d], running[d], free[d])
            out.append(Pair(d, self.pool[i]))
            free[d].remove(i)
            running[d].append(self.pool[i])
        return out

    def _initial(self, dataset_id: str) -> list[int]:
        """Pool indices in the random policy's order for this dataset: the first STARTUP picks
        of every dataset follow it, as the Pareto policy's initial phase does."""
        index = {a: i for i, a in enumerate(self.pool)}
        return [index[a] for a in self.random.permutation(dataset_id)]

    def pick(self, dataset_id: str, done: list, running: list[str], free: list[int]) -> int:
        """Index in the pool of the allowed arch nearest to the genome the sampler asks next."""
        with quiet():
            params = self.study(dataset_id, done, running, free).ask(distributions()).params
        return snap(self._genomes, free, [params[k] for k in NAMES])

    def study(self, dataset_id: str, done: list, running: list[str], free: list[int]):
        """The dataset's study, rebuilt: its results (commit order), then its running pairs."""
        import optuna
        from optuna.trial import TrialState, create_trial

        profiles, dists = self.profiles(), distributions()
        running = running if len(done) >= STARTUP else []
        seed = zlib.crc32(f"{self.seed}:{dataset_id}:{len(done)}:{len(running)}".encode())
        with quiet():
            study = optuna.create_study(directions=DIRECTIONS, sampler=self.sampler(seed, dataset_id, done, free))
            for i, r in enumerate(done):
                p = profiles[r.arch]
                study.add_trial(
                    create_trial(
                        params=genome(r.arch),
                        distributions=dists,
                        values=[r.accuracy, p.latency_ms, p.params],
                        system_attrs=self.system_attrs(i),
                    )
                )
            for a in sorted(running):  # sorted, as pending pairs (a set) would be
                study.add_trial(create_trial(state=TrialState.RUNNING, params=genome(a), distributions=dists))
        return study


def snap(genomes: np.ndarray, free: list[int], x) -> int:
    """The index in `free` (pool indices) of the genome nearest to x, scaled to [0, 1] per
    dimension; ties: the first in pool order."""
    distance = (((genomes[free] - x) / (HIGH - LOW)) ** 2).sum(1)
    return free[int(np.argmin(distance))]


class NSGA2Policy(PeerPolicy):
    """Optuna's NSGA-II, population 4, generations rebuilt from the commit order."""

    def sampler(self, seed, dataset_id, done, free):
        from optuna.samplers import NSGAIISampler

        return NSGAIISampler(population_size=POPULATION, seed=seed)

    def system_attrs(self, i: int) -> dict:
        return {GENERATION_KEY: i // POPULATION}


class TPEPolicy(PeerPolicy):
    """Optuna's multivariate TPE; pending pairs are running trials for its constant liar."""

    def sampler(self, seed, dataset_id, done, free):
        from optuna.samplers import TPESampler

        return TPESampler(n_startup_trials=STARTUP, multivariate=True, constant_liar=True, seed=seed)


class QNEHVIPolicy(PeerPolicy):
    """BoTorch's qNEHVI through optuna-integration's BoTorchSampler; pending pairs are its
    X_pending. The candidates function is optuna-integration's `qnehvi_candidates_func`
    (same GP, same qLogNEHVI acquisition and reference point) except that the acquisition
    is maximized over the dataset's allowed pool genomes (`optimize_acqf_discrete`) instead
    of the continuous box: the pool is finite, and the continuous optimization over 45
    dimensions took ~100 s a pick (2 loaded CPUs). The snap is then the identity. A GP is fitted
    once per (dataset, results) within a proposal, seeded by (seed, dataset, results)."""

    def __init__(self, context: PolicyContext):
        super().__init__(context)
        self._models: dict = {}

    def propose(self, state, n, pending=frozenset(), universe=None):
        import torch

        self._models = {}  # a memo of pure fits (same data and seed), never kept across calls
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny matrices: threads only contend
        try:
            return super().propose(state, n, pending, universe)
        finally:
            torch.set_num_threads(threads)

    def sampler(self, seed, dataset_id, done, free):
        from optuna_integration.botorch import BoTorchSampler

        fit_seed = zlib.crc32(f"{self.seed}:{dataset_id}:{len(done)}:fit".encode())
        return BoTorchSampler(
            candidates_func=self.candidates(self._genomes[free], fit_seed),
            n_startup_trials=STARTUP,
            consider_running_trials=True,
            seed=seed,
        )

    def candidates(self, choices: np.ndarray, fit_seed: int):
        cols = [NAMES.index(k) for k in sorted(NAMES)]  # BoTorchSampler's columns: the params sorted by name

        def qnehvi(train_x, train_obj, train_con, bounds, pending_x):
            import torch
            from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
            from botorch.fit import fit_gpytorch_mll
            from botorch.models import SingleTaskGP
            from botorch.models.transforms.outcome import Standardize
            from botorch.optim import optimize_acqf_discrete
            from botorch.sampling import SobolQMCNormalSampler
            from botorch.utils.sampling import manual_seed
            from botorch.utils.transforms import normalize, unnormalize
            from gpytorch.mlls import ExactMarginalLogLikelihood

            x = normalize(train_x, bounds=bounds)
            key = (fit_seed, x.numpy().tobytes(), train_obj.numpy().tobytes())
            if key not in self._models:
                with manual_seed(fit_seed):
                    model = SingleTaskGP(x, train_obj, outcome_transform=Standardize(m=train_obj.shape[-1]))
                    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
                self._models[key] = model
            if pending_x is not None and len(pending_x):
                pending_x = normalize(pending_x, bounds=bounds)
            else:
                pending_x = None
            acqf = qLogNoisyExpectedHypervolumeImprovement(
                model=self._models[key],
                ref_point=(train_obj.min(dim=0).values - 1e-8).tolist(),
                X_baseline=x,
                prune_baseline=True,
                sampler=SobolQMCNormalSampler(torch.Size([256])),
                X_pending=pending_x,
            )
            pool = normalize(torch.as_tensor(choices[:, cols], dtype=x.dtype), bounds=bounds)
            best, _ = optimize_acqf_discrete(acqf, q=1, choices=pool)
            return unnormalize(best, bounds=bounds)

        return qnehvi
