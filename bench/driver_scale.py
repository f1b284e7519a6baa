"""The build driver at the paper's scale: a replay build of 140 datasets x 100 architectures.

The source zoo holds 14,000 synthetic results drawn from a seeded model of the really
evaluated pool of bench/acquisition.py (20 datasets x 30 architectures, fine-tuned on the
local Ray; built first if it is not cached):

    accuracy(d, a) = mu_d + beta_d * s_a + gamma_a + eps,   clipped to [0.01, 0.99]

fitted per real dataset by least squares on s_a (the arch's standardized log parameter
count); a synthetic dataset takes the (mu, beta) of a random real dataset plus N(0, 0.02)
jitter; gamma_a ~ N(0, sd of the real archs' mean residuals); eps ~ N(0, sd of the
remaining residuals). Parameters and latency of the 100 pool archs are really measured
(random-init subnets; cached in bench/.cache). Dataset features (2,560-d) and functional
embeddings (1,280-d) are seeded Gaussians of the real sizes: only the predictor's cost
matters here, not what it learns.

The build is the real `Driver` (Pareto policy, default settings) with the replay executor,
at 8 and at 64 jobs in flight, each in its own process. The policy is given the synthetic
prior (`PolicyContext.prior`), as the acquisition tests and benchmarks do; everything else
(store, results, snapshot, journal, hypervolume bookkeeping) is the production code path,
without MLflow. Reported per job: driver seconds split into proposal (the policy),
commit (store writes: the result row, which a worker writes in a real build, the snapshot
and journal) and bookkeeping (the rest of the driver's step); store operations; and peak
memory. Wall and CPU seconds of the driver process are both reported: on a shared machine
the CPU seconds are the driver's own cost. Goal: driver seconds per job below 1 % of a typical
GPU fine-tune (60 s assumed:
one OFA subnet, a few epochs of a small dataset on one GPU), i.e. < 0.6 s, and never above
the time 64 workers take to finish one job each (60 s / 64 = 0.94 s); the worst step < 1 s.
The predictor is fitted in a background process (pipeline/acquisition/fitting.py), the first
fit a third of the way through the initial phase. Its process imports torch as the policy is made, 2 s
before it can fit; a real build's first results come a fine-tune later, replayed ones at once,
so the timed loop starts once it is ready. The figures give the step where the first fit takes
over (it waits for it only if the fit is not done by then), the worst step after it, the first
fit's size, and the fits' own seconds (spent off the loop).

With `--resume-at N` each build stops at N results, and a resumed build (a fresh driver and
fitting process on the same zoo) is timed to the end of its first step twice: with the
predictor fits the build kept in the zoo, and with them deleted (it waits for a fit on all N).

    python bench/driver_scale.py [--datasets 140] [--archs 100] [--in-flight 8 64] [--parallel]
                                 [--resume-at N]

Writes bench/.cache/driver_scale.png; the last line is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

import numpy as np  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
ASSUMED_GPU_JOB_SECONDS = 60.0


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def pool_profiles(n_archs: int) -> dict:
    """Measured params and latency of the first n pool archs (random-init subnets, 32 px)."""
    path = CACHE / f"driver_scale_profiles_{n_archs}.json"
    if path.exists():
        return json.loads(path.read_text())
    import torch

    from tans.workers.networks.measure import measure_latency_ms
    from tans.workers.networks.ofa_space import arch_pool, build_subnet, build_supernet

    torch.set_num_threads(1)
    supernet = build_supernet(1.0)
    out = {}
    for arch in arch_pool(0, n_archs):
        model = build_subnet(supernet, arch, num_classes=10).eval()
        out[arch.id] = {
            "params": sum(p.numel() for p in model.parameters()),
            "latency_ms": measure_latency_ms(model, 32, torch.device("cpu"), repeats=10),
        }
    path.write_text(json.dumps(out))
    return out


def accuracy_model(seed: int) -> dict:
    """The per-dataset (mu, beta), and the residual spreads, fitted on the real pool."""
    sys.path.insert(0, str(ROOT / "bench"))
    from acquisition import POOL_CONFIG, build_pool

    from tans.pipeline.execution.config import load_config
    from tans.zoo_schema.results import read_state
    from tans.zoo_schema.store import open_store

    pool = Path(load_config(POOL_CONFIG).zoo)
    # the cached pool as it is (even while bench/acquisition.py is still building it); built if absent
    source = open_store(str(pool)) if (pool / "manifest.json").exists() else build_pool()[1]
    results = read_state(source).results
    logp = {r.arch: np.log(r.params) for r in results}
    mean, sd = np.mean(list(logp.values())), np.std(list(logp.values()))
    fits, resid = [], {}
    for d in sorted({r.dataset_id for r in results}):
        rows = [r for r in results if r.dataset_id == d]
        s = np.array([(logp[r.arch] - mean) / sd for r in rows])
        y = np.array([r.accuracy for r in rows])
        beta, mu = np.polyfit(s, y, 1)
        fits.append((float(mu), float(beta)))
        for r, e in zip(rows, y - (mu + beta * s)):
            resid.setdefault(r.arch, []).append(e)
    arch_means = np.array([np.mean(v) for v in resid.values()])
    all_resid = np.concatenate([np.array(v) - np.mean(v) for v in resid.values()])
    return {
        "fits": fits,
        "arch_sd": float(arch_means.std()),
        "noise_sd": float(all_resid.std()),
        "real_pairs": len(results),
        "real_datasets": len(fits),
    }


def make_source(root: Path, n_datasets: int, profiles: dict, model: dict, seed: int):
    """The 14,000-result source zoo (manifest, dataset records, result rows and their snapshot)."""
    from tans.workers.networks.ofa_space import Arch
    from tans.zoo_schema import layout
    from tans.zoo_schema.manifest import BaseWeights, Manifest
    from tans.zoo_schema.records import DatasetRecord, ResultRecord, to_table
    from tans.zoo_schema.results import result_key, write_snapshot
    from tans.zoo_schema.store import open_store

    rng = np.random.default_rng(seed)
    store = open_store(str(root))
    manifest = Manifest(
        1.0,
        [3, 5, 7],
        [3, 4, 6],
        [2, 3, 4],
        0,
        [8, 3, 32, 32],
        BaseWeights("random", "random:0", seed=0),
        pool_seed=0,
        pool_size=len(profiles),
    )
    store.write_json(layout.MANIFEST, manifest.to_json())
    archs = list(profiles)
    logp = np.log([profiles[a]["params"] for a in archs])
    s = (logp - logp.mean()) / logp.std()
    gamma = rng.normal(0, model["arch_sd"], len(archs))
    results = []
    for i in range(n_datasets):
        d = f"synthetic-{i:03d}"
        store.write_table(
            layout.dataset_key(d),
            to_table(
                [DatasetRecord(d, d, 10, [str(c) for c in range(10)], 800, 200, "synthetic", "0" * 64, 0, 0, "t")]
            ),
        )
        mu, beta = model["fits"][int(rng.integers(len(model["fits"])))]
        mu, beta = mu + rng.normal(0, 0.02), beta + rng.normal(0, 0.02)
        acc = np.clip(mu + beta * s + gamma + rng.normal(0, model["noise_sd"], len(archs)), 0.01, 0.99)
        for j, a in enumerate(archs):
            results.append(
                ResultRecord(
                    f"src-{i:03d}-{j:03d}",
                    d,
                    a,
                    Arch.parse(a).topology(),
                    float(acc[j]),
                    int(profiles[a]["params"]),
                    0,
                    float(profiles[a]["latency_ms"]),
                    "cpu",
                    [0.0],  # a functional embedding (the snapshot holds records in full); the policy's are in its prior
                    "x",
                    "0",
                    10,
                    1,
                    32,
                    60.0,
                    [1.0],
                    [float(acc[j])],
                    "random",
                    "2026-01-01T00:00:00+00:00",
                )
            )
    for r in results:  # each row is its own file, as a worker commits it; the snapshot caches them
        store.write_table(result_key(r), to_table([r]), create_only=True)
    write_snapshot(store, results)
    return store


def run_child(source_root: str, in_flight: int, seed: int, resume_at: int = 0) -> dict:
    """One replay build of every pair of the source (or of `resume_at` of them, then resumed),
    timed per step."""
    import psutil
    import pyarrow as pa
    import torch

    from tans.pipeline.acquisition.base import PolicyContext
    from tans.pipeline.acquisition.pareto import ParetoPolicy
    from tans.pipeline.acquisition.priors import PROFILES_KEY, ArchProfile, Prior
    from tans.pipeline.execution.config import load_config
    from tans.pipeline.execution.driver import Driver
    from tans.pipeline.execution.replay import ReplayExecutor
    from tans.pipeline.execution.run import seed_replay_zoo
    from tans.zoo_schema.store import LocalStore, open_store

    torch.set_num_threads(1)

    clock: Counter = Counter()
    ops: Counter = Counter()

    class CountingStore(LocalStore):
        """A local store that counts and times its primitive operations."""

        def _timed(self, name, fn, *args, **kw):
            ops[name] += 1
            started = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                clock["store_" + ("write" if name in ("write_bytes", "delete") else "read")] += (
                    time.perf_counter() - started
                )

        def read_bytes(self, key):
            return self._timed("read_bytes", super().read_bytes, key)

        def write_bytes(self, key, data, create_only=False):
            return self._timed("write_bytes", super().write_bytes, key, data, create_only)

        def exists(self, key):
            return self._timed("exists", super().exists, key)

        def list(self, prefix):
            return self._timed("list", super().list, prefix)

        def delete(self, key):
            return self._timed("delete", super().delete, key)

    source = open_store(source_root)
    target_root = Path(tempfile.mkdtemp(prefix=f"tans-driver-scale-{in_flight}-"))
    target = CountingStore(target_root / "zoo")
    manifest = seed_replay_zoo(target, source)
    from tans.zoo_schema.results import read_results

    rows = read_results(source)
    datasets = sorted({r.dataset_id for r in rows})
    archs = sorted({r.arch for r in rows})
    rng = np.random.default_rng(seed)
    profiles = {
        a: ArchProfile(a, r.params, 0, r.latency_ms, rng.normal(size=1280).astype(np.float32).tolist())
        for r in rows
        for a in [r.arch]
    }
    target.write_table(PROFILES_KEY, pa.Table.from_pylist([p.__dict__ for p in profiles.values()]))
    prior = Prior({d: rng.normal(size=2560).astype(np.float32) for d in datasets}, profiles)
    config = load_config(
        None,
        {
            "zoo": str(target_root / "zoo"),
            "datasets": [],
            "strategy": "pareto",
            "seed": seed,
            "max_jobs": resume_at or len(rows),
            "executor": f"replay:{source_root}",
            "resources.max_in_flight": in_flight,
            "retrain.after_build": False,
        },
    )
    executor = ReplayExecutor(source, target)
    proc = psutil.Process()
    rss_start = proc.memory_info().rss
    driver = Driver(config, target, manifest, executor, tracker=None, log=lambda line: None)
    driver.policy = ParetoPolicy(
        PolicyContext(seed, tuple(archs), store=target, prior=prior, pareto=config.pareto, log=lambda line: None)
    )
    propose = driver.policy.propose

    def timed_propose(*args, **kw):
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return propose(*args, **kw)
        finally:
            clock["proposal"] += time.perf_counter() - started
            clock["proposal_cpu"] += time.process_time() - cpu

    driver.policy.propose = timed_propose
    # the policy has started its fitting process; a real build's first results come a fine-tune
    # later, by when it has imported torch (2.2 s here). Replayed jobs take no time: wait for it.
    from tans.pipeline.acquisition.fitting import Fitter

    Fitter.shared().wait_ready()

    policy = driver.policy
    timeline, worst_step, rss_peak = [], 0.0, rss_start
    first_fit_step, worst_after_first_fit = None, 0.0
    mark = {"step": 0.0, "proposal": 0.0, "store_write": 0.0, "store_read": 0.0, "jobs": 0}
    started = time.perf_counter()
    while True:
        t0, cpu = time.perf_counter(), time.process_time()
        before_first_fit = not policy.fit_history
        more = driver.step()
        dt = time.perf_counter() - t0
        if before_first_fit and policy.fit_history:  # the step where the first fit takes over
            first_fit_step = dt
        elif policy.fit_history:
            worst_after_first_fit = max(worst_after_first_fit, dt)
        clock["step"] += dt
        clock["step_cpu"] += time.process_time() - cpu
        worst_step = max(worst_step, dt)
        done = driver.summary.finished
        if done - mark["jobs"] >= 500 or not more:
            rss_peak = max(rss_peak, proc.memory_info().rss)
            n = max(done - mark["jobs"], 1)
            timeline.append(
                {
                    "jobs": done,
                    **{k: (clock[k] - mark[k]) / n for k in ("step", "proposal", "store_write", "store_read")},
                }
            )
            mark = {"jobs": done, **{k: clock[k] for k in ("step", "proposal", "store_write", "store_read")}}
            log(
                f"in flight {in_flight}: {done} jobs, {timeline[-1]['step'] * 1000:.1f} ms/job lately, "
                f"rss {proc.memory_info().rss / 2**20:.0f} MB"
            )
        if not more:
            break
    summary = driver.finish()
    total = time.perf_counter() - started
    jobs = summary.finished
    commit = clock["store_write"]
    figures = {
        "in_flight": in_flight,
        "jobs": jobs,
        "datasets": len(datasets),
        "archs": len(archs),
        "stop_reason": summary.stop_reason,
        "wall_seconds": round(total, 1),
        "driver_seconds_per_job": round(clock["step"] / jobs, 4),
        "driver_cpu_seconds_per_job": round(clock["step_cpu"] / jobs, 4),
        "proposal_cpu_seconds_per_job": round(clock["proposal_cpu"] / jobs, 4),
        "proposal_seconds_per_job": round(clock["proposal"] / jobs, 4),
        "commit_seconds_per_job": round(commit / jobs, 4),
        "bookkeeping_seconds_per_job": round((clock["step"] - clock["proposal"] - commit) / jobs, 4),
        "worst_step_seconds": round(worst_step, 3),
        "first_fit_step_seconds": round(first_fit_step or 0.0, 3),
        "worst_step_after_first_fit_seconds": round(worst_after_first_fit, 3),
        "first_fit_size": policy.fit_history[0].size if policy.fit_history else None,
        "predictor_fits": len(policy.fit_history),
        "fit_seconds_max": round(max((f.seconds for f in policy.fit_history), default=0.0), 1),
        "fit_seconds_total": round(sum(f.seconds for f in policy.fit_history), 1),
        "last_1000_seconds_per_job": round(float(np.mean([t["step"] for t in timeline[-2:]])), 4),
        "store_ops_per_job": {k: round(v / jobs, 2) for k, v in sorted(ops.items())},
        "rss_start_mb": round(rss_start / 2**20),
        "rss_peak_mb": round(rss_peak / 2**20),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "final_mean_hypervolume": round(driver.hypervolume.mean(), 4),
        "timeline": timeline,
    }
    if resume_at:
        from dataclasses import replace

        from tans.zoo_schema.layout import PREDICTOR_FITS

        figures["resumed"] = {}
        for kept in (True, False):  # as the build keeps its fits; then as if it kept none
            if not kept:
                for key in target.list(PREDICTOR_FITS):
                    target.delete(key)
            fitter = Fitter.shared()  # the resumed build is a new process: no fitting process, no fit in memory
            fitter.close()
            fitter.done.clear()
            more = replace(config, max_jobs=len(driver.results) + in_flight)
            replay = ReplayExecutor(source, target)
            resumed = Driver(more, target, manifest, replay, tracker=None, log=lambda line: None)
            lines: list[str] = []
            resumed.policy = ParetoPolicy(
                PolicyContext(seed, tuple(archs), store=target, prior=prior, pareto=config.pareto, log=lines.append)
            )
            Fitter.shared().wait_ready()  # as above: the real first results come a fine-tune later
            t0 = time.perf_counter()
            resumed.step()
            figures["resumed"]["fits_kept" if kept else "no_fits_kept"] = {
                "results": len(resumed.results),
                "first_step_seconds": round(time.perf_counter() - t0, 3),
                "proposed_with": [line for line in lines if "accuracy predictor" in line][:1],
            }
            resumed.finish()
    shutil.rmtree(target_root, ignore_errors=True)
    return figures


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], runs):
        t = run["timeline"]
        x = [p["jobs"] for p in t]
        prop = np.array([p["proposal"] for p in t]) * 1000
        write = np.array([p["store_write"] for p in t]) * 1000
        rest = np.array([p["step"] for p in t]) * 1000 - prop - write
        ax.stackplot(x, prop, write, rest, labels=["proposal", "commit (store writes)", "bookkeeping"], alpha=0.8)
        ax.axhline(
            ASSUMED_GPU_JOB_SECONDS * 10,
            color="red",
            ls="--",
            lw=1,
            label=f"1 % of a {ASSUMED_GPU_JOB_SECONDS:.0f} s GPU job",
        )
        ax.set_title(f"{run['jobs']} jobs, {run['in_flight']} in flight")
        ax.set_xlabel("results in the zoo")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("driver ms per job (mean over 500 jobs)")
    axes[0][0].set_yscale("log")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", type=int, default=140)
    ap.add_argument("--archs", type=int, default=100)
    ap.add_argument("--in-flight", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parallel", action="store_true", help="run the in-flight settings at once, a core each")
    ap.add_argument(
        "--resume-at",
        type=int,
        default=0,
        help="stop each build at this many results, then time a resumed build's first step with the fits "
        "the build kept in the zoo and without them",
    )
    ap.add_argument("--child", nargs=2, metavar=("SOURCE", "IN_FLIGHT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child[0], int(args.child[1]), args.seed, args.resume_at)))
        return

    CACHE.mkdir(parents=True, exist_ok=True)
    profiles = pool_profiles(args.archs)
    model = accuracy_model(args.seed)
    source_root = Path(tempfile.mkdtemp(prefix="tans-driver-scale-source-")) / "zoo"
    started = time.perf_counter()
    make_source(source_root, args.datasets, profiles, model, args.seed)
    log(f"source zoo of {args.datasets * args.archs} results written in {time.perf_counter() - started:.1f}s")
    children = []
    for n in args.in_flight:  # one process per run; --parallel runs them at once (one core each)
        cmd = [sys.executable, __file__, "--child", str(source_root), str(n), "--seed", str(args.seed)]
        cmd += ["--resume-at", str(args.resume_at)]
        children.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
        if not args.parallel:
            children[-1].wait()
    runs = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode:
            raise SystemExit(f"a driver run failed (exit {child.returncode}); see its traceback above")
        runs.append(json.loads(out.strip().splitlines()[-1]))
    shutil.rmtree(source_root.parent, ignore_errors=True)
    out_png = CACHE / "driver_scale.png"
    plot(runs, out_png)
    worst = max(r["driver_seconds_per_job"] for r in runs)
    worst_cpu = max(r["driver_cpu_seconds_per_job"] for r in runs)
    figures = {
        "pairs": args.datasets * args.archs,
        "accuracy_model": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in model.items() if k != "fits"},
        "runs": [{k: v for k, v in r.items() if k != "timeline"} for r in runs],
        "assumed_gpu_job_seconds": ASSUMED_GPU_JOB_SECONDS,
        "driver_share_of_gpu_job": round(worst / ASSUMED_GPU_JOB_SECONDS, 5),
        "driver_cpu_share_of_gpu_job": round(worst_cpu / ASSUMED_GPU_JOB_SECONDS, 5),
        "goal_driver_share": "< 0.01",
        "plot": str(out_png.relative_to(ROOT)),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
