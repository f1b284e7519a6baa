"""Ingestion throughput: `tans datasets add` on generated 500x375 JPEGs against a plain
single-threaded PIL decode loop over the same files, in the same run.

The plain loop only decodes (`Image.open(...).convert("RGB")`). Ingestion lists the folder,
checks every file by decoding it (these RGB JPEGs of at most `ingest.keep_jpeg_side` are
stored as they are, so they are decoded at 1/8 scale, which still reads all their data),
hashes it, splits the dataset and writes the Parquet shards, on all cores. Each ingestion
runs in a fresh process; its peak memory is the resident set of that process and its
decoding processes, sampled every 20 ms, at two dataset sizes to show how it grows.
Goal (issue 14): ingestion >= 1.8x the plain loop's images/s on 2 cores.

Then the same ingestion on a local multi-node Ray (`ray.cluster_utils.Cluster`: a head with no
CPU for tasks and two worker nodes of one CPU each, all on 127.0.0.1), as `tans datasets add
--address` runs it, from the local folder into a zoo on local disk (this process reads the
files and sends them, the worker nodes decode, this process writes the shards) and from a copy
on S3 into a zoo on S3 (a moto server on 127.0.0.1: the nodes read, decode and write the
shards); the figures say how many files each node decoded and how many images it wrote, and
whether the dataset's ids and shards equal a local ingestion's.

    python bench/ingest.py [--images 20000] [--classes 10] [--cluster-images 2000]

The last line is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def generate(folder: Path, images: int, classes: int) -> None:
    """Photo-like JPEGs (smooth colour fields, edges and noise), 500x375, quality 90: per class
    a few noisy base images, each file a shifted and tinted copy (so no two files are equal)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    bases = []
    for c in range(classes):
        (folder / f"class-{c:02d}").mkdir(parents=True, exist_ok=True)
        base = np.stack(
            [np.sin(xx / (20 + 7 * c)) * 80 + 120, np.cos(yy / (15 + 5 * c)) * 70 + 110, (xx + yy) / 875 * 200], axis=-1
        )
        bases.append([np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8) for _ in range(4)])
    for i in range(images):
        c = i % classes
        image = np.roll(bases[c][i % 4], (int(rng.integers(375)), int(rng.integers(500))), axis=(0, 1))
        image = np.clip(image.astype(np.int16) + rng.integers(-20, 20, 3), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"class-{c:02d}" / f"{i:06d}.jpg", quality=90)


CHILD = """
import json, sys, time
from tans.pipeline.datasets.ingest import IngestSettings, ingest
from tans.zoo_schema.store import open_store
if __name__ == "__main__":
    started = time.perf_counter()
    report = ingest(open_store(sys.argv[1]), sys.argv[2], name="bench", settings=IngestSettings())
    print(json.dumps({"seconds": time.perf_counter() - started, "images": report.images}))
"""


def plain_loop(files: list[Path]) -> float:
    started = time.perf_counter()
    for f in files:
        with Image.open(io.BytesIO(f.read_bytes())) as im:
            im.convert("RGB")
    return time.perf_counter() - started


def ingest_seconds(folder: Path, zoo: Path) -> tuple[float, int, int]:
    """Ingestion in a fresh process (its memory is its own): seconds inside `ingest`, images,
    peak memory of the process and its decoding processes."""
    from bench.scale import measure

    script = Path(zoo.parent) / "child.py"
    script.write_text(CHILD)
    _, peak_mb, out = measure(
        [sys.executable, str(script), str(zoo), str(folder)], env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    figures = json.loads(out.strip().splitlines()[-1])
    return figures["seconds"], figures["images"], peak_mb * 1e6


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _timed(run) -> tuple[object, float, float]:
    """(what `run()` returns, wall seconds, CPU seconds of this process and of the child
    processes it ended meanwhile: a local ingestion's decoding processes, not Ray's)."""
    started, cpu = time.perf_counter(), _cpu()
    out = run()
    return out, time.perf_counter() - started, _cpu() - cpu


def on_cluster(folder: Path, work: Path) -> dict:
    """Ingest `folder` on a local Ray of two one-CPU worker nodes, from the local folder (this
    process reads the files and sends them) and from a copy on S3 (a moto server on 127.0.0.1:
    the tasks read it), and locally; compare. The CPU seconds are the calling process's (with a
    local ingestion's decoding processes): what is left to the caller."""
    import boto3
    import ray
    from ray.cluster_utils import Cluster

    from bench.scale import MotoS3
    from tans.pipeline.datasets.ingest import ingest
    from tans.zoo_schema.shards import read_datasets
    from tans.zoo_schema.store import S3Settings, open_store

    moto = MotoS3(work)
    os.environ.update({k: moto.env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    s3 = S3Settings(endpoint_url=moto.endpoint)
    client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="bench")
    for f in sorted(folder.rglob("*.jpg")):
        client.upload_file(str(f), "bench", f"source/{f.relative_to(folder).as_posix()}")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the workers inherit the credentials
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        zoo = open_store(str(work / "zoo-ray"))
        report, seconds, cpu = _timed(lambda: ingest(zoo, str(folder), name="bench", on_ray=True))
        s3_zoo = open_store("s3://bench/zoo", s3)
        from_s3, s3_seconds, s3_cpu = _timed(lambda: ingest(s3_zoo, "s3://bench/source", "bench", s3=s3, on_ray=True))
        (c,) = read_datasets(s3_zoo)
    finally:
        ray.shutdown()
        cluster.shutdown()
        moto.close()
    local, local_seconds, local_cpu = _timed(lambda: ingest(open_store(str(work / "zoo-here")), str(folder), "bench"))
    ids = {w.node_id: f"worker-{i + 1}" for i, w in enumerate(workers)}

    def per_node(counts: dict) -> dict:
        return {ids.get(n, n[:8]): k for n, k in sorted(counts.items())}

    (a,), (b,) = read_datasets(zoo), read_datasets(open_store(str(work / "zoo-here")))
    same = {(r.dataset_ids[0], x.content_sha256, x.data_sha256) for r, x in ((report, a), (from_s3, c), (local, b))}
    return {
        "images": report.images,
        "nodes": "head (0 CPUs) + 2 worker nodes x 1 CPU",
        "files_decoded_per_node": per_node(report.decoded_on),
        "images_written_per_node": per_node(report.written_on),
        "seconds": round(seconds, 1),
        "caller_cpu_seconds": round(cpu, 1),
        "from_s3": {
            "files_decoded_per_node": per_node(from_s3.decoded_on),
            "images_written_per_node": per_node(from_s3.written_on),
            "seconds": round(s3_seconds, 1),
            "caller_cpu_seconds": round(s3_cpu, 1),
        },
        "local_seconds": round(local_seconds, 1),
        "local_caller_cpu_seconds": round(local_cpu, 1),
        "same_ids_and_shards": len(same) == 1,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--cluster-images", type=int, default=2000, help="0: no run on the multi-node Ray")
    args = ap.parse_args()
    cluster = {}
    work = Path(tempfile.mkdtemp(prefix="tans-bench-ingest-"))
    try:
        small_n = max(args.classes * 10, args.images // 4)
        generate(work / "large", args.images, args.classes)
        generate(work / "small", small_n, args.classes)
        files = sorted((work / "large").rglob("*.jpg"))
        loop_s = plain_loop(files)
        small_s, small_images, small_peak = ingest_seconds(work / "small", work / "zoo-small")
        large_s, large_images, large_peak = ingest_seconds(work / "large", work / "zoo-large")
        mb = sum(f.stat().st_size for f in files) / 1e6
        if args.cluster_images:
            generate(work / "cluster", args.cluster_images, args.classes)
            cluster = on_cluster(work / "cluster", work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures = {
        "images": len(files),
        "source_mb": round(mb, 1),
        "cores": os.cpu_count(),
        "plain_loop_images_per_s": round(len(files) / loop_s, 1),
        "ingest_images_per_s": round(large_images / large_s, 1),
        "ratio": round((large_images / large_s) / (len(files) / loop_s), 3),
        "ingest_seconds": round(large_s, 1),
        "peak_memory_mb": {str(small_n): round(small_peak / 1e6), str(args.images): round(large_peak / 1e6)},
        "goal": ">= 1.8 on 2 cores",
        "multi_node_ray": cluster,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
