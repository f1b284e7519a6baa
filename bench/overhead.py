"""Pipeline overhead: N fine-tune jobs through `tans build` (local Ray, zoo writes, MLflow)
against a plain loop calling the same training function on the same (dataset, arch) pairs.

Both get the same in-flight parallelism: the pipeline runs the jobs on its default warm
workers (Ray actors, one core each, as many as cores); the plain loop runs them in as many
worker processes (one torch thread each, each job taken by the next free process), timed from
when its processes have loaded the data. Both train the same pairs for the same epochs. The
pipeline's time includes everything `tans build` does from start to end (ingestion, starting
Ray, profiling the 100-arch pool once per zoo on the workers, MLflow); the retriever stage is
switched off, as it trains no network of the zoo.
Goal (issue 14): the pipeline keeps at least 0.95 of the loop's jobs/hour. Both print where
their time went: the pipeline from its result rows (data, setup, training, evaluation,
profiling, checkpoint; summed over jobs that overlap across workers), the loop by timing it.

    python bench/overhead.py [--jobs N] [--epochs E]

The last line is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

_LOOP: dict = {}  # one loop process's data, set by _loop_init


def _loop_init(zoo: str, dataset_id: str, image_size: int, ready) -> None:
    """A loop process: one torch thread, its imports done and the dataset decoded before the
    clock starts. A failure here breaks the barrier, so the benchmark stops instead of hanging."""
    try:
        import importlib

        import torch

        from tans.workers.networks.ofa_space import ofa_module

        ofa_module("imagenet_classification.elastic_nn.networks")  # what the jobs import, before the clock starts
        for module in ("tans.workers.networks.nets", "tans.workers.networks.training"):
            importlib.import_module(module)
        from tans.workers.networks.images import load_tensors
        from tans.zoo_schema.manifest import read_manifest
        from tans.zoo_schema.store import open_store

        torch.set_num_threads(1)
        store = open_store(zoo)
        _LOOP.update(
            store=store,
            manifest=read_manifest(store),
            train=load_tensors(store, dataset_id, "train", image_size),
            test=load_tensors(store, dataset_id, "test", image_size),
        )
    except BaseException:
        ready.abort()
        raise
    ready.wait(timeout=600)


def _loop_job(job: tuple) -> dict:
    """One job of the plain loop: the base supernet, the subnet, the training function."""
    import torch

    from tans.workers.networks.nets import load_base_supernet, model_for
    from tans.workers.networks.training import train

    arch, num_classes, settings = job
    store, manifest = _LOOP["store"], _LOOP["manifest"]
    clock = time.perf_counter()
    model = model_for(
        arch, num_classes, manifest.width, load_base_supernet(store, manifest.width, manifest.base_weights)
    )
    setup = time.perf_counter() - clock
    clock, timings = time.perf_counter(), {}
    train(model, *_LOOP["train"], *_LOOP["test"], settings, torch.device("cpu"), seed=0, timings=timings)
    return {"setup": setup, "evaluation": timings["eval"], "training": time.perf_counter() - clock - timings["eval"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--dataset", default="shapes-clean")
    args = ap.parse_args()

    from tans.pipeline.datasets import synth
    from tans.pipeline.execution.config import load_config
    from tans.pipeline.execution.run import run_build
    from tans.zoo_schema.results import read_results
    from tans.zoo_schema.store import open_store

    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="tans-bench-overhead-"))
    spec = next(s for s in synth.suite() if s.name == args.dataset)
    synth.write_dataset(spec, work / "datasets", seed=0)
    config = load_config(
        None,
        {
            "zoo": str(work / "zoo"),
            "datasets": [str(work / "datasets")],
            "max_jobs": args.jobs,
            "train.epochs": args.epochs,
            "resources.max_in_flight": cores,
            "resources.num_cpus": 1.0,
            "retrain.after_build": False,
            "mlflow.tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        },
    )

    started, cpu = time.perf_counter(), time.process_time()
    summary = run_build(
        config,
        log=lambda line: print(f"[{time.perf_counter() - started:5.1f}s] {line}", file=sys.stderr),
        ray_num_cpus=cores,
    )
    pipeline_s = time.perf_counter() - started
    driver_cpu_s = time.process_time() - cpu  # the driver's own CPU time, on the workers' cores here
    import ray

    ray.shutdown()

    store = open_store(config.zoo)
    results = read_results(store)
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(cores + 1)
    with context.Pool(cores, _loop_init, (config.zoo, results[0].dataset_id, config.train.image_size, ready)) as pool:
        ready.wait(timeout=600)  # every loop process holds the data (BrokenBarrierError if one failed)
        started = time.perf_counter()
        jobs = pool.imap_unordered(_loop_job, [(r.arch, r.num_classes, config.train) for r in results])
        done = [jobs.next(timeout=600) for _ in results]  # a process killed mid-job: TimeoutError, not a hang
        loop_s = time.perf_counter() - started
    loop_phases = {k: sum(d[k] for d in done) for k in ("setup", "training", "evaluation")}  # summed over jobs
    pipeline_phases = {  # summed over the jobs (they overlap in time across workers)
        "data": sum(r.data_seconds for r in results),
        "setup": sum(r.setup_seconds for r in results),
        "training": sum(r.train_seconds - r.eval_seconds for r in results),
        "evaluation": sum(r.eval_seconds for r in results),
        "profiling": sum(r.profile_seconds for r in results),
        "checkpoint": sum(r.checkpoint_seconds for r in results),
    }

    n = len(results)
    figures = {
        "jobs": n,
        "epochs": args.epochs,
        "dataset": args.dataset,
        "cores": cores,
        "pipeline_seconds": round(pipeline_s, 2),
        "pipeline_driver_seconds": round(summary.seconds, 2),
        "pipeline_driver_cpu_seconds": round(driver_cpu_s, 2),
        "loop_seconds": round(loop_s, 2),
        "pipeline_jobs_per_hour": round(3600 * n / pipeline_s, 1),
        "loop_jobs_per_hour": round(3600 * n / loop_s, 1),
        "throughput_ratio": round(loop_s / pipeline_s, 3),
        "throughput_ratio_after_startup": round(loop_s / summary.seconds, 3),
        "pipeline_job_phase_seconds": {k: round(v, 2) for k, v in pipeline_phases.items()},
        "pipeline_non_training_share": round(1 - pipeline_phases["training"] / sum(pipeline_phases.values()), 3),
        "loop_phase_seconds": {k: round(v, 2) for k, v in loop_phases.items()},
        "loop_processes": cores,
        "goal": ">= 0.95",
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
