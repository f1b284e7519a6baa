"""Retrieval quality, transfer, search latency and training time of the retriever.

0. The query backbone: `tans pretrain-base` on the pool's 20 datasets (1000 sandwich
   steps, cached in bench/.cache/pretrained-base.safetensors), the offline stand-in for
   the paper's ImageNet backbone.
1. Same-pair retrieval (paper Fig. 7b) on the evaluated pool of bench/acquisition.py
   (20 built-in datasets x 30 architectures, all really fine-tuned), with unseen
   (test-split) query images, 10 query sets per dataset: R@1/5/10, mean and median rank
   of the full retriever (accuracy-weighted positives, and the official uniform ones),
   against random and largest-params rankings, and ablations without the functional
   embedding, without the topology, without the predictor loss, and with the zoo's
   random-init base supernet as the backbone instead of the pretrained one. Predictor
   MSE on the top-10 retrieved and on each dataset's own models (Fig. 7c/d).
2. Transfer on 5 built-in datasets held out of the zoo: fine-tune for 3 epochs from
   (a) the TANS top-1 under a params constraint (the zoo's median), (b) a random zoo
   model, (c) the largest-params zoo model within the constraint, (d) TANS's arch
   randomly initialised, (e) TANS's arch from the zoo's base weights (random init, the
   weights the zoo's networks started from), (f) TANS's arch from the pretrained
   supernet of step 0; accuracy after each epoch.
2b. The paper's zoo is fine-tuned from pretrained OFA weights: a second zoo on the same 20
   datasets starts every network from the pretrained supernet of step 0 (5 pool archs per
   dataset, 100 jobs, 1 epoch; cached in bench/.cache/pretrained-zoo); its retriever (the
   pretrained supernet is its default backbone) gets the same-pair and transfer protocols.
3. Search latency over 14,000 and 1,000,000 synthetic model embeddings, without and with
   the query's feature extraction (10 images per class of a 20-class dataset).
4. Retriever training time on a synthetic 14,000-entry zoo (140 datasets x 100 models).

    python bench/retrieval.py

The last line is the figures as one JSON object.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.chdir(ROOT)
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import numpy as np  # noqa: E402
import torch  # noqa: E402

HELD_OUT = ["glyphs-hebrew-clean", "stripes-frequency", "glyphs-digits-wild", "hue-shapes-12", "checker-scale"]


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


PRETRAIN_STEPS = 1000


def pretrained_base(store) -> str:
    """The pool's pretrained supernet file (trained once, then cached)."""
    from tans.pipeline.commands.pretrain import PretrainSettings, pretrain_base

    path = ROOT / "bench" / ".cache" / "pretrained-base.safetensors"
    summary_path = path.with_suffix(".json")
    if not path.exists():
        summary = pretrain_base(store, str(path), PretrainSettings(steps=PRETRAIN_STEPS), log=log)
        summary_path.write_text(json.dumps(summary))
    return str(path)


def pretrained_zoo(base_file: str):
    """A second zoo on the pool's 20 datasets whose networks start from the pretrained
    supernet, as the paper's zoo starts from pretrained OFA: 5 pool archs per dataset
    (random strategy, 100 jobs, 1 epoch), built once and cached."""
    from acquisition import POOL_CONFIG

    from tans.pipeline.execution.config import load_config
    from tans.pipeline.execution.run import run_build
    from tans.zoo_schema.results import read_state
    from tans.zoo_schema.store import open_store

    folder = ROOT / "bench" / ".cache" / "pretrained-zoo"
    config = load_config(
        POOL_CONFIG,
        {
            "zoo": str(folder / "zoo"),
            "max_jobs": 100,
            "arch.base_weights": base_file,
            "retrain.after_build": False,
            "mlflow.tracking_uri": f"sqlite:///{folder / 'mlflow.db'}",
        },
    )
    store = open_store(config.zoo)
    if len(read_state(store).results) < config.max_jobs:
        run_build(config, log=log)
        import ray

        ray.shutdown()
    return store


def same_pair(t, settings, t_random_backbone) -> dict:
    from tans.retriever.train import evaluate, train_retriever

    out = {}
    variants = {
        "tans_weighted_positives": (settings, t),
        "tans_uniform_positives": (replace(settings, positive="uniform"), t),
        "without_functional_embedding": (replace(settings, use_functional=False), t),
        "without_topology": (replace(settings, use_topology=False), t),
        "without_predictor": (replace(settings, lam=0.0), t),
        "random_init_backbone": (replace(settings, backbone=""), t_random_backbone),
    }
    models = {}
    for name, (s, t) in variants.items():
        model, _ = train_retriever(t, s, log=lambda line: None)
        metrics = evaluate(model, t, s, queries_per_dataset=10)
        models[name] = model
        out[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
        log(f"{name}: R@1 {metrics['R@1']:.1f} R@5 {metrics['R@5']:.1f} R@10 {metrics['R@10']:.1f}")
    # baselines: a random ranking (expectation over 1000 shuffles), and models by params
    rng = np.random.default_rng(0)
    ranks = []
    for i in range(len(t.dataset_ids)):
        for _ in range(1000):
            order = rng.permutation(len(t.owner))
            ranks.append(int(np.flatnonzero(t.owner[order] == i)[0]) + 1)
    out["random_ranking"] = _rank_stats(np.array(ranks))
    params = np.array([r.params for r in t.results])
    order = np.argsort(-params, kind="stable")
    out["largest_params_ranking"] = _rank_stats(
        np.array([int(np.flatnonzero(t.owner[order] == i)[0]) + 1 for i in range(len(t.dataset_ids))])
    )
    return out, models["tans_weighted_positives"]


def _rank_stats(ranks: np.ndarray) -> dict:
    return {
        "R@1": round(float((ranks <= 1).mean() * 100), 2),
        "R@5": round(float((ranks <= 5).mean() * 100), 2),
        "R@10": round(float((ranks <= 10).mean() * 100), 2),
        "mean_rank": round(float(ranks.mean()), 2),
        "median_rank": float(np.median(ranks)),
    }


def transfer(store, t, settings, model, extra_bases: dict, epochs: int = 3) -> dict:
    """Fine-tune held-out datasets from each starting point; accuracy after each epoch.
    `extra_bases` names further supernets whose subnet of TANS's arch is a start."""
    from tans.pipeline.datasets import synth
    from tans.pipeline.datasets.ingest import IngestSettings, read_images, stratified_split
    from tans.retriever.search import Constraints, Searcher
    from tans.retriever.train import save_version
    from tans.workers.job import TrainSettings
    from tans.workers.networks.images import decode_images
    from tans.workers.networks.nets import load_base_supernet, load_checkpoint, model_for
    from tans.workers.networks.training import train
    from tans.zoo_schema.manifest import read_manifest

    manifest = read_manifest(store)
    folder = ROOT / "bench" / ".cache" / "retrieval-heldout"
    specs = {s.name: s for s in synth.suite()}
    for name in HELD_OUT:
        if not (folder / name).exists():
            synth.write_dataset(specs[name], folder, seed=0)
    version = save_version(store, model, t, settings, {"bench": "retrieval"}, 32)
    searcher = Searcher(store, version)
    limit = float(np.median(searcher.params))
    constraint = Constraints(max_params=limit)
    results = {r.job_id: r for r in t.results}
    rng = np.random.default_rng(0)
    train_settings = TrainSettings(epochs=epochs, image_size=32)
    curves: dict[str, list] = {
        k: []
        for k in (
            "a_tans_top1",
            "b_random_zoo_model",
            "c_largest_params_fitting",
            "d_same_arch_random_init",
            "e_same_arch_base_weights",
            *extra_bases,
        )
    }
    torch.set_num_threads(os.cpu_count() or 1)
    for name in HELD_OUT:
        by_class, _ = read_images(str(folder / name))
        classes = sorted(by_class)
        tr, te = stratified_split(by_class, classes, IngestSettings())
        x = torch.from_numpy(decode_images([b for b, _ in tr], 32))
        y = torch.tensor([label for _, label in tr])
        xt = torch.from_numpy(decode_images([b for b, _ in te], 32))
        yt = torch.tensor([label for _, label in te])
        feats = searcher.query_features([b for b, _ in tr], [label for _, label in tr], per_class=10)
        top = results[searcher.search(feats, constraint, top_k=10, rerank="none")[0].job_id]
        fitting = [r for r in results.values() if r.params <= limit]
        starts = {
            "a_tans_top1": top,
            "b_random_zoo_model": list(results.values())[int(rng.integers(len(results)))],
            "c_largest_params_fitting": max(fitting, key=lambda r: r.params),
        }
        for key, start in starts.items():
            net = load_checkpoint(store, start, manifest.width)
            net.classifier = torch.nn.Linear(net.classifier.in_features, len(classes))
            curves[key].append(train(net, x, y, xt, yt, train_settings, torch.device("cpu"), seed=0)[1])
        torch.manual_seed(12345)
        fresh = model_for(top.arch, len(classes), manifest.width)
        curves["d_same_arch_random_init"].append(train(fresh, x, y, xt, yt, train_settings, torch.device("cpu"), 0)[1])
        base = model_for(
            top.arch, len(classes), manifest.width, load_base_supernet(store, manifest.width, manifest.base_weights)
        )
        curves["e_same_arch_base_weights"].append(train(base, x, y, xt, yt, train_settings, torch.device("cpu"), 0)[1])
        for key, supernet in extra_bases.items():
            warm = model_for(top.arch, len(classes), manifest.width, supernet)
            curves[key].append(train(warm, x, y, xt, yt, train_settings, torch.device("cpu"), 0)[1])
        log(f"transfer {name}: " + ", ".join(f"{k[:1]}={v[-1][-1]:.3f}" for k, v in curves.items()))
    per_start = {k: [round(float(a), 4) for a in np.mean(np.array(v), axis=0)] for k, v in curves.items()}
    finals = np.array([[c[-1] for c in v] for v in curves.values()])  # [start, dataset]
    worst = finals.argmin(0)
    return {
        "datasets": HELD_OUT,
        "constraint_max_params": limit,
        "epochs": epochs,
        "mean_accuracy_per_epoch": per_start,
        "final_accuracy_per_dataset": {k: [round(float(c[-1]), 4) for c in v] for k, v in curves.items()},
        "tans_best_on_average": bool(finals.mean(1).argmax() == 0),
        "tans_never_worst": bool((worst != 0).all()),
    }


def latency(store, t, settings, model) -> dict:
    from tans.retriever.search import Searcher, top_by_cosine

    out = {}
    q = torch.nn.functional.normalize(torch.randn(128), dim=0).numpy()
    for n in (14_000, 1_000_000):
        emb = np.random.default_rng(0).normal(size=(n, 128)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        ok = np.ones(n, dtype=bool)
        times = []
        for _ in range(20):
            started = time.perf_counter()
            top_by_cosine(emb, q, ok, 10)
            times.append(time.perf_counter() - started)
        out[f"search_ms_{n}"] = round(statistics.median(times) * 1000, 3)
    searcher = Searcher(store)
    from tans.pipeline.datasets.ingest import read_images

    by_class, _ = read_images(
        str(ROOT / "bench" / ".cache" / "acquisition-pool" / "datasets" / "glyphs-latin-upper-clean")
    )
    images, labels = [], []
    for label, cls in enumerate(sorted(by_class)):
        images += by_class[cls]
        labels += [label] * len(by_class[cls])
    searcher.query_features(images[:20], labels[:20])  # load the backbone once
    times = []
    for _ in range(5):
        started = time.perf_counter()
        searcher.search(searcher.query_features(images, labels, per_class=10), top_k=10, rerank="none")
        times.append(time.perf_counter() - started)
    out["search_with_features_ms_20_classes_10_per_class"] = round(statistics.median(times) * 1000, 1)
    return out


def training_time_14k(settings) -> dict:
    from tans.retriever.train import ZooTensors, train_retriever

    rng = np.random.default_rng(0)
    datasets = [f"d{i:03d}" for i in range(140)]
    feats = {d: (rng.normal(size=(200, 1280)).astype(np.float32), np.repeat(np.arange(10), 20)) for d in datasets}
    n = 14_000
    t = ZooTensors(
        datasets,
        feats,
        feats,
        [None] * n,
        None,
        torch.from_numpy(rng.integers(0, 7, (n, 45)).astype(np.float32)),
        torch.from_numpy(rng.normal(size=(n, 1280)).astype(np.float32)),
        torch.from_numpy(rng.uniform(0.05, 0.95, n).astype(np.float32)),
        np.repeat(np.arange(140), 100),
    )
    started = time.perf_counter()
    train_retriever(t, settings, log=lambda line: None)
    return {"train_seconds_14k_zoo": round(time.perf_counter() - started, 1), "train_steps": settings.steps}


def main() -> None:
    from acquisition import build_pool

    from tans.retriever.train import RetrainSettings, gather

    _, store, _ = build_pool()
    started = time.perf_counter()
    settings = RetrainSettings(backbone=pretrained_base(store))
    pretrain = json.loads((ROOT / "bench" / ".cache" / "pretrained-base.json").read_text())
    figures = {
        "pretrain_base": {
            k: pretrain[k]
            for k in (
                "steps",
                "classes",
                "train_images",
                "seconds",
                "first_loss",
                "final_loss",
                "test_accuracy_largest",
                "test_accuracy_smallest",
            )
            if k in pretrain
        }
    }
    figures["pretrain_base"]["steps"] = pretrain["settings"]["steps"]
    t = gather(store, 32, settings.backbone)
    t_random = gather(store, 32)
    log(f"zoo: {len(t.dataset_ids)} datasets, {len(t.results)} models (features {time.perf_counter() - started:.1f}s)")
    figures["zoo"] = {"datasets": len(t.dataset_ids), "models": len(t.results)}
    figures["same_pair"], model = same_pair(t, settings, t_random)
    figures["paper_same_pair"] = {"R@1": 80.7, "R@5": 96.4, "R@10": 99.3}
    from tans.workers.networks.ofa_space import build_supernet
    from tans.workers.networks.weights import read_state_dict

    pretrained = build_supernet(1.0)
    pretrained.load_state_dict(read_state_dict(settings.backbone))
    figures["transfer"] = transfer(store, t, settings, model, {"f_same_arch_pretrained_base": pretrained})
    # the same protocol on a zoo whose networks were fine-tuned from the pretrained supernet
    from tans.retriever.train import evaluate, train_retriever

    store2 = pretrained_zoo(settings.backbone)
    t2 = gather(store2, 32)  # its base weights are the pretrained supernet: the default backbone
    settings2 = replace(settings, backbone="")
    model2, _ = train_retriever(t2, settings2, log=lambda line: None)
    same2 = evaluate(model2, t2, settings2, queries_per_dataset=10)
    figures["pretrained_zoo"] = {
        "models": len(t2.results),
        "datasets": len(t2.dataset_ids),
        "mean_accuracy": round(float(np.mean([r.accuracy for r in t2.results])), 4),
        "pool_zoo_mean_accuracy": round(float(np.mean([r.accuracy for r in t.results])), 4),
        "same_pair": {k: round(v, 4) if isinstance(v, float) else v for k, v in same2.items()},
        "transfer": transfer(store2, t2, settings2, model2, {}),
    }
    figures["latency"] = latency(store, t, settings, model)
    figures["training"] = training_time_14k(settings)
    figures["goals"] = {
        "R@1": ">= 80.7",
        "search_ms_14000": "< 5",
        "search_ms_1000000": "< 100",
        "search_with_features_ms": "< 1000",
        "train_seconds_14k_zoo": "< 600",
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
