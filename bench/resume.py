"""Resume overhead: from `tans build` start to the first new dispatch on a zoo holding
10,000 results, against reading those results once with plain pyarrow.

The zoo (local disk, and an S3 endpoint: moto server on 127.0.0.1) holds 120 datasets,
the 100-arch pool profiles and 10,000 result rows with full-size functional embeddings;
no checkpoints or images are needed to resume. The build connects to an already running
local Ray (cluster start-up is not resume overhead; its time is printed separately) and
stops at its first dispatch. Imports and MLflow's schema set-up are paid once per process
on a small warm-up zoo (printed as first_startup_in_process_seconds). The zoo holds the results
snapshot a build writes every 64
commits, 63 commits behind (the worst case). Goal: start-up at most 2x the plain read, and under 10 s.

With `--sealed-results N`, also a compacted zoo of N results on local disk (all but the last
1 % in sealed segments of 100,000, 100 results per dataset and one dataset more with none, so
that there is work left; kept in and reused from `--work`): the start-up and the peak memory
of a fresh process that resumes it (its own local Ray started first, not timed), and the
seconds from its first job's result (handed back at once) to the next dispatch: the resumed
driver's first commit and step.

    python bench/resume.py [--results 10000] [--strategy random] [--sealed-results 1000000 --work DIR]

The last line is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


EMBEDDING = [0.5] * 1280  # every row's functional embedding: full size, one list


class FirstDispatch(Exception):
    pass


SEAL_CHUNK = 100_000  # rows per sealed segment of `fill_zoo(..., sealed=n)`: one `tans compact` run each


def result_row(job_id: str, dataset_id: str, arch: str, topology, accuracy: float, store, now: str):
    """One result row as `fill_zoo` writes them."""
    from tans.zoo_schema.records import ResultRecord

    return ResultRecord(
        job_id=job_id,
        dataset_id=dataset_id,
        arch=arch,
        topology=topology,
        accuracy=accuracy,
        params=4_000_000,
        flops=8_000_000,
        latency_ms=10.0,
        latency_device="cpu",
        functional_embedding=EMBEDDING,
        checkpoint_uri=store.uri_of(f"checkpoints/{job_id}/x.safetensors"),
        checkpoint_sha256="0" * 64,
        num_classes=10,
        epochs=2,
        image_size=32,
        train_seconds=10.0,
        epoch_losses=[1.0, 0.5],
        epoch_accuracies=[0.4, 0.5],
        base_weights="random-seed0",
        created_at=now,
    )


def fill_zoo(store, n_results: int, n_datasets: int = 120, sealed: int = 0, seal_chunk: int = SEAL_CHUNK) -> None:
    """A zoo as a long build leaves it: manifest, datasets, pool profiles, result rows. With
    `sealed`, its first `sealed` rows (whole datasets: a multiple of 100) are in sealed
    segments of `seal_chunk` rows, with the status summaries `tans compact` writes, as a zoo
    compacted every `seal_chunk` results holds them (writing them as files first and
    compacting would take ~100 min for a million); the rest are files committed since."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import pyarrow as pa

    from tans.workers.networks.ofa_space import arch_pool
    from tans.zoo_schema.manifest import BaseWeights, Manifest, ensure_manifest
    from tans.zoo_schema.records import DatasetRecord, to_table

    rng = np.random.default_rng(0)
    ensure_manifest(
        store,
        Manifest(
            width=1.0,
            kernels=[3, 5, 7],
            expands=[3, 4, 6],
            depths=[2, 3, 4],
            noise_seed=0,
            noise_shape=[8, 3, 32, 32],
            base_weights=BaseWeights("random", "random-seed0", seed=0),
        ),
    )
    pool = arch_pool(0, 100)
    store.write_table(
        "pool/profiles.parquet",
        pa.Table.from_pylist(
            [
                {
                    "arch": a.id,
                    "params": int(rng.integers(2e6, 6e6)),
                    "flops": int(rng.integers(5e6, 1e7)),
                    "latency_ms": float(rng.uniform(5, 20)),
                    "functional_embedding": rng.normal(size=1280).tolist(),
                }
                for a in pool
            ]
        ),
    )
    now = datetime.now(UTC).isoformat()
    datasets = [f"ds{i:03d}" for i in range(n_datasets)]
    for d in datasets:
        store.write_table(
            f"datasets/{d}.parquet",
            to_table([DatasetRecord(d, d, 10, [str(c) for c in range(10)], 800, 200, "bench", "0" * 64, 0, 0, now)]),
        )
    pairs = [(d, a.id, a.topology()) for d in datasets for a in pool][:n_results]

    def record(i):
        d, arch, topo = pairs[i]
        return result_row(f"{i:024x}", d, arch, topo, float(rng.uniform(0.05, 0.95)), store, now)

    def write(i):
        r = record(i)
        store.write_table(f"results/dataset={r.dataset_id}/{r.job_id}.parquet", to_table([r]), create_only=True)
        return r

    from tans.pipeline.acquisition.hypervolume import summarize_rows
    from tans.pipeline.acquisition.priors import cached_profiles

    sealed = min(sealed, len(pairs)) // 100 * 100
    for start in range(0, sealed, seal_chunk):
        from tans.zoo_schema.results import SUMMARY
        from tans.zoo_schema.sealed import write_sealed

        chunk = [record(i) for i in range(start, min(start + seal_chunk, sealed))]
        table = to_table(chunk)
        columns = summarize_rows(chunk, cached_profiles(store))(chunk)  # whole datasets: their summaries
        for name, kind in SUMMARY.items():
            table = table.append_column(pa.field(name, kind), pa.array(list(columns[name]), kind))
        write_sealed(store, table)
    with ThreadPoolExecutor(16) as pool_exec:
        records = list(pool_exec.map(write, range(sealed, len(pairs))))
    # the driver snapshots its results every SNAPSHOT_MIN_NEW commits: the zoo of a build that
    # died holds a snapshot a little behind its last commits
    from tans.zoo_schema.results import SNAPSHOT_MIN_NEW, write_snapshot
    from tans.zoo_schema.shards import cache_datasets, read_datasets

    snapshot = records[: len(records) - SNAPSHOT_MIN_NEW + 1]
    write_snapshot(store, snapshot, summarize_rows(snapshot, cached_profiles(store)))
    cache_datasets(store, read_datasets(store))


def plain_read_seconds(store) -> float:
    import pyarrow.dataset as pads

    fs, base = store.arrow_filesystem()
    started = time.perf_counter()
    table = pads.dataset(f"{base}/results", filesystem=fs, format="parquet").to_table()
    seconds = time.perf_counter() - started
    assert table.num_rows > 0
    return seconds


def startup_seconds(zoo: str, s3, strategy: str, tmp: Path, max_jobs: int = 20000, first_commit: bool = False):
    """From run_build's start to the driver's first dispatch (the submit is intercepted). With
    `first_commit`, (that, the seconds from the first job's result, handed back at once as if
    it had trained, to the next dispatch: the driver's first commit and step of the resumed
    build)."""
    import hashlib
    from dataclasses import replace

    from tans.pipeline.acquisition.priors import topology_of
    from tans.pipeline.execution import run as build
    from tans.pipeline.execution.config import load_config
    from tans.pipeline.execution.executor import Outcome
    from tans.pipeline.execution.ray_executor import ActorExecutor
    from tans.zoo_schema.store import open_store

    target = open_store(zoo, s3)
    marks: list[float] = []

    class Probe(ActorExecutor):
        specs: list = []

        @property
        def in_flight(self) -> int:
            return len(self.specs)

        def submit(self, spec):
            if not first_commit or len(marks) == 2:
                marks.append(time.perf_counter())
                raise FirstDispatch(spec.job_id)
            if not marks:
                marks.append(time.perf_counter())
            self.specs.append(spec)

        def wait(self, timeout=None):
            spec = self.specs.pop(0)
            now = datetime.now(UTC).isoformat()
            result = result_row(spec.job_id, spec.dataset_id, spec.arch, topology_of(spec.arch), 0.5, target, now)
            data = b"a worker's checkpoint"  # MLflow's child run logs it, its sha256 checked
            target.write_bytes(f"checkpoints/{spec.job_id}/x.safetensors", data)
            result = replace(result, checkpoint_sha256=hashlib.sha256(data).hexdigest())
            marks.append(time.perf_counter())
            return [Outcome(spec, result=result)]

    overrides = {
        "zoo": zoo,
        "strategy": strategy,
        "max_jobs": max_jobs,
        "arch.pool_size": 100,
        "arch.base_weights": "random",  # fill_zoo's manifest (the default is the shipped supernet)
        "retrain.after_build": False,
        "mlflow.tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
    }
    if s3:
        overrides["s3.endpoint_url"] = s3.endpoint_url
    config = load_config(None, overrides)
    original = build.ray_executor
    build.ray_executor = lambda zoo_uri, s3, resources: Probe(zoo_uri, s3, resources)
    started = time.perf_counter()
    try:
        build.run_build(config, log=lambda line: None)
    except FirstDispatch:
        if first_commit:
            return marks[0] - started, marks[2] - marks[1]
        return time.perf_counter() - started
    finally:
        build.ray_executor = original
    raise RuntimeError("the build finished without dispatching")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=int, default=10_000)
    ap.add_argument("--strategy", default="random")
    ap.add_argument("--sealed-results", type=int, default=0, help="also resume a compacted zoo of this many results")
    ap.add_argument("--work", default="", help="where the compacted zoo is kept and reused")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)  # ZOO,N: resume it in this process, print JSON
    args = ap.parse_args()
    if args.child:
        import resource

        from tans.pipeline.execution.runtime import start_ray

        zoo, n = args.child.rsplit(",", 1)
        start_ray("", num_cpus=2)  # not timed: cluster start-up is not resume overhead
        tmp = Path(tempfile.mkdtemp(prefix="tans-bench-resume-"))
        seconds, commit = startup_seconds(zoo, None, args.strategy, tmp, max_jobs=int(n) + 1000, first_commit=True)
        print(
            json.dumps(
                {
                    "seconds": round(seconds, 2),
                    "first_commit_to_next_dispatch_seconds": round(commit, 2),
                    "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                }
            )
        )
        return
    import ray

    from tans.pipeline.execution.runtime import start_ray
    from tans.zoo_schema.store import S3Settings, open_store

    tmp = Path(tempfile.mkdtemp(prefix="tans-bench-resume-"))
    started = time.perf_counter()
    start_ray("", num_cpus=2)
    ray_start = time.perf_counter() - started
    figures = {"results": args.results, "strategy": args.strategy, "ray_start_seconds": round(ray_start, 2)}

    warm = open_store(str(tmp / "warm-up"))  # imports and the MLflow schema, paid once per process
    fill_zoo(warm, 10, n_datasets=2)
    started = time.perf_counter()
    startup_seconds(warm.uri, None, args.strategy, tmp)
    figures["first_startup_in_process_seconds"] = round(time.perf_counter() - started, 2)

    local = open_store(str(tmp / "zoo"))
    fill_zoo(local, args.results)
    figures["local_plain_read_seconds"] = round(plain_read_seconds(local), 3)
    figures["local_startup_seconds"] = round(startup_seconds(local.uri, None, args.strategy, tmp), 3)

    port = 5000 + random.randrange(1000, 4000)
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3)
        import boto3

        endpoint = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        s3 = S3Settings(endpoint_url=endpoint)
        remote = open_store("s3://bench/zoo", s3)
        fill_zoo(remote, args.results)
        figures["s3_plain_read_seconds"] = round(plain_read_seconds(remote), 3)
        figures["s3_startup_seconds"] = round(startup_seconds(remote.uri, s3, args.strategy, tmp), 3)
    finally:
        server.terminate()
        server.wait()
    ray.shutdown()
    if args.sealed_results:
        n = args.sealed_results
        zoo = Path(args.work or tmp) / f"zoo-resume-sealed-{n}"
        if not (zoo / "results_index" / "index.json").exists():  # written last
            fill_zoo(open_store(str(zoo)), n, n_datasets=n // 100 + 1, sealed=n - n // 100)
        child = subprocess.run(
            [sys.executable, __file__, "--strategy", args.strategy, "--child", f"{zoo},{n}"],
            capture_output=True,
            text=True,
        )
        if child.returncode:
            raise SystemExit(f"the resumed process failed:\n{child.stderr[-4000:]}")
        figures["sealed_results"] = n
        figures["sealed"] = json.loads(child.stdout.strip().splitlines()[-1])
    for where in ("local", "s3"):
        figures[f"{where}_ratio"] = round(
            figures[f"{where}_startup_seconds"] / figures[f"{where}_plain_read_seconds"], 2
        )
    figures["goal"] = "ratio <= 2 and startup < 10 s"
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
