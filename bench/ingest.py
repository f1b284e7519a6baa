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
--address` runs it: the files decoded by Ray tasks on the worker nodes (the figures say how
many each decoded), read and written here; and whether the dataset's ids and shards equal a
local ingestion's.

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


def on_cluster(folder: Path, work: Path) -> dict:
    """Ingest `folder` on a local Ray of two one-CPU worker nodes, and locally; compare."""
    import ray
    from ray.cluster_utils import Cluster

    from tans.pipeline.datasets.ingest import ingest
    from tans.zoo_schema.shards import read_datasets
    from tans.zoo_schema.store import open_store

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        started = time.perf_counter()
        report = ingest(open_store(str(work / "zoo-ray")), str(folder), name="bench", on_ray=True)
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
        cluster.shutdown()
    started = time.perf_counter()
    local = ingest(open_store(str(work / "zoo-here")), str(folder), name="bench")
    local_seconds = time.perf_counter() - started
    ids = {w.node_id: f"worker-{i + 1}" for i, w in enumerate(workers)}
    (a,), (b,) = read_datasets(open_store(str(work / "zoo-ray"))), read_datasets(open_store(str(work / "zoo-here")))
    return {
        "images": report.images,
        "nodes": "head (0 CPUs) + 2 worker nodes x 1 CPU",
        "files_decoded_per_node": {ids.get(n, n[:8]): k for n, k in sorted(report.decoded_on.items())},
        "seconds": round(seconds, 1),
        "local_seconds": round(local_seconds, 1),
        "same_ids_and_shards": (report.dataset_ids, a.content_sha256, a.data_sha256)
        == (local.dataset_ids, b.content_sha256, b.data_sha256),
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
