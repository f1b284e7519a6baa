"""Computing what `profiles` holds: the pool's arch profiles (measured once with the base
weights and cached in `pool/profiles.parquet`) and each dataset's feature (cached by
`retriever.features`). This is the part that needs torch and the networks."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.acquisition.profiles import PROFILES_KEY, ArchProfile, Prior, cached_profiles
from retriever.features import load_backbone, split_features
from workers.measure import count_flops, functional_embedding, measure_latency_ms
from workers.nets import load_base_supernet
from workers.ofa_space import arch_pool, build_subnet
from zoo_schema.manifest import Manifest
from zoo_schema.store import ZooStore


def profile_pool(store: ZooStore, manifest: Manifest, image_size: int, log=print) -> dict[str, ArchProfile]:
    """The pool's arch profiles, computed once and cached in the zoo."""
    cached = cached_profiles(store)
    if cached is not None:
        wanted = [a.id for a in arch_pool(manifest.pool_seed, manifest.pool_size)]
        if set(wanted) <= set(cached):
            return {a: cached[a] for a in wanted}
    import torch
    torch.set_num_threads(1)
    pool = arch_pool(manifest.pool_seed, manifest.pool_size)
    log(f"profiling the {len(pool)} pool architectures (params, FLOPs, latency, functional embedding)")
    supernet = load_base_supernet(store, manifest.width, manifest.base_weights)
    device = torch.device("cpu")
    profiles = {}
    for arch in pool:
        model = build_subnet(supernet, arch, num_classes=10).eval()
        profiles[arch.id] = ArchProfile(
            arch=arch.id, params=sum(p.numel() for p in model.parameters()),
            flops=count_flops(model, image_size),
            latency_ms=measure_latency_ms(model, image_size, device, repeats=10),
            functional_embedding=functional_embedding(model, manifest.noise_seed, manifest.noise_shape, device))
    table = pa.Table.from_pylist([p.__dict__ for p in profiles.values()])
    store.write_table(PROFILES_KEY, table)
    return profiles


def dataset_feature(store: ZooStore, manifest: Manifest, dataset_id: str, image_size: int,
                    backbone=None) -> np.ndarray:
    """[mean, std] of the frozen backbone features of the dataset's sampled train images."""
    feats, _ = split_features(store, manifest, dataset_id, "train", image_size, backbone)
    return np.concatenate([feats.mean(0), feats.std(0)]).astype(np.float32)


def load_prior(store: ZooStore, manifest: Manifest, dataset_ids: list[str], image_size: int,
               log=print) -> Prior:
    """Features of every dataset and profiles of every pool arch, computing what is missing."""
    profiles = profile_pool(store, manifest, image_size, log)
    backbone = load_backbone(store, manifest)
    features = {d: dataset_feature(store, manifest, d, image_size, backbone) for d in dataset_ids}
    return Prior(features, profiles)
