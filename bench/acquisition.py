"""Efficient zoo construction vs random sampling, by replay over a really evaluated pool.

1. The pool: 20 built-in datasets x 30 pool architectures, every pair really fine-tuned on
   the local Ray (`bench/acquisition_pool.toml`; cached in bench/.cache, resumed if cut).
2. Replay: for each strategy and seed, `tans build --executor replay:POOL` (the same
   driver, policy and store code as a Ray build) up to 60% of the pool, 4 jobs in flight.
   Strategies: random, tans' Pareto policy, and the peers a platform team already runs,
   each behind the same policy interface (pipeline/acquisition/peers.py): Optuna's NSGA-II
   and multi-objective TPE, and BoTorch's qNEHVI (fewer seeds: it proposes slowest).
   At budgets of 10%..60% it records the mean over datasets of the normalized hypervolume
   (a dataset's hypervolume over its whole pool's hypervolume, so 1.0 = the full pool).
3. `jobs_to_match_random_final`: the fraction of random's 60% budget that each strategy
   needs to reach random's mean normalized hypervolume at 60% (goal for Pareto <= 0.6,
   moonshot 0.4); `pareto_jobs_to_match_peer_final`: the same for Pareto against each
   peer's final hypervolume (below 1: Pareto gets there with fewer jobs); the time each
   policy spends proposing, per job.
4. One proposal step at the paper's scale (140 datasets x 100 archs, 750 results, 8
   pending), timed on synthetic features (goal < 1 s).

    python bench/acquisition.py [--seeds 5] [--in-flight 4] [--strategies ...] [--qnehvi-seeds 3]

Writes bench/.cache/acquisition.png; the last line is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import numpy as np  # noqa: E402

POOL_CONFIG = "bench/acquisition_pool.toml"
BUDGETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_pool():
    """The evaluated pool (built once; a rerun resumes or does nothing)."""
    from tans.pipeline.datasets import synth
    from tans.pipeline.execution.config import load_config
    from tans.pipeline.execution.run import run_build
    from tans.zoo_schema.results import read_state
    from tans.zoo_schema.store import open_store

    config = load_config(POOL_CONFIG)
    data = Path(config.datasets[0])
    if not data.exists():
        synth.generate(data, count=20, seed=0)
    store = open_store(config.zoo)
    if len(read_state(store).results) < config.max_jobs:
        run_build(config, log=log)
        import ray

        ray.shutdown()
    stops = [store.read_json(k) for k in store.list("journal/builds")]
    seconds = sum(s.get("seconds", 0) for s in stops if s.get("event") == "stop")
    return config, store, seconds


def replay_curves(config, source, strategy: str, seed: int, in_flight: int, max_jobs: int):
    """One replayed construction: its zoo state, pool profiles, seconds, and the seconds its
    policy spent proposing (the driver's policy is wrapped to time `propose`)."""
    import tans.pipeline.execution.driver as driver_module
    from tans.pipeline.acquisition.compute_priors import profile_pool
    from tans.pipeline.execution.config import load_config
    from tans.pipeline.execution.run import run_build
    from tans.zoo_schema.manifest import read_manifest
    from tans.zoo_schema.results import read_state
    from tans.zoo_schema.store import open_store

    target = Path(tempfile.mkdtemp(prefix=f"tans-replay-{strategy}-{seed}-"))
    cfg = load_config(
        POOL_CONFIG,
        {
            "zoo": str(target / "zoo"),
            "datasets": [],
            "strategy": strategy,
            "seed": seed,
            "max_jobs": max_jobs,
            "executor": f"replay:{source.uri}",
            "resources.max_in_flight": in_flight,
            "retrain.after_build": False,
        },
    )
    proposing = [0.0]
    create = driver_module.create_policy

    def timed_policy(name, context):
        policy = create(name, context)
        propose = policy.propose

        def timed(*args, **kw):
            t0 = time.perf_counter()
            try:
                return propose(*args, **kw)
            finally:
                proposing[0] += time.perf_counter() - t0

        policy.propose = timed
        return policy

    driver_module.create_policy = timed_policy
    started = time.perf_counter()
    try:
        run_build(cfg, log=lambda line: None, tracking=False)
    finally:
        driver_module.create_policy = create
    seconds = time.perf_counter() - started
    store = open_store(cfg.zoo)
    state = read_state(store)
    profiles = profile_pool(store, read_manifest(store), cfg.train.image_size)
    return state, profiles, seconds, proposing[0]


def normalized_history(state, profiles, full_hv: dict[str, float]) -> np.ndarray:
    """Mean over datasets of hv(D)/hv_full(D) after each result (commit order)."""
    from tans.pipeline.acquisition.hypervolume import normalized_hypervolume, normalizer_for, point_of
    from tans.pipeline.acquisition.priors import Prior

    norm, prior = normalizer_for(profiles), Prior({}, profiles)
    points: dict[str, list] = {d: [] for d in full_hv}
    current = {d: 0.0 for d in full_hv}
    out = []
    for r in sorted(state.results, key=lambda r: (r.created_at, r.job_id)):
        points[r.dataset_id].append(point_of(r, norm, prior))
        current[r.dataset_id] = normalized_hypervolume(np.array(points[r.dataset_id])) / full_hv[r.dataset_id]
        out.append(float(np.mean(list(current.values()))))
    return np.array(out)


def time_paper_scale_step() -> dict:
    from tans.pipeline.acquisition.base import ParetoSettings, PolicyContext
    from tans.pipeline.acquisition.pareto import ParetoPolicy
    from tans.pipeline.acquisition.priors import ArchProfile, Prior
    from tans.workers.networks.ofa_space import arch_pool
    from tans.zoo_schema.records import DatasetRecord, ResultRecord
    from tans.zoo_schema.results import ZooState

    rng = np.random.default_rng(0)
    pool = [a.id for a in arch_pool(0, 100)]
    datasets = [f"d{i:03d}" for i in range(140)]
    prior = Prior(
        {d: rng.normal(size=2560).astype(np.float32) for d in datasets},
        {
            a: ArchProfile(a, int(rng.integers(2e6, 6e6)), 1, float(rng.uniform(5, 20)), rng.normal(size=1280).tolist())
            for a in pool
        },
    )
    pairs = []
    for r in range(100):  # round robin: every dataset gets its initial pairs first
        for i, d in enumerate(datasets):
            pairs.append((d, pool[(r * 37 + i * 11) % 100]))

    def record(d, a, n):
        return ResultRecord(
            f"j{n:05d}",
            d,
            a,
            [0] * 45,
            float(rng.uniform(0.1, 0.95)),
            1,
            1,
            1.0,
            "cpu",
            [0.0],
            "x",
            "0",
            2,
            1,
            32,
            1.0,
            [1.0],
            [0.5],
            "b",
            f"t{n:05d}",
        )

    results = [record(d, a, n) for n, (d, a) in enumerate(pairs[:750])]
    state = ZooState([DatasetRecord(d, d, 2, ["a", "b"], 8, 2, "x", "s", 0, 0, "t") for d in datasets], results, [])
    pending = set(pairs[750:758])
    policy = ParetoPolicy(
        PolicyContext(0, tuple(pool), prior=prior, pareto=ParetoSettings(n_init_per_dataset=5), log=lambda line: None)
    )
    started = time.perf_counter()
    policy.propose(state, 1, pending=pending)
    with_training = time.perf_counter() - started
    steps = []
    for k in range(5):  # each step sees one more result, as the driver's steps do
        d, a = pairs[758 + k]
        state = ZooState(state.datasets, state.results + [record(d, a, 750 + k)], [])
        started = time.perf_counter()
        policy.propose(state, 1, pending=pending)
        steps.append(time.perf_counter() - started)
    return {
        "paper_scale_step_seconds": round(float(np.median(steps)), 3),
        "paper_scale_step_with_retrain_seconds": round(with_training, 3),
        "paper_scale_candidates_scored": len(policy.last_scores),
    }


def plot(curves: dict, path: Path, pool_size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy, runs in curves.items():
        arr = np.stack(runs)
        x = np.arange(1, arr.shape[1] + 1) / pool_size * 100
        mean, std = arr.mean(0), arr.std(0)
        ax.plot(x, mean, label=strategy)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("jobs (% of the evaluated pool)")
    ax.set_ylabel("mean normalized hypervolume")
    ax.set_title("zoo construction by replay: tans' Pareto policy and its peers")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--in-flight", type=int, default=4)
    ap.add_argument("--strategies", nargs="+", default=["random", "pareto", "nsga2", "tpe", "qnehvi"])
    ap.add_argument("--qnehvi-seeds", type=int, default=3, help="BoTorch is the slowest to propose (~1.7 s a pick)")
    args = ap.parse_args()

    from tans.pipeline.acquisition.compute_priors import load_prior
    from tans.pipeline.acquisition.hypervolume import normalized_hypervolume, normalizer_for, point_of
    from tans.pipeline.acquisition.priors import Prior
    from tans.zoo_schema.manifest import read_manifest
    from tans.zoo_schema.results import read_state

    config, source, pool_seconds = build_pool()
    state = read_state(source)
    dataset_ids = sorted(d.dataset_id for d in state.datasets)
    prior = load_prior(source, read_manifest(source), dataset_ids, config.train.image_size, log)
    norm = normalizer_for(prior.profiles)
    full_hv = {
        d: normalized_hypervolume(
            np.array([point_of(r, norm, Prior({}, prior.profiles)) for r in state.results if r.dataset_id == d])
        )
        for d in dataset_ids
    }
    pool_size = len(state.results)
    max_jobs = int(round(BUDGETS[-1] * pool_size))

    curves: dict[str, list] = {k: [] for k in args.strategies}
    replay_seconds: dict[str, list] = {k: [] for k in args.strategies}
    propose_seconds: dict[str, list] = {k: [] for k in args.strategies}
    seeds = {k: (args.qnehvi_seeds if k == "qnehvi" else args.seeds) for k in args.strategies}
    for strategy in curves:
        for seed in range(seeds[strategy]):
            st, profiles, seconds, proposing = replay_curves(config, source, strategy, seed, args.in_flight, max_jobs)
            curves[strategy].append(normalized_history(st, profiles, full_hv)[:max_jobs])
            replay_seconds[strategy].append(seconds)
            propose_seconds[strategy].append(proposing / max(len(st.results), 1))
            log(
                f"{strategy} seed {seed}: {curves[strategy][-1][-1]:.4f} at {max_jobs} jobs ({seconds:.1f}s, "
                f"{propose_seconds[strategy][-1] * 1000:.1f} ms proposing per job)"
            )

    table, final = {}, {}
    for strategy, runs in curves.items():
        arr = np.stack(runs)
        table[strategy] = {
            f"{int(b * 100)}%": round(float(arr[:, int(round(b * pool_size)) - 1].mean()), 4) for b in BUDGETS
        }
        final[strategy] = float(arr[:, max_jobs - 1].mean())

    def jobs_to_reach(strategy: str, level: float) -> float | None:
        """The fraction of the 60% budget after which the strategy's mean curve reaches level."""
        reached = np.flatnonzero(np.stack(curves[strategy]).mean(0) >= level - 1e-12)
        return round((int(reached[0]) + 1) / max_jobs, 3) if len(reached) else None

    out_png = ROOT / "bench" / ".cache" / "acquisition.png"
    plot(curves, out_png, pool_size)
    peers = [k for k in curves if k not in ("random", "pareto")]
    figures = {
        "pool_pairs": pool_size,
        "pool_datasets": len(dataset_ids),
        "pool_build_seconds": round(pool_seconds),
        "seeds": seeds,
        "in_flight": args.in_flight,
        "budget_jobs": max_jobs,
        "mean_normalized_hypervolume": table,
        "jobs_to_match_random_final": {k: jobs_to_reach(k, final["random"]) for k in curves if k != "random"},
        "goal_jobs_to_match": "<= 0.6 (moonshot <= 0.4)",
        "pareto_jobs_to_match_peer_final": {k: jobs_to_reach("pareto", final[k]) for k in peers}
        if "pareto" in curves
        else {},
        "proposal_ms_per_job": {k: round(float(np.mean(v)) * 1000, 2) for k, v in propose_seconds.items()},
        "replay_seconds_per_run": {k: round(float(np.mean(v)), 1) for k, v in replay_seconds.items()},
        **time_paper_scale_step(),
        "goal_step_seconds": "< 1",
        "plot": str(out_png.relative_to(ROOT)),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
