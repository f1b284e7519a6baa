"""GPU smoke test: one real fine-tune on CUDA (fp16 mixed precision), images/s.

Writes one built-in dataset, ingests it into a temporary zoo and runs the worker's job
(`tans.workers.run.run_job`, the code every Ray fine-tuning task runs) on the largest
architecture of the space, then the same job with mixed precision off, and reports
training images/s for both, the batch-1 latency and the device. Then it runs the job as a
warm worker does (with its cache) and a plain PyTorch training loop on the same data, and
reports the pipeline's images/s over the whole job divided by the plain loop's (goal >= 0.95). For a GPU machine; on a
machine without CUDA it says so and exits 2, unless `--allow-cpu` (then it measures the
CPU, e.g. as the baseline to compare a GPU run with).

    python bench/gpu_smoke.py [--epochs 2] [--image-size 64] [--batch-size 128] [--allow-cpu]
                              [--evaluate-last-epoch] [--probe-only]

On CUDA it first measures the steady-state training images/s of that network in fp32, fp16
(autocast and a GradScaler, as `train.mixed_precision`) and bf16, each also channels-last
(`--probe-only`: only that). Then the search's short fine-tune (`tans search --rerank finetune`
with `--address`: its Ray tasks fine-tune on the GPU) on CUDA and on the CPU: the held-out loss
on both, which agree.

`--evaluate-last-epoch` runs the warm pipeline and the plain loop with
`train.evaluate_every_epoch = false` (both evaluate once, after the last epoch).

The last line is the figures as one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def precision_probe(arch_id: str, classes: int, image_size: int, batch: int, steps: int = 30) -> dict:
    """Steady-state training images/s of the network (random data on the GPU, after 5 warm-up
    steps) in fp32, fp16 autocast with a GradScaler (what `train.mixed_precision` runs), bf16
    autocast, and each with channels-last memory."""
    import torch

    from tans.workers.networks.nets import model_for

    x = torch.randn(batch, 3, image_size, image_size, device="cuda")
    y = torch.randint(0, classes, (batch,), device="cuda")
    out = {}
    for name, dtype in (("fp32", None), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        for channels_last in (False, True):
            torch.manual_seed(0)
            model = model_for(arch_id, classes, 1.0).cuda()
            xx = x
            if channels_last:
                model, xx = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            scaler = torch.amp.GradScaler("cuda", enabled=dtype is torch.float16)

            def step():
                with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                    loss = torch.nn.functional.cross_entropy(model(xx), y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

            for _ in range(5):
                step()
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
            key = name + ("_channels_last" if channels_last else "")
            out[key] = round(steps * batch / (time.perf_counter() - started), 1)
            print(f"steady state {key}: {out[key]} images/s", file=sys.stderr)
    return out


def search_finetune(arch_id: str, classes: int, devices: list[str]) -> dict:
    """The search's short fine-tune (tans.retriever.proxy.fold_sum, what `remote_loss` runs in a
    Ray task on a GPU): the plain-torch network `tans search` fine-tunes (mbv3.Network of the
    architecture, classifier included), channels-last, on 400 seeded random images at 32 px, on
    each device: its held-out mean loss (the devices' agree up to float rounding) and seconds
    (the first device's include its start-up)."""
    import copy

    import torch

    from tans.retriever import proxy
    from tans.workers.networks.mbv3 import static_subnet
    from tans.workers.networks.nets import model_for
    from tans.workers.networks.ofa_space import Arch

    torch.manual_seed(0)
    state = model_for(arch_id, classes, 1.0).state_dict()
    net = static_subnet(state, Arch.parse(arch_id).depths, classifier=True)
    x = torch.rand(400, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(400) % classes
    folds = proxy.proxy_folds(y.tolist())
    out = {}
    for device in devices:
        started = time.perf_counter()
        loss = proxy.fold_sum(lambda: copy.deepcopy(net), classes, x, y, folds, 0, 32, device=device)
        out[device] = {
            "held_out_loss": round(loss / len(folds[1]), 5),
            "seconds": round(time.perf_counter() - started, 3),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--dataset", default="glyphs-latin-upper-clean")
    ap.add_argument("--allow-cpu", action="store_true")
    ap.add_argument("--probe-only", action="store_true", help="only the steady-state precision probe")
    ap.add_argument(
        "--evaluate-last-epoch",
        action="store_true",
        help="warm pipeline and plain loop evaluate after the last epoch only",
    )
    args = ap.parse_args()

    import torch

    from tans.pipeline.datasets import synth
    from tans.pipeline.datasets.ingest import ingest
    from tans.workers.cache import JobCache
    from tans.workers.job import JobSpec, TrainSettings
    from tans.workers.networks.images import load_tensors
    from tans.workers.networks.nets import model_for
    from tans.workers.networks.ofa_space import DEPTHS, EXPANDS, KERNELS, Arch
    from tans.workers.networks.training import train as plain_train
    from tans.workers.run import run_job
    from tans.zoo_schema.manifest import BaseWeights
    from tans.zoo_schema.shards import read_datasets
    from tans.zoo_schema.store import open_store

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("no CUDA device here; run this on a GPU node (or pass --allow-cpu for a CPU baseline)", file=sys.stderr)
        print(json.dumps({"cuda": False, "error": "no CUDA device"}))
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        spec = {s.name: s for s in synth.suite()}[args.dataset]
        synth.write_dataset(spec, Path(tmp) / "data", seed=0)
        store = open_store(str(Path(tmp) / "zoo"))
        ingest(store, str(Path(tmp) / "data" / args.dataset))
        dataset = read_datasets(store)[0]
        largest = Arch.from_config([max(KERNELS)] * 20, [max(EXPANDS)] * 20, [max(DEPTHS)] * 5)
        figures = {
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "cuda": cuda,
            "torch": torch.__version__,
            "dataset": dataset.dataset_id,
            "train_images": dataset.num_train,
            "arch": largest.id,
            "epochs": args.epochs,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "evaluate_every_epoch": not args.evaluate_last_epoch,
        }
        if cuda:
            figures["steady_state_images_per_s"] = precision_probe(
                largest.id, dataset.num_classes, args.image_size, args.batch_size
            )
            if args.probe_only:
                print(json.dumps(figures))
                return 0
        devices = ["cuda", "cpu"] if cuda else ["cpu"]
        figures["search_finetune"] = search_finetune(largest.id, dataset.num_classes, devices)
        print(f"search's fine-tune: {figures['search_finetune']}", file=sys.stderr)
        for amp in (None, True, False):  # None: the same job untimed first (CUDA start-up, cuDNN autotuning)
            train = TrainSettings(
                epochs=args.epochs,
                image_size=args.image_size,
                batch_size=args.batch_size,
                mixed_precision=bool(amp),
                latency_repeats=20,
            )
            job = JobSpec(
                dataset_id=dataset.dataset_id,
                dataset_sha256=dataset.content_sha256,
                num_classes=dataset.num_classes,
                arch=largest.id,
                train=train,
                width=1.0,
                base_weights=BaseWeights("random", "random-seed0", seed=0),
                noise_seed=0,
                noise_shape=(8, 3, args.image_size, args.image_size),
            )
            started = time.perf_counter()
            record = run_job(
                dataclasses.replace(job, noise_seed=1) if amp is None else job, store.uri, threads=os.cpu_count()
            )
            if amp is None:
                continue
            key = "mixed_precision" if amp else "fp32"
            figures[key] = {
                "train_images_per_s": round(args.epochs * dataset.num_train / record.train_seconds, 1),
                "train_seconds": round(record.train_seconds, 2),
                "job_seconds": round(time.perf_counter() - started, 2),
                "accuracy": round(record.accuracy, 4),
                "latency_ms": round(record.latency_ms, 3),
                "latency_device": record.latency_device,
            }
            print(f"{key}: {figures[key]}", file=sys.stderr)
        figures["amp_speedup"] = round(
            figures["mixed_precision"]["train_images_per_s"] / figures["fp32"]["train_images_per_s"], 3
        )
        # the pipeline on a warm worker (what each Ray actor runs) vs a plain PyTorch loop:
        # images/s over the whole job (data, setup, training, evaluation, profiling, commit)
        cache = JobCache()
        walls = []
        for seed in (1, 2):  # the first warms the worker up; the second is measured
            train = TrainSettings(
                epochs=args.epochs,
                image_size=args.image_size,
                batch_size=args.batch_size,
                seed=seed,
                latency_repeats=20,
                evaluate_every_epoch=not args.evaluate_last_epoch,
            )
            job = dataclasses.replace(job, train=train)
            started = time.perf_counter()
            record = run_job(job, store.uri, threads=os.cpu_count(), cache=cache)
            walls.append(time.perf_counter() - started)
        x, y = load_tensors(store, dataset.dataset_id, "train", args.image_size)
        xt, yt = load_tensors(store, dataset.dataset_id, "test", args.image_size)
        model = model_for(largest.id, dataset.num_classes, 1.0)
        device = torch.device("cuda" if cuda else "cpu")
        started = time.perf_counter()
        plain_train(model, x, y, xt, yt, train, device, seed=3)
        plain = time.perf_counter() - started
        images = args.epochs * dataset.num_train
        figures["warm_pipeline"] = {
            "job_images_per_s": round(images / walls[1], 1),
            "non_training_share": round(1 - (record.train_seconds - record.eval_seconds) / walls[1], 3),
            "seconds": {
                "job": round(walls[1], 3),
                "data": round(record.data_seconds, 3),
                "setup": round(record.setup_seconds, 3),
                "training": round(record.train_seconds - record.eval_seconds, 3),
                "evaluation": round(record.eval_seconds, 3),
                "profiling": round(record.profile_seconds, 3),
                "checkpoint": round(record.checkpoint_seconds, 3),
            },
        }
        figures["plain_loop_images_per_s"] = round(images / plain, 1)
        figures["warm_pipeline_over_plain_loop"] = round(plain / walls[1], 3)
        figures["goal"] = "warm_pipeline_over_plain_loop >= 0.95"
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
