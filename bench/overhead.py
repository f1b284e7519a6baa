"""Pipeline overhead: N fine-tune jobs through `tans build` (local Ray, zoo writes, MLflow)
against a plain loop calling the same training function on the same (dataset, arch) pairs.

The plain loop runs the jobs one after another with torch using every core; the pipeline
runs them as Ray tasks (one core each, as many in flight as cores). Both train the same
pairs for the same epochs. The pipeline's time includes everything `tans build` does from
start to end (ingestion, starting Ray, profiling the 100-arch pool once per zoo, MLflow);
the retriever stage is switched off, as it trains no network of the zoo.
Goal (issue 14): the pipeline keeps at least 0.95 of the loop's jobs/hour. Both print where
their time went: the pipeline from its result rows (data, setup, training, evaluation,
profiling, checkpoint; summed over jobs that overlap across workers), the loop by timing it.

    python bench/overhead.py [--jobs N] [--epochs E]

The last line is the figures as one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--dataset", default="shapes-clean")
    args = ap.parse_args()

    import torch
    from pipeline.datasets import synth
    from pipeline.build.run import run_build
    from pipeline.build.config import load_config
    from zoo_schema.results import read_results
    from workers.training import train
    from workers.nets import load_base_supernet, model_for
    from workers.images import load_tensors
    from zoo_schema.manifest import read_manifest
    from zoo_schema.store import open_store

    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="tans-bench-overhead-"))
    spec = next(s for s in synth.suite() if s.name == args.dataset)
    synth.write_dataset(spec, work / "datasets", seed=0)
    config = load_config(None, {
        "zoo": str(work / "zoo"), "datasets": [str(work / "datasets")], "max_jobs": args.jobs,
        "train.epochs": args.epochs, "resources.max_in_flight": cores,
        "resources.num_cpus": 1.0, "retrain.after_build": False,
        "mlflow.tracking_uri": f"sqlite:///{work / 'mlflow.db'}"})

    started = time.perf_counter()
    summary = run_build(config, log=lambda line: print(line, file=sys.stderr), ray_num_cpus=cores)
    pipeline_s = time.perf_counter() - started
    import ray
    ray.shutdown()

    store = open_store(config.zoo)
    results = read_results(store)
    manifest = read_manifest(store)
    torch.set_num_threads(cores)
    x, y = load_tensors(store, results[0].dataset_id, "train", config.train.image_size)
    xt, yt = load_tensors(store, results[0].dataset_id, "test", config.train.image_size)
    started = time.perf_counter()
    loop_phases = {"setup": 0.0, "training": 0.0, "evaluation": 0.0}
    for r in results:
        clock = time.perf_counter()
        supernet = load_base_supernet(store, manifest.width, manifest.base_weights)
        model = model_for(r.arch, r.num_classes, manifest.width, supernet)
        loop_phases["setup"] += time.perf_counter() - clock
        clock, timings = time.perf_counter(), {}
        train(model, x, y, xt, yt, config.train, torch.device("cpu"), seed=0, timings=timings)
        loop_phases["evaluation"] += timings["eval"]
        loop_phases["training"] += time.perf_counter() - clock - timings["eval"]
    loop_s = time.perf_counter() - started
    pipeline_phases = {  # summed over the jobs (they overlap in time across workers)
        "data": sum(r.data_seconds for r in results), "setup": sum(r.setup_seconds for r in results),
        "training": sum(r.train_seconds - r.eval_seconds for r in results),
        "evaluation": sum(r.eval_seconds for r in results), "profiling": sum(r.profile_seconds for r in results),
        "checkpoint": sum(r.checkpoint_seconds for r in results)}

    n = len(results)
    figures = {
        "jobs": n, "epochs": args.epochs, "dataset": args.dataset, "cores": cores,
        "pipeline_seconds": round(pipeline_s, 2),
        "pipeline_driver_seconds": round(summary.seconds, 2),
        "loop_seconds": round(loop_s, 2),
        "pipeline_jobs_per_hour": round(3600 * n / pipeline_s, 1),
        "loop_jobs_per_hour": round(3600 * n / loop_s, 1),
        "throughput_ratio": round(loop_s / pipeline_s, 3),
        "throughput_ratio_after_startup": round(loop_s / summary.seconds, 3),
        "pipeline_job_phase_seconds": {k: round(v, 2) for k, v in pipeline_phases.items()},
        "pipeline_non_training_share": round(1 - pipeline_phases["training"] / sum(pipeline_phases.values()), 3),
        "loop_phase_seconds": {k: round(v, 2) for k, v in loop_phases.items()},
        "goal": ">= 0.95",
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
