"""Frozen backbone features of sampled dataset images, computed once and cached in the zoo.

The default backbone is the largest subnet of the OFA supernet with the zoo's base weights
(an offline stand-in for the paper's ImageNet ResNet18; with pretrained base weights it is
a pretrained network); a supernet file from `tans pretrain-base` or a torchvision ResNet18
state_dict file can be named instead. Up to
`PER_CLASS_CAP` images per class of a split are embedded and cached in
`query_features/<backbone tag>/<dataset_id>/<split>.safetensors` with the backbone id; the
acquisition predictor's dataset features and the retriever's query sets both read them.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct

import numpy as np
import torch
from safetensors.numpy import load as numpy_load
from safetensors.numpy import save as numpy_save
from safetensors.torch import load as torch_load
from safetensors.torch import save as torch_save

from tans.workers.networks.images import decode_images
from tans.workers.networks.mbv3 import largest_subnet
from tans.workers.networks.nets import base_supernet_state
from tans.workers.networks.ofa_space import build_supernet
from tans.workers.networks.weights import read_state_dict
from tans.zoo_schema import layout
from tans.zoo_schema.errors import ConfigError
from tans.zoo_schema.manifest import Manifest
from tans.zoo_schema.shards import load_split
from tans.zoo_schema.store import ZooStore

PER_CLASS_CAP = 20


class Backbone:
    """A frozen image feature extractor: `tag` names it in cache keys, `id` says which weights
    it holds, `key` is its weights' zoo key ("" for the zoo's base supernet)."""

    def __init__(self, tag: str, id: str, key: str, net, kind: str):
        self.tag, self.id, self.key, self.net, self.kind = tag, id, key, net.eval(), kind

    def embed(self, x):
        return self.net(x)  # ResNet18 without its fc, or the OFA largest subnet's penultimate layer


def load_backbone(store: ZooStore, manifest: Manifest, spec: str = "") -> Backbone:
    """The zoo's base supernet's largest subnet (spec ""), or the weights in a file: an OFA
    supernet (`tans pretrain-base` writes one) or a torchvision ResNet18 ImageNet state_dict,
    local or s3:// (or already in the zoo as `base/...`). A file is copied into the zoo
    (safetensors) so that search finds the same backbone later."""
    if not spec:
        state = base_supernet_state(store, manifest.width, manifest.base_weights)
        return Backbone(
            "base", f"ofa-max:{manifest.base_weights.id}:w{manifest.width}", "", largest_subnet(state), "ofa"
        )
    what = "retrain.backbone (a `tans pretrain-base` supernet or a torchvision resnet18)"
    if spec.startswith("base/"):
        blob = store.read_bytes(spec)
        state, key = torch_load(blob), spec
    else:
        state = read_state_dict(spec, what=what)
        blob = torch_save({k: v.contiguous() for k, v in state.items()})
        key = layout.base_weights_key(hashlib.sha256(blob).hexdigest())
    sha = hashlib.sha256(blob).hexdigest()
    try:
        if "first_conv.conv.weight" in state:
            width = {1280: 1.0, 1536: 1.2}[state["feature_mix_layer.conv.weight"].shape[0]]
            if not spec.startswith("base/"):  # a new file: the whole supernet, not only its largest subnet
                build_supernet(width).load_state_dict(state)
            backbone = Backbone(
                f"ofa-{sha[:12]}", f"ofa-max:sha256:{sha[:16]}:w{width}", key, largest_subnet(state), "ofa"
            )
        else:
            import torchvision  # 1.3 s of import (it pulls in torch._dynamo): only for this backbone

            net = torchvision.models.resnet18(weights=None)
            net.load_state_dict(state)
            net.fc = torch.nn.Identity()
            backbone = Backbone(f"resnet18-{sha[:12]}", f"resnet18-{sha[:12]}", key, net, "resnet18")
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"{what}: {spec} holds neither: {str(e).splitlines()[0][:200]}") from None
    if not spec.startswith("base/"):
        store.write_bytes(key, blob, create_only=True)
    return backbone


def backbone_id(backbone: Backbone, image_size: int) -> str:
    return f"{backbone.id}:{image_size}px"


def embed_images(backbone: Backbone, images: list[bytes], image_size: int, batch: int = 128) -> np.ndarray:
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(decode_images(images[i : i + batch], image_size))
            out.append(backbone.embed(x).numpy())
    return np.concatenate(out).astype(np.float32)


def sample_per_class(labels: list[int], per_class: int, seed: str) -> list[int]:
    """Indices of up to `per_class` items of every class, seeded, in class order."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(seed)
    return [i for c in sorted(by_class) for i in sorted(rng.sample(by_class[c], min(per_class, len(by_class[c]))))]


def split_features(
    store: ZooStore, manifest: Manifest, dataset_id: str, split: str, image_size: int, backbone: Backbone | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(features [n, d], labels [n]) of up to PER_CLASS_CAP images per class (cached)."""
    backbone = backbone if backbone is not None else load_backbone(store, manifest)
    key = layout.query_features_key(backbone.tag, dataset_id, split)
    bid = backbone_id(backbone, image_size)
    if store.exists(key):
        blob = store.read_bytes(key)
        meta = _metadata(blob)
        if meta.get("backbone") == bid:
            arrays = numpy_load(blob)
            return arrays["features"], arrays["labels"]
    images, labels = load_split(store, dataset_id, split)
    chosen = sample_per_class(labels, PER_CLASS_CAP, f"{dataset_id}:{split}")
    feats = embed_images(backbone, [images[i] for i in chosen], image_size)
    labs = np.array([labels[i] for i in chosen], dtype=np.int64)
    store.write_bytes(key, numpy_save({"features": feats, "labels": labs}, metadata={"backbone": bid}))
    return feats, labs


def _metadata(blob: bytes) -> dict:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]).get("__metadata__", {})
