"""Networks: OFA subnets with a classifier for a dataset, the zoo's base supernet, and the
fine-tuned networks of result rows (their checkpoints' sha256 verified)."""

from __future__ import annotations

import hashlib

from tans.workers.networks.ofa_space import Arch, build_subnet, build_supernet
from tans.zoo_schema.errors import StorageError
from tans.zoo_schema.layout import checkpoint_location
from tans.zoo_schema.manifest import BaseWeights
from tans.zoo_schema.records import ResultRecord
from tans.zoo_schema.store import ZooStore


def base_supernet_state(store: ZooStore, width: float, base_weights: BaseWeights) -> dict:
    """The state dict of the zoo's base supernet: its stored file, sha256 verified, or (random
    base weights) a supernet initialised with the recorded seed."""
    import torch
    from safetensors.torch import load as load_safetensors

    if base_weights.kind == "random":
        torch.manual_seed(base_weights.seed)
        return build_supernet(width).state_dict()
    data = store.read_bytes(base_weights.key)
    if hashlib.sha256(data).hexdigest() != base_weights.sha256:
        raise StorageError(
            f"base weights {base_weights.key} in {store.uri} do not match their "
            "recorded sha256; the zoo's copy is corrupt: restore that file from the weights "
            "the zoo was built with (its name is its sha256)"
        )
    return load_safetensors(data)


def load_base_supernet(store: ZooStore, width: float, base_weights: BaseWeights):
    """The OFA supernet with the zoo's base weights (random with a seed, or a stored file)."""
    import torch

    if base_weights.kind == "random":
        torch.manual_seed(base_weights.seed)
        return build_supernet(width)
    supernet = build_supernet(width)
    supernet.load_state_dict(base_supernet_state(store, width, base_weights))
    return supernet


def model_for(arch_id: str, num_classes: int, width: float, supernet=None):
    """An OFA subnet of `arch_id` with a classifier for `num_classes` (weights from supernet)."""
    return build_subnet(supernet if supernet is not None else build_supernet(width), Arch.parse(arch_id), num_classes)


def checkpoint_bytes(store: ZooStore, record: ResultRecord) -> bytes:
    """The checkpoint file of a result row, its sha256 verified."""
    holder, key = checkpoint_location(store, record.checkpoint_uri)
    data = holder.read_bytes(key)
    if hashlib.sha256(data).hexdigest() != record.checkpoint_sha256:
        raise StorageError(
            f"checkpoint {holder.uri_of(key)} does not match its recorded sha256; "
            f"it is corrupt: run `tans verify {store.uri}`"
        )
    return data


def checkpoint_features(store: ZooStore, record: ResultRecord):
    """The fine-tuned network of a result row up to its penultimate layer, in plain torch
    (`tans.workers.networks.mbv3`; no ofa import): net(x) is `ofa_space.penultimate` of `load_checkpoint`."""
    from safetensors.torch import load as load_safetensors

    from tans.workers.networks.mbv3 import static_subnet

    return static_subnet(load_safetensors(checkpoint_bytes(store, record)), Arch.parse(record.arch).depths)


def checkpoint_network(store: ZooStore, record: ResultRecord):
    """The fine-tuned network of a result row, its classifier included, in plain torch
    (`tans.workers.networks.mbv3.Network`; no ofa import), in eval mode: the logits of
    `load_checkpoint`'s up to float rounding, built in half its time. What `tans search`
    fine-tunes."""
    from safetensors.torch import load as load_safetensors

    from tans.workers.networks.mbv3 import static_subnet

    state = load_safetensors(checkpoint_bytes(store, record))
    return static_subnet(state, Arch.parse(record.arch).depths, classifier=True)


def load_checkpoint(store: ZooStore, record: ResultRecord, width: float):
    """The fine-tuned network of a result row, its sha256 verified."""
    from safetensors.torch import load as load_safetensors

    data = checkpoint_bytes(store, record)
    model = model_for(record.arch, record.num_classes, width)
    model.load_state_dict(load_safetensors(data))
    return model.eval()
