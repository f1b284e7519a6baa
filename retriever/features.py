"""Frozen backbone features of sampled dataset images, computed once and cached in the zoo.

The backbone is the largest subnet of the OFA supernet with the zoo's base weights (an
offline stand-in for the paper's ImageNet ResNet18; with pretrained base weights it is a
pretrained network). Up to `PER_CLASS_CAP` images per class of a split are embedded and
cached in `query_features/<dataset_id>/<split>.safetensors` with the backbone id; the
acquisition predictor's dataset features and the retriever's query sets both read them.
"""
from __future__ import annotations

import random

import numpy as np

from zoo_schema.manifest import Manifest
from zoo_schema.store import ZooStore

PER_CLASS_CAP = 20


def backbone_id(manifest: Manifest, image_size: int) -> str:
    return f"ofa-max:{manifest.base_weights['id']}:w{manifest.width}:{image_size}px"


def load_backbone(store: ZooStore, manifest: Manifest):
    """The largest subnet with the base weights, frozen, in eval mode."""
    from workers.finetune import load_base_supernet
    supernet = load_base_supernet(store, manifest.width, manifest.base_weights)
    supernet.set_max_net()
    return supernet.get_active_subnet(preserve_weight=True).eval()


def embed_images(backbone, images: list[bytes], image_size: int, batch: int = 128) -> np.ndarray:
    import torch
    from workers.finetune import decode_images
    from workers.ofa_space import penultimate
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(decode_images(images[i:i + batch], image_size))
            out.append(penultimate(backbone, x).numpy())
    return np.concatenate(out).astype(np.float32)


def sample_per_class(labels: list[int], per_class: int, seed: str) -> list[int]:
    """Indices of up to `per_class` items of every class, seeded, in class order."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(seed)
    return [i for c in sorted(by_class) for i in sorted(rng.sample(by_class[c], min(per_class, len(by_class[c]))))]


def split_features(store: ZooStore, manifest: Manifest, dataset_id: str, split: str, image_size: int,
                   backbone=None) -> tuple[np.ndarray, np.ndarray]:
    """(features [n, d], labels [n]) of up to PER_CLASS_CAP images per class (cached)."""
    from safetensors.numpy import load, save
    key = f"query_features/{dataset_id}/{split}.safetensors"
    bid = backbone_id(manifest, image_size)
    if store.exists(key):
        blob = store.read_bytes(key)
        meta = _metadata(blob)
        if meta.get("backbone") == bid:
            arrays = load(blob)
            return arrays["features"], arrays["labels"]
    from pipeline.ingest import load_split
    images, labels = load_split(store, dataset_id, split)
    chosen = sample_per_class(labels, PER_CLASS_CAP, f"{dataset_id}:{split}")
    backbone = backbone if backbone is not None else load_backbone(store, manifest)
    feats = embed_images(backbone, [images[i] for i in chosen], image_size)
    labs = np.array([labels[i] for i in chosen], dtype=np.int64)
    store.write_bytes(key, save({"features": feats, "labels": labs}, metadata={"backbone": bid}))
    return feats, labs


def _metadata(blob: bytes) -> dict:
    import json
    import struct
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]).get("__metadata__", {})
