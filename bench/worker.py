"""Where a job's time goes on a cold worker (a fresh Ray task per job: it reads the base
supernet and decodes its dataset every time) and on a warm worker (a long-lived actor that
keeps them), for the same jobs, in the same run.

Per job: the phases its result row records (data, setup, training, evaluation, profiling,
checkpoint) and the wall time from submit to outcome (which also holds Ray's scheduling and,
for a cold task, the worker process's start). "Non-training" is everything but the training
steps. Two settings: 32 px x 1 epoch (the demo's until 11-29; it now trains 2) and 64 px x 3 epochs; with more than one
epoch also a warm worker evaluating the last epoch only (`train.evaluate_every_epoch = false`).
Goal (issue 14): a warm job's non-training share <= 10 %.

    python bench/worker.py [--jobs 6] [--dataset glyphs-greek-upper-clean]

The last line is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

PHASES = ("data", "setup", "training", "evaluation", "profiling", "checkpoint")


def phases(r) -> dict[str, float]:
    return {
        "data": r.data_seconds,
        "setup": r.setup_seconds,
        "training": r.train_seconds - r.eval_seconds,
        "evaluation": r.eval_seconds,
        "profiling": r.profile_seconds,
        "checkpoint": r.checkpoint_seconds,
    }


def run(zoo: str, dataset_id: str, archs: list[str], train, warm: bool) -> dict:
    from tans.pipeline.execution.executor import ResourceSettings
    from tans.pipeline.execution.ray_executor import ray_executor
    from tans.workers.job import job_spec
    from tans.zoo_schema.manifest import read_manifest
    from tans.zoo_schema.shards import read_dataset
    from tans.zoo_schema.store import S3Settings, open_store

    store = open_store(zoo)
    manifest, dataset = read_manifest(store), read_dataset(store, dataset_id)
    executor = ray_executor(store.uri, S3Settings(), ResourceSettings(max_in_flight=1, warm_workers=warm))
    rows, walls = [], []
    for arch in archs:
        started = time.perf_counter()
        executor.submit(job_spec(dataset, arch, train, manifest))
        outcomes = []
        while not outcomes:
            outcomes = executor.wait(60)
        if outcomes[0].error is not None:
            raise outcomes[0].error
        walls.append(time.perf_counter() - started)
        rows.append(outcomes[0].result)
    measured = rows[1:] if warm else rows  # a warm worker's first job is its warm-up
    walls = walls[1:] if warm else walls
    per_job = {p: sum(phases(r)[p] for r in measured) / len(measured) for p in PHASES}
    busy = sum(per_job.values())
    wall = sum(walls) / len(walls)
    return {
        "per_job_phase_seconds": {k: round(v, 3) for k, v in per_job.items()},
        "non_training_seconds": round(busy - per_job["training"], 3),
        "non_training_share_of_job": round(1 - per_job["training"] / busy, 3),
        "wall_seconds_per_job": round(wall, 3),
        "non_training_share_of_wall": round(1 - per_job["training"] / wall, 3),
        "first_job_wall_seconds": round(walls[0], 3) if not warm else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--dataset", default="glyphs-greek-upper-clean")
    args = ap.parse_args()
    import ray

    from tans.pipeline.datasets import synth
    from tans.pipeline.execution.config import load_config
    from tans.pipeline.execution.run import run_build
    from tans.workers.job import TrainSettings
    from tans.workers.networks.ofa_space import arch_pool

    work = Path(tempfile.mkdtemp(prefix="tans-bench-worker-"))
    spec = next(s for s in synth.suite() if s.name == args.dataset)
    synth.write_dataset(spec, work / "datasets", seed=0)
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    figures = {"jobs_per_setting": args.jobs, "dataset": args.dataset}
    settings = {
        "demo_32px_1epoch": TrainSettings(epochs=1, image_size=32),
        "64px_3epochs": TrainSettings(epochs=3, image_size=64),
    }
    archs = [a.id for a in arch_pool(0, args.jobs + 1)]
    for name, base_train in settings.items():
        out = {}
        modes = [("cold", False, base_train), ("warm", True, base_train)]
        if base_train.epochs > 1:
            modes.append(("warm_evaluate_last_epoch", True, replace(base_train, evaluate_every_epoch=False)))
        for mode, warm, train in modes:
            zoo = str(work / f"zoo-{name}-{mode}")
            run_build(
                load_config(
                    None,
                    {
                        "zoo": zoo,
                        "datasets": [str(work / "datasets")],
                        "max_jobs": 0,
                        "train.image_size": train.image_size,
                        "arch.pool_size": 8,
                        "retrain.after_build": False,
                    },
                ),
                log=lambda *_: None,
                tracking=False,
            )
            jobs = ([archs[args.jobs]] if warm else []) + archs[: args.jobs]  # warm: one job to warm it up
            out[mode] = run(zoo, spec.name, jobs, train, warm)
        out["warm_over_cold_non_training"] = round(
            out["warm"]["non_training_seconds"] / out["cold"]["non_training_seconds"], 3
        )
        if "warm_evaluate_last_epoch" in out:
            out["warm_evaluate_last_epoch_over_cold_non_training"] = round(
                out["warm_evaluate_last_epoch"]["non_training_seconds"] / out["cold"]["non_training_seconds"], 3
            )
        figures[name] = out
    figures["goal"] = "warm non_training_share_of_job <= 0.10"
    ray.shutdown()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
