"""Frozen backbone features of sampled dataset images, computed once and cached in the zoo.

The default backbone is the largest subnet of the OFA supernet with the zoo's base weights
(an offline stand-in for the paper's ImageNet ResNet18; with pretrained base weights it is
a pretrained network); a torchvision ResNet18 state_dict file can be named instead. Up to
`PER_CLASS_CAP` images per class of a split are embedded and cached in
`query_features/<backbone tag>/<dataset_id>/<split>.safetensors` with the backbone id; the
acquisition predictor's dataset features and the retriever's query sets both read them.
"""
from __future__ import annotations

import random

import numpy as np

from zoo_schema.manifest import Manifest
from zoo_schema.store import ZooStore

PER_CLASS_CAP = 20


class Backbone:
    """A frozen image feature extractor: `tag` names it in cache keys, `key` is its weights'
    zoo key ("" for the base supernet, whose weights the manifest already names)."""

    def __init__(self, tag: str, key: str, net, kind: str):
        self.tag, self.key, self.net, self.kind = tag, key, net.eval(), kind

    def embed(self, x):
        from workers.ofa_space import penultimate
        return self.net(x) if self.kind == "resnet18" else penultimate(self.net, x)


def load_backbone(store: ZooStore, manifest: Manifest, spec: str = "") -> Backbone:
    """The base supernet's largest subnet (spec ""), or a torchvision ResNet18 whose ImageNet
    state_dict the user has as a local or s3:// file (or already in the zoo as `base/...`).
    A ResNet18 file is copied into the zoo (safetensors) so search finds it later."""
    if not spec:
        from workers.finetune import load_base_supernet
        supernet = load_base_supernet(store, manifest.width, manifest.base_weights)
        supernet.set_max_net()
        return Backbone("base", "", supernet.get_active_subnet(preserve_weight=True), "ofa")
    import hashlib

    import torch
    import torchvision
    from safetensors.torch import load, save

    from pipeline.weights import read_state_dict
    if spec.startswith("base/"):
        state = load(store.read_bytes(spec))
    else:
        state = read_state_dict(spec, what="retrain.backbone (a torchvision resnet18)")
    net = torchvision.models.resnet18(weights=None)
    net.load_state_dict(state)
    net.fc = torch.nn.Identity()
    blob = save({k: v.contiguous() for k, v in state.items()})
    sha = hashlib.sha256(blob).hexdigest()
    key = spec if spec.startswith("base/") else f"base/resnet18-{sha}.safetensors"
    if not spec.startswith("base/"):
        store.write_bytes(key, blob, create_only=True)
    return Backbone(f"resnet18-{sha[:12]}", key, net, "resnet18")


def backbone_id(manifest: Manifest, backbone: Backbone, image_size: int) -> str:
    base = f"ofa-max:{manifest.base_weights['id']}:w{manifest.width}" if backbone.kind == "ofa" else backbone.tag
    return f"{base}:{image_size}px"


def embed_images(backbone: Backbone, images: list[bytes], image_size: int, batch: int = 128) -> np.ndarray:
    import torch
    from workers.finetune import decode_images
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(decode_images(images[i:i + batch], image_size))
            out.append(backbone.embed(x).numpy())
    return np.concatenate(out).astype(np.float32)


def sample_per_class(labels: list[int], per_class: int, seed: str) -> list[int]:
    """Indices of up to `per_class` items of every class, seeded, in class order."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(seed)
    return [i for c in sorted(by_class) for i in sorted(rng.sample(by_class[c], min(per_class, len(by_class[c]))))]


def split_features(store: ZooStore, manifest: Manifest, dataset_id: str, split: str, image_size: int,
                   backbone: Backbone | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features [n, d], labels [n]) of up to PER_CLASS_CAP images per class (cached)."""
    from safetensors.numpy import load, save
    backbone = backbone if backbone is not None else load_backbone(store, manifest)
    key = f"query_features/{backbone.tag}/{dataset_id}/{split}.safetensors"
    bid = backbone_id(manifest, backbone, image_size)
    if store.exists(key):
        blob = store.read_bytes(key)
        meta = _metadata(blob)
        if meta.get("backbone") == bid:
            arrays = load(blob)
            return arrays["features"], arrays["labels"]
    from pipeline.ingest import load_split
    images, labels = load_split(store, dataset_id, split)
    chosen = sample_per_class(labels, PER_CLASS_CAP, f"{dataset_id}:{split}")
    feats = embed_images(backbone, [images[i] for i in chosen], image_size)
    labs = np.array([labels[i] for i in chosen], dtype=np.int64)
    store.write_bytes(key, save({"features": feats, "labels": labs}, metadata={"backbone": bid}))
    return feats, labs


def _metadata(blob: bytes) -> dict:
    import json
    import struct
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]).get("__metadata__", {})
