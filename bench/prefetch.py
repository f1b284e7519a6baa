"""A warm worker decoding its next job's data while the current job trains.

One warm worker (a Ray actor with one CPU and one torch thread) runs N jobs, each on a
dataset it has not held before (the first dataset's job warms it up and is not counted):
first with one job in flight (the next is submitted when the last ends: nothing to
prefetch), then with two in flight (each next job queues behind the running one, and the
worker decodes its splits in its `prefetch` concurrency group meanwhile). The machine's second
core stands in for what a GPU worker has: a CPU that is idle while the accelerator trains.
Reported per mode: the jobs' mean data seconds (the decode each job waited for) and the wall
seconds from the first counted submit to the last outcome; and their ratios, in one run.

    python bench/prefetch.py [--image-size 64] [--epochs 1]

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

DATASETS = (
    "glyphs-latin-upper-wild",
    "glyphs-latin-lower-wild",
    "glyphs-greek-upper-wild",
    "glyphs-greek-lower-wild",
    "glyphs-cyrillic-upper-wild",
    "glyphs-cyrillic-lower-wild",
)


def run_mode(zoo: str, specs: list, in_flight: int) -> dict:
    from tans.pipeline.execution.executor import ResourceSettings
    from tans.pipeline.execution.ray_executor import ray_executor
    from tans.zoo_schema.store import S3Settings

    executor = ray_executor(zoo, S3Settings(), ResourceSettings(max_in_flight=in_flight, num_cpus=1))
    executor.submit(specs[0])  # warm-up: imports, the base supernet, the first dataset
    results = [_next(executor)]
    started, queue = time.perf_counter(), list(specs[1:])
    while queue or executor.in_flight:
        while queue and executor.in_flight < in_flight:
            executor.submit(queue.pop(0))
        results.append(_next(executor))
    wall = time.perf_counter() - started
    executor.close()
    counted = results[1:]
    return {
        "jobs": len(counted),
        "wall_seconds": round(wall, 2),
        "mean_data_seconds": round(sum(r.data_seconds for r in counted) / len(counted), 3),
        "mean_train_seconds": round(sum(r.train_seconds for r in counted) / len(counted), 2),
    }


def _next(executor):
    outcomes = []
    while not outcomes:
        outcomes = executor.wait(60)
    (outcome,) = outcomes
    if outcome.error is not None:
        raise outcome.error
    return outcome.result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    import ray

    from tans.pipeline.datasets import synth
    from tans.pipeline.execution.config import load_config
    from tans.pipeline.execution.run import run_build
    from tans.workers.job import TrainSettings, job_spec
    from tans.workers.networks.ofa_space import arch_pool
    from tans.zoo_schema.manifest import read_manifest
    from tans.zoo_schema.shards import read_dataset
    from tans.zoo_schema.store import open_store

    work = Path(tempfile.mkdtemp(prefix="tans-bench-prefetch-"))
    for spec in synth.suite():
        if spec.name in DATASETS:
            synth.write_dataset(spec, work / "datasets", seed=0)
    ray.init(address="local", num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
    train = TrainSettings(epochs=args.epochs, image_size=args.image_size)
    arch = arch_pool(0, 1)[0].id
    figures = {"image_size": args.image_size, "epochs": args.epochs, "datasets": list(DATASETS)}
    for mode, in_flight in (("one_in_flight", 1), ("two_in_flight_prefetch", 2)):
        zoo = str(work / f"zoo-{mode}")  # a zoo each: no job is committed already
        run_build(
            load_config(
                None,
                {
                    "zoo": zoo,
                    "datasets": [str(work / "datasets")],
                    "max_jobs": 0,
                    "train.image_size": args.image_size,
                    "arch.pool_size": 4,
                    "retrain.after_build": False,
                },
            ),
            log=lambda *_: None,
            tracking=False,
        )
        store = open_store(zoo)
        manifest = read_manifest(store)
        specs = [job_spec(read_dataset(store, synth_id), arch, train, manifest) for synth_id in DATASETS]
        figures[mode] = run_mode(store.uri, specs, in_flight)
    one, two = figures["one_in_flight"], figures["two_in_flight_prefetch"]
    figures["data_seconds_ratio"] = round(two["mean_data_seconds"] / one["mean_data_seconds"], 3)
    figures["wall_ratio"] = round(two["wall_seconds"] / one["wall_seconds"], 3)
    ray.shutdown()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
