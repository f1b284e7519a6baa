"""How the read-only commands' cost grows with the zoo: `tans status` (from the command line),
the zoo table without its embeddings (`tans.open_zoo(ZOO).results(embeddings=False)`) and
`tans search` (from the command line, with `--rerank source`, which loads no network: the
issue's goal is search without re-ranking; a 10-class query of 100 images), each in a fresh
process:
- zoos of per-job result files (as a build leaves them before `tans compact`): 64 (the demo
  zoo's size) / 1,000 / 10,000 / 100,000 rows on local disk, 1,000 / 10,000 on S3;
- compacted zoos (`--sealed-sizes`): all but the last 1 % of the rows in sealed segments of
  100,000 rows, as `tans compact` run every 100,000 results leaves them, the rest files
  committed since: 100,000 / 1,000,000 rows on local disk, 100,000 on S3.
- a zoo compacted after every 500 results (`--s3-merge-sizes`, on S3): all its rows in
  sealed segments of 500, measured before and after a `tans compact` that merges them;
- the merge rule over a zoo compacted after every 500 results up to 1,000,000 (and every 10
  up to 100,000, every 20,000 up to 1,000,000): rows rewritten by merges per row and per
  compaction, and the most small segments at once,
  against merging every small segment at each compaction (`merge_rule`, no I/O).
S3 is a moto server on 127.0.0.1; the number of S3 requests each command makes is counted
by moto's request recorder. The zoos are synthetic (bench/resume.py's `fill_zoo`: real
manifest, dataset records, pool profiles, result rows with full-size embeddings, the results
snapshot a little behind, as a long build leaves it); each gets a retriever version with
untrained weights over all its results (what search reads is the same as for a trained one:
the version's model embeddings, its weights and the query backbone, here the shipped
pretrained supernet). Seconds (the median of 3 runs) and peak memory of each process, after
one untimed command (so that Python's and torch's files are in the page cache).
Goals (issue 28): at 100,000 results `status` < 1.5 s and < 500 MB, the table < 2 s and
< 1 GB, `search` < 3 s; at 1,000,000 `status` < 5 s and `search` < 5 s, memory < 2 GB.

    python bench/scale.py [--sizes 64,1000,10000,100000] [--s3-sizes 1000,10000]
                          [--sealed-sizes 100000,1000000] [--s3-sealed-sizes 100000]
                          [--s3-merge-sizes 20000] [--work DIR]

The last line is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.resume import fill_zoo  # noqa: E402

TABLE = "import sys, tans; t = tans.open_zoo(sys.argv[1]).results(embeddings=False); print(t.num_rows)"


def add_version(store) -> None:
    """A retriever version over every result of a synthetic zoo, with untrained weights; the
    inputs come from the zoo's Arrow table (a million rows of 1,280 floats as Python lists
    would not fit in memory)."""
    import numpy as np
    import torch

    from tans.retriever.features import load_backbone
    from tans.retriever.model import Retriever
    from tans.retriever.train import RetrainSettings, ZooTensors, save_version
    from tans.workers.networks.weights import shipped
    from tans.zoo_schema.manifest import read_manifest
    from tans.zoo_schema.records import ResultRecord, from_table
    from tans.zoo_schema.results import light_rows, results_table

    spec = str(shipped()[0])
    backbone = load_backbone(store, read_manifest(store), spec)
    table = results_table(store)
    n = table.num_rows

    def matrix(name: str, width: int) -> torch.Tensor:
        values = table[name].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        with warnings.catch_warnings():  # Arrow's memory is read-only; the tensor is only read
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(values.astype(np.float32, copy=False).reshape(n, width))

    topology = matrix("topology", 45)
    # the rows' functional embeddings, each moved by its own noise: the networks' latent
    # embeddings then differ as a trained zoo's do (identical ones would compress to nothing)
    generator = torch.Generator().manual_seed(0)
    func = matrix("functional_embedding", 1280).clone()
    for i in range(0, n, 65536):
        func[i : i + 65536] += 0.1 * torch.randn(func[i : i + 65536].shape, generator=generator)
    results = from_table(ResultRecord, light_rows(table.drop_columns(["functional_embedding"])))
    datasets = sorted({r.dataset_id for r in results})
    index = {d: i for i, d in enumerate(datasets)}
    torch.manual_seed(0)
    t = ZooTensors(
        datasets,
        {},
        {},
        results,
        backbone,
        topology,
        func,
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


def machine_seconds() -> float:
    """Seconds of a fixed pure-Python loop (30 million additions): how fast this shared
    machine runs at the moment, printed at the start and the end beside the figures (the
    same code measured 1.5x slower when other work shared the machine)."""
    started, total = time.perf_counter(), 0
    for i in range(30_000_000):
        total += i
    return round(time.perf_counter() - started, 2)


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


def commands(zoo: str, query: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "tans.pipeline.cli"]
    search = ["search", zoo, "--dataset", str(query), "--top-k", "5", "--rerank", "source", "--json"]
    return {
        "status": [*cli, "status", zoo, "--json"],
        "table": [sys.executable, "-c", TABLE, zoo],
        "search": cli + search,
    }


def measure_zoo(store, n: int, query: Path, env: dict | None = None, requests=None) -> dict:
    """Each command's seconds and peak MB on a zoo of n results (and its S3 requests, counted
    by `requests(command)` on a run of its own)."""
    from tans.retriever.train import versions

    if not versions(store):
        add_version(store)
    repeats = 3  # the median of 3 runs
    out = {}
    for name, cmd in commands(store.uri, query).items():
        seconds, mb, text = measure(cmd, repeats, env)
        if name == "status":
            assert json.loads(text)["finished_jobs"] == n
        elif name == "table":
            assert int(text.strip()) == n
        else:
            assert len(json.loads(text)["hits"]) == 5
        out[f"{name}_seconds"], out[f"{name}_peak_mb"] = round(seconds, 2), round(mb)
        if requests is not None:
            out[f"{name}_requests"] = requests(cmd)
    return out


MERGE_CHUNK = 500  # rows per segment of a zoo compacted after every 500 results


def measure_merge(n: int, query: Path, moto) -> dict:
    """A zoo on S3 whose n rows are all in sealed segments of MERGE_CHUNK: each command
    before, the `tans compact` that merges them (seconds, requests), each command after."""
    from tans.zoo_schema import sealed
    from tans.zoo_schema.store import S3Settings, open_store

    store = open_store(f"s3://bench/zoo-merge-{n}", S3Settings(endpoint_url=moto.endpoint))
    fill_zoo(store, n, n_datasets=max(1, -(-n // 100)), sealed=n, seal_chunk=MERGE_CHUNK)
    out = {"segments_before": len(sealed.live(sealed.manifests(store)))}
    out["before"] = measure_zoo(store, n, query, moto.env, moto.requests)
    compact = [sys.executable, "-m", "tans.pipeline.cli", "compact", store.uri, "--json"]
    started = time.perf_counter()
    out["compact_requests"] = moto.requests(compact)  # this run merges
    out["compact_seconds"] = round(time.perf_counter() - started, 2)
    out["segments_after"] = len(sealed.live(sealed.manifests(store)))
    seconds, _, _ = measure(compact, 1, moto.env)  # nothing left to merge: what a compaction costs then
    out["compact_again_seconds"] = round(seconds, 2)
    out["after"] = measure_zoo(store, n, query, moto.env, moto.requests)
    return out


def merge_rule(chunk: int, total: int) -> dict:
    """`tans compact` run after every `chunk` results until `total`: rows written by merges per
    row sealed and the most small segments a reader met, by the merge rule itself
    (`merge_groups`, no I/O), against the rule it replaced (each run of small segments merged
    whole at every compaction)."""
    from tans.pipeline.commands.compact import MERGE_BELOW, SEAL_ROWS, merge_groups

    def merge_all(rows: list[int]) -> list[list[int]]:
        groups, run = [], []
        for i, n in enumerate([*rows, None]):
            if n is None or n >= MERGE_BELOW or (run and sum(rows[j] for j in run) + n > SEAL_ROWS):
                groups += [run] if len(run) > 1 else []
                run = [] if n is None or n >= MERGE_BELOW else [i]
            else:
                run.append(i)
        return groups

    out = {}
    for name, rule in (("now", merge_groups), ("merging_all_small", merge_all)):
        rows: list[int] = []
        written = most = 0
        for _ in range(total // chunk):
            rows.append(chunk)
            groups = rule(rows)
            written += sum(rows[i] for g in groups for i in g)
            firsts = {g[0]: sum(rows[i] for i in g) for g in groups}
            inside = {i for g in groups for i in g}
            rows = [firsts.get(i, n) for i, n in enumerate(rows) if i in firsts or i not in inside]
            most = max(most, sum(1 for n in rows if n < MERGE_BELOW))
        out[name] = {
            "rows_rewritten_per_row": round(written / total, 2),
            "rows_rewritten_per_compaction": round(written / (total // chunk)),
            "most_small_segments": most,
        }
    return out


class MotoS3:
    """A moto S3 server on 127.0.0.1 whose request recorder counts one command's requests."""

    def __init__(self, work: Path):
        import random

        self.port = 5000 + random.randrange(1000, 4000)
        self.log = work / "moto-recording.jsonl"
        env = {**os.environ, "MOTO_RECORDER_FILEPATH": str(self.log)}
        self.server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.endpoint = f"http://127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        self.env = {**os.environ, "AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "bench"}
        self.env.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        self.env.setdefault("AWS_DEFAULT_REGION", "us-east-1")

    def _post(self, action: str) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/recorder/{action}", method="POST"))

    def requests(self, cmd: list[str]) -> int:
        self._post("reset-recording")
        self._post("start-recording")
        try:
            _measure_once(cmd, self.env)
        finally:
            self._post("stop-recording")
        return sum(1 for _ in self.log.open()) if self.log.exists() else 0

    def close(self) -> None:
        self.server.terminate()
        self.server.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,1000,10000,100000")
    ap.add_argument("--s3-sizes", default="1000,10000")
    ap.add_argument("--s3-sealed-sizes", default="100000", help="as --sealed-sizes, on S3 (moto)")
    ap.add_argument(
        "--sealed-sizes",
        default="100000,1000000",
        help="zoos as `tans compact` leaves them: all but the last 1%% of the results in sealed segments",
    )
    ap.add_argument(
        "--s3-merge-sizes",
        default="20000",
        help="on S3, zoos whose rows are all in sealed segments of 500, before and after `tans compact` merges them",
    )
    ap.add_argument(
        "--work",
        default="",
        help="keep the local zoos here and reuse them in a later run (100,000 result files take ~10 min to write)",
    )
    args = ap.parse_args()
    from tans.zoo_schema.store import S3Settings, open_store

    work = Path(args.work or tempfile.mkdtemp(prefix="tans-bench-scale-"))
    query = work / "stripes-frequency" if (work / "stripes-frequency").exists() else query_folder(work)
    figures: dict = {"machine_loop_seconds_before": machine_seconds(), "local": {}, "s3": {}}
    figures["merge_rule"] = {
        f"every_{c}_of_{t}": merge_rule(c, t) for c, t in ((500, 1_000_000), (10, 100_000), (20_000, 1_000_000))
    }
    print("merge rule", figures["merge_rule"], file=sys.stderr)
    warm = False
    for n in [int(x) for x in args.sizes.split(",") if x]:
        zoo = work / f"zoo-{n}"
        started = time.perf_counter()
        reused = (zoo / "results_index").exists()
        if not reused:
            fill_zoo(open_store(str(zoo)), n, n_datasets=max(1, -(-n // 100)))
        made = time.perf_counter() - started
        if not warm:  # one untimed run first: Python's and torch's files in the page cache
            measure(commands(str(zoo), query)["status"])
            warm = True
        figures["local"][str(n)] = {
            **measure_zoo(open_store(str(zoo)), n, query),
            "zoo_written_seconds": None if reused else round(made, 1),
        }
        print("local", n, figures["local"][str(n)], file=sys.stderr)
    figures["sealed"] = {}
    for n in [int(x) for x in args.sealed_sizes.split(",") if x]:
        zoo = work / f"zoo-sealed-{n}"
        started = time.perf_counter()
        reused = (zoo / "results_index" / "index.json").exists()  # written last
        if not reused:
            fill_zoo(open_store(str(zoo)), n, n_datasets=max(1, -(-n // 100)), sealed=n - n // 100)
        made = time.perf_counter() - started
        if not warm:
            measure(commands(str(zoo), query)["status"])
            warm = True
        figures["sealed"][str(n)] = {
            **measure_zoo(open_store(str(zoo)), n, query),
            "zoo_written_seconds": None if reused else round(made, 1),
        }
        print("sealed", n, figures["sealed"][str(n)], file=sys.stderr)
    sizes = [int(x) for x in args.s3_sizes.split(",") if x]
    sealed_sizes = [int(x) for x in args.s3_sealed_sizes.split(",") if x]
    merge_sizes = [int(x) for x in args.s3_merge_sizes.split(",") if x]
    if sizes or sealed_sizes or merge_sizes:
        import boto3

        moto = MotoS3(work)
        try:
            boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
            for n in sizes:
                store = open_store(f"s3://bench/zoo-{n}", S3Settings(endpoint_url=moto.endpoint))
                started = time.perf_counter()
                fill_zoo(store, n, n_datasets=max(1, -(-n // 100)))
                made = time.perf_counter() - started
                figures["s3"][str(n)] = {
                    **measure_zoo(store, n, query, moto.env, moto.requests),
                    "zoo_written_seconds": round(made, 1),
                }
                print("s3", n, figures["s3"][str(n)], file=sys.stderr)
            figures["s3_sealed"] = {}
            for n in sealed_sizes:
                store = open_store(f"s3://bench/zoo-sealed-{n}", S3Settings(endpoint_url=moto.endpoint))
                started = time.perf_counter()
                fill_zoo(store, n, n_datasets=max(1, -(-n // 100)), sealed=n - n // 100)
                made = time.perf_counter() - started
                figures["s3_sealed"][str(n)] = {
                    **measure_zoo(store, n, query, moto.env, moto.requests),
                    "zoo_written_seconds": round(made, 1),
                }
                print("s3 sealed", n, figures["s3_sealed"][str(n)], file=sys.stderr)
            figures["s3_merge"] = {}
            for n in merge_sizes:
                figures["s3_merge"][str(n)] = measure_merge(n, query, moto)
                print("s3 merge", n, figures["s3_merge"][str(n)], file=sys.stderr)
        finally:
            moto.close()
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    figures["machine_loop_seconds_after"] = machine_seconds()
    figures["goal"] = (
        "at 100,000 results: status < 1.5 s and < 500 MB, table < 2 s and < 1 GB, search < 3 s; "
        "at 1,000,000: status < 5 s, search < 5 s, memory < 2 GB"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
