"""Ingestion throughput: `tans datasets add` on generated 500x375 JPEGs against a plain
single-threaded PIL decode loop over the same files, in the same run.

The plain loop only decodes (`Image.open(...).convert("RGB")`); ingestion decodes (JPEGs at
the reduced size they are stored at), converts, downscales to `ingest.max_side`, re-encodes
as PNG, splits and writes the Parquet shards, on all cores. Peak memory is the resident set
of the process and its decoding processes, sampled every 50 ms; it is measured at two
dataset sizes to show how it grows.
Goal (issue 14): ingestion >= 1.8x the plain loop's images/s on 2 cores.

    python bench/ingest.py [--images 20000] [--classes 10]

The last line is the figures as one JSON object.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
from PIL import Image  # noqa: E402


def generate(folder: Path, images: int, classes: int) -> None:
    """Photo-like JPEGs (smooth colour fields, edges and noise), 500x375, quality 90: per class
    a few noisy base images, each file a shifted and tinted copy (so no two files are equal)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    bases = []
    for c in range(classes):
        (folder / f"class-{c:02d}").mkdir(parents=True, exist_ok=True)
        base = np.stack([np.sin(xx / (20 + 7 * c)) * 80 + 120, np.cos(yy / (15 + 5 * c)) * 70 + 110,
                         (xx + yy) / 875 * 200], axis=-1)
        bases.append([np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8) for _ in range(4)])
    for i in range(images):
        c = i % classes
        image = np.roll(bases[c][i % 4], (int(rng.integers(375)), int(rng.integers(500))), axis=(0, 1))
        image = np.clip(image.astype(np.int16) + rng.integers(-20, 20, 3), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"class-{c:02d}" / f"{i:06d}.jpg", quality=90)


class PeakMemory:
    """The peak resident set of this process and its children, sampled in a thread."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                rss = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                continue
            self.peak = max(self.peak, rss)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def plain_loop(files: list[Path]) -> float:
    started = time.perf_counter()
    for f in files:
        with Image.open(io.BytesIO(f.read_bytes())) as im:
            im.convert("RGB")
    return time.perf_counter() - started


def ingest_seconds(folder: Path, zoo: Path) -> tuple[float, int, int]:
    from pipeline.datasets.ingest import IngestSettings, ingest
    from zoo_schema.store import open_store
    with PeakMemory() as memory:
        started = time.perf_counter()
        report = ingest(open_store(str(zoo)), str(folder), name=folder.name, settings=IngestSettings())
        seconds = time.perf_counter() - started
    return seconds, report.images, memory.peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--classes", type=int, default=10)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tans-bench-ingest-"))
    small_n = max(args.classes * 10, args.images // 4)
    generate(work / "large", args.images, args.classes)
    generate(work / "small", small_n, args.classes)
    files = sorted((work / "large").rglob("*.jpg"))
    loop_s = plain_loop(files)
    small_s, small_images, small_peak = ingest_seconds(work / "small", work / "zoo-small")
    large_s, large_images, large_peak = ingest_seconds(work / "large", work / "zoo-large")
    mb = sum(f.stat().st_size for f in files) / 1e6
    figures = {
        "images": len(files), "source_mb": round(mb, 1), "cores": os.cpu_count(),
        "plain_loop_images_per_s": round(len(files) / loop_s, 1),
        "ingest_images_per_s": round(large_images / large_s, 1),
        "ratio": round((large_images / large_s) / (len(files) / loop_s), 3),
        "ingest_seconds": round(large_s, 1),
        "peak_memory_mb": {str(small_n): round(small_peak / 1e6), str(args.images): round(large_peak / 1e6)},
        "goal": ">= 1.8 on 2 cores",
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
