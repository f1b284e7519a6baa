"""Helpers shared by the test modules (no test module imports another): build overrides and
config files, waiting, a zoo of committed rows, small images and image folders, and the
acquisition tests' synthetic state."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tans.pipeline.acquisition.priors import ArchProfile, Prior
from tans.workers.job import TrainSettings, job_spec
from tans.workers.networks.ofa_space import DEPTHS, EXPANDS, KERNELS, arch_pool
from tans.zoo_schema.journal import read_starts
from tans.zoo_schema.manifest import BaseWeights, Manifest, ensure_manifest
from tans.zoo_schema.records import DatasetRecord, ResultRecord, to_table
from tans.zoo_schema.results import ZooState, read_results
from tans.zoo_schema.store import open_store

ROOT = Path(__file__).resolve().parents[1]


# -- builds ---------------------------------------------------------------------------------


def build_overrides(zoo, data, tmp_path, **kw) -> dict:
    """Dotted config overrides of a small, fast build (random strategy, 1 epoch, 10 archs).
    Its MLflow database in `tmp_path` starts as a copy of an empty one when there is none yet:
    MLflow makes its tables in about a second, a cost each build would pay again (a build on a
    fresh database is what `make demo` runs)."""
    import shutil

    if "mlflow.tracking_uri" not in kw and not (Path(tmp_path) / "mlflow.db").exists():
        Path(tmp_path).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mlflow_template(), Path(tmp_path) / "mlflow.db")
    o = {
        "zoo": zoo,
        "datasets": [str(data)],
        "max_jobs": 5,
        "strategy": "random",
        "train.epochs": 1,
        "train.latency_repeats": 3,
        "arch.pool_size": 10,
        "lease_seconds": 6.0,
        "retrain.after_build": False,
        "mlflow.tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    o.update(kw)
    return o


_TEMPLATE_DIR: list = []  # the TemporaryDirectory of `mlflow_template`, removed at exit


def mlflow_template() -> Path:
    """An empty MLflow database with its tables made, once per test process."""
    if not _TEMPLATE_DIR:
        import tempfile

        from mlflow.tracking import MlflowClient

        folder = tempfile.TemporaryDirectory(prefix="tans-tests-mlflow-")
        MlflowClient(f"sqlite:///{Path(folder.name) / 'mlflow.db'}").search_experiments()
        _TEMPLATE_DIR.append(folder)
    return Path(_TEMPLATE_DIR[0].name) / "mlflow.db"


def toml(o: dict) -> str:
    """A flat TOML file from dotted overrides."""
    tables: dict[str, dict] = {}
    for k, v in o.items():
        head, _, leaf = k.rpartition(".")
        tables.setdefault(head, {})[leaf] = v
    lines = [f"{k} = {json.dumps(v)}" for k, v in tables.pop("", {}).items()]
    for table, items in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in items.items()]
    return "\n".join(lines) + "\n"


def wait_for(predicate, timeout=240, every=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(every)
    raise AssertionError("condition not reached in time")


def assert_trained_once(store):
    """No completed job was fine-tuned again after its result was committed."""
    results = {r.job_id: r for r in read_results(store)}
    for start in read_starts(store):
        r = results.get(start["job_id"])
        assert r is None or start["at"] <= r.created_at, f"{start['job_id']} trained after its commit"


def crash(spec: dict) -> None:
    """Run a call that is SIGKILLed right after its N-th write below a prefix (tests/crash.py)."""
    r = subprocess.run(
        [sys.executable, "-m", "tests.crash", json.dumps(spec)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]


# -- a zoo of committed rows (no fine-tuning) -------------------------------------------------

ARCHS = [a.id for a in arch_pool(0, 3)]
MANIFEST = Manifest(
    width=1.0,
    kernels=list(KERNELS),
    expands=list(EXPANDS),
    depths=list(DEPTHS),
    noise_seed=0,
    noise_shape=[2, 3, 32, 32],
    base_weights=BaseWeights("random", "random-seed0", seed=0),
    pool_size=3,
)
DATASET = DatasetRecord("d0", "d0", 2, ["a", "b"], 8, 2, "x", "sha", 0, 0, "t")


def committed_zoo(path) -> tuple:
    """A zoo holding a result row for each of ARCHS on DATASET; returns (store, their specs)."""
    store = open_store(str(path))
    ensure_manifest(store, MANIFEST)
    specs = [job_spec(DATASET, a, TrainSettings(), MANIFEST) for a in ARCHS]
    for n, spec in enumerate(specs):
        row = ResultRecord(
            spec.job_id,
            spec.dataset_id,
            spec.arch,
            [0] * 45,
            0.5 + n / 10,
            1,
            1,
            1.0,
            "cpu",
            [0.0],
            "x",
            "0",
            2,
            1,
            32,
            1.0,
            [1.0],
            [0.5],
            "random-seed0",
            "t",
        )
        store.write_table(spec.result_key, to_table([row]), create_only=True)
    return store, specs


# -- images -----------------------------------------------------------------------------------


def png(colour, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def noise_png(seed: int, side: int) -> bytes:
    """A PNG of random pixels: distinct for every seed, slow to encode when large."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def make_folder(root, classes: dict[str, int], mode="RGB", size=(20, 16)):
    """An ImageFolder of solid images, each distinct (a white pixel moves), classes tinted apart."""
    for c, (name, n) in enumerate(classes.items()):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            tint = sum(map(ord, name))  # classes of separate calls differ too
            colour = (
                ((c * 40 + tint) % 256, i * 10 % 256, (100 + c * 7) % 256) if mode == "RGB" else (c * 40 + tint) % 256
            )
            img = Image.new("RGB", size, colour)
            img.putpixel((i % size[0], i // size[0]), (255, 255, 255))  # every image distinct (no duplicates)
            img = img.convert(mode)
            img.save(d / f"{i}.png")
    return root


def noise_folder(root: Path, classes: int, per_class: int, side: int = 24, seed: int = 0) -> Path:
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            (root / f"c{c}" / f"{i}.png").write_bytes(noise_png(seed + 1000 * c + i, side))
    return root


# -- the acquisition tests' synthetic zoo state ------------------------------------------------

POOL = [a.id for a in arch_pool(0, 12)]
DATASETS = [f"d{i}" for i in range(4)]


def make_prior(seed=0):
    rng = np.random.default_rng(seed)
    features = {d: rng.normal(size=16).astype(np.float32) for d in DATASETS}
    profiles = {
        a: ArchProfile(a, int(1e6 + 4e5 * i), int(5e6 + i), 2.0 + 0.7 * ((i * 5) % 12), rng.normal(size=8).tolist())
        for i, a in enumerate(POOL)
    }
    return Prior(features, profiles)


def result(d, a, acc, n):
    return ResultRecord(
        job_id=f"job-{d}-{a[:12]}-{n}",
        dataset_id=d,
        arch=a,
        topology=[0] * 45,
        accuracy=acc,
        params=1,
        flops=1,
        latency_ms=1.0,
        latency_device="cpu",
        functional_embedding=[0.0],
        checkpoint_uri="x",
        checkpoint_sha256="0",
        num_classes=2,
        epochs=1,
        image_size=32,
        train_seconds=1.0,
        epoch_losses=[1.0],
        epoch_accuracies=[acc],
        base_weights="b",
        created_at=f"2026-01-01T00:00:{n:02d}",
    )


def make_state(n_per_dataset=3):
    ds = [DatasetRecord(d, d, 2, ["a", "b"], 8, 2, "x", "sha", 0, 0, "t") for d in DATASETS]
    results, n = [], 0
    for j, d in enumerate(DATASETS):
        for i in range(n_per_dataset):
            a = POOL[(i * 3 + j) % len(POOL)]
            results.append(result(d, a, 0.2 + 0.15 * j + 0.05 * i, n))
            n += 1
    return ZooState(ds, results, [])
