"""How the read-only commands' cost grows with the zoo: `tans status` (from the command line),
the zoo table read (`tans.open_zoo(ZOO).results()`) and `tans search` (from the command line,
with `--rerank source`, which loads no network: the issue's goal is search without re-ranking; a
10-class query of 100 images), each in a fresh process, at 64 (the demo
zoo's size) / 1,000 / 10,000 / 100,000 result rows. The zoos are synthetic (bench/resume.py's `fill_zoo`: real manifest,
dataset records, pool profiles and one result file per job, with the results snapshot a little
behind, as a long build leaves it); each gets a retriever version with untrained weights over
all its results (what search reads is the same as for a trained one: the version's model
embeddings, its weights and the query backbone, here the shipped pretrained supernet).
Seconds (the median of 3 runs; 1 at 100,000) and peak memory of each process, after one
untimed command (so that Python's and torch's files are in the page cache).
Goals (issue 14, on the demo zoo): `status` < 1 s and < 300 MB; `search` < 3 s.

    python bench/scale.py [--sizes 64,1000,10000,100000]

The last line is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.resume import fill_zoo  # noqa: E402

TABLE = "import sys, tans; t = tans.open_zoo(sys.argv[1]).results(); print(t.num_rows)"


def add_version(store) -> None:
    """A retriever version over every result of a synthetic zoo, with untrained weights."""
    import numpy as np
    import torch

    from tans.retriever.features import load_backbone
    from tans.retriever.model import Retriever
    from tans.retriever.train import RetrainSettings, ZooTensors, save_version
    from tans.workers.networks.weights import shipped
    from tans.zoo_schema.manifest import read_manifest
    from tans.zoo_schema.results import read_results

    spec = str(shipped()[0])
    backbone = load_backbone(store, read_manifest(store), spec)
    results = read_results(store)
    datasets = sorted({r.dataset_id for r in results})
    index = {d: i for i, d in enumerate(datasets)}
    torch.manual_seed(0)
    t = ZooTensors(
        datasets,
        {},
        {},
        results,
        backbone,
        torch.tensor([r.topology for r in results], dtype=torch.float32),
        torch.tensor([r.functional_embedding for r in results], dtype=torch.float32),
        torch.tensor([r.accuracy for r in results], dtype=torch.float32),
        np.array([index[r.dataset_id] for r in results]),
    )
    save_version(store, Retriever(1280, 1280), t, RetrainSettings(backbone=spec), {"bench": "scale"}, 32)


def query_folder(work: Path) -> Path:
    """A held-out built-in dataset (10 classes) as an ImageFolder to search with."""
    from tans.pipeline.datasets import synth

    spec = {s.name: s for s in synth.suite()}["stripes-frequency"]
    synth.write_dataset(spec, work, seed=0)
    return work / spec.name


def measure(cmd: list[str], repeats: int = 1, env: dict | None = None) -> tuple[float, float, str]:
    """(median seconds, peak resident MB, stdout) of `repeats` fresh processes."""
    runs = [_measure_once(cmd, env) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs), runs[-1][2]


def _measure_once(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """(seconds, peak resident MB of the process and its children together, stdout) of a
    fresh process. Its output is read while it runs (a process blocked on a full pipe would
    never end)."""
    started = time.perf_counter()
    proc = psutil.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(
                    peak, proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
                )
            except psutil.Error:
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {err[-2000:]}")
    return seconds, peak / 1e6, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,1000,10000,100000")
    ap.add_argument(
        "--work",
        default="",
        help="keep the zoos in this folder and reuse them in a later run (writing 100,000 result files takes ~10 min)",
    )
    args = ap.parse_args()
    from tans.retriever.train import versions
    from tans.zoo_schema.store import open_store

    work = Path(args.work or tempfile.mkdtemp(prefix="tans-bench-scale-"))
    query = work / "stripes-frequency" if (work / "stripes-frequency").exists() else query_folder(work)
    figures = {}
    warm = False
    for n in [int(s) for s in args.sizes.split(",")]:
        zoo = work / f"zoo-{n}"
        started = time.perf_counter()
        reused = (zoo / "results_index").exists()
        if not reused:
            fill_zoo(open_store(str(zoo)), n, n_datasets=max(1, -(-n // 100)))
        made = time.perf_counter() - started
        repeats = 3 if n < 100_000 else 1  # the median of 3 runs; one at 100,000 (10 s each)
        if not warm:  # one untimed run first: Python's and torch's files in the page cache, as for
            measure(
                [
                    sys.executable,
                    "-m",
                    "tans.pipeline.cli",
                    "search",
                    str(zoo),
                    "--dataset",
                    str(query),
                    "--top-k",
                    "5",
                    "--rerank",
                    "source",
                    "--json",
                ]
                if versions(open_store(str(zoo)))
                else [sys.executable, "-m", "tans.pipeline.cli", "status", str(zoo), "--json"]
            )  # any command after the first
            warm = True
        status_s, status_mb, out = measure(
            [sys.executable, "-m", "tans.pipeline.cli", "status", str(zoo), "--json"], repeats
        )
        assert json.loads(out)["finished_jobs"] == n
        table_s, table_mb, out = measure([sys.executable, "-c", TABLE, str(zoo)], repeats)
        assert int(out.strip()) == n
        if not versions(open_store(str(zoo))):
            add_version(open_store(str(zoo)))
        search_s, search_mb, out = measure(
            [
                sys.executable,
                "-m",
                "tans.pipeline.cli",
                "search",
                str(zoo),
                "--dataset",
                str(query),
                "--top-k",
                "5",
                "--rerank",
                "source",
                "--json",
            ],
            repeats,
        )
        assert len(json.loads(out)["hits"]) == 5
        figures[str(n)] = {
            "status_seconds": round(status_s, 2),
            "status_peak_mb": round(status_mb),
            "table_seconds": round(table_s, 2),
            "table_peak_mb": round(table_mb),
            "search_seconds": round(search_s, 2),
            "search_peak_mb": round(search_mb),
            "zoo_written_seconds": None if reused else round(made, 1),
        }
        print(n, figures[str(n)], file=sys.stderr)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    figures["goal"] = "on the demo zoo (64 results): status < 1 s and < 300 MB, search < 3 s"
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
