"""Computing what `priors` holds: the pool's arch profiles (measured once with the base
weights and cached in `pool/profiles.parquet`) and each dataset's feature (cached by
`tans.retriever.features`). This is the part that needs torch and the networks."""

from __future__ import annotations

import numpy as np

from tans.pipeline.acquisition.priors import PROFILES_KEY, ArchProfile, Prior, cached_profiles
from tans.retriever.features import load_backbone, split_features
from tans.workers.measure_archs import profile_archs
from tans.workers.networks.ofa_space import arch_pool
from tans.zoo_schema.manifest import Manifest
from tans.zoo_schema.records import to_table
from tans.zoo_schema.store import ZooStore


def profile_pool(
    store: ZooStore, manifest: Manifest, image_size: int, log=print, executor=None
) -> dict[str, ArchProfile]:
    """The pool's arch profiles, computed once and cached in the zoo: in parallel chunks on
    the executor's workers (`Executor.profile`), or here on one CPU thread without one."""
    wanted = [a.id for a in arch_pool(manifest.pool_seed, manifest.pool_size)]
    cached = cached_profiles(store)
    if cached is not None and set(wanted) <= set(cached):
        return {a: cached[a] for a in wanted}
    log(f"profiling the {len(wanted)} pool architectures (params, FLOPs, latency, functional embedding)")
    if executor is not None:
        profiles = executor.profile(manifest, wanted, image_size)
    else:
        import torch

        torch.set_num_threads(1)
        profiles = profile_archs(store, manifest, wanted, image_size)
    store.write_table(PROFILES_KEY, to_table(profiles))
    return {p.arch: p for p in profiles}


def dataset_feature(store: ZooStore, manifest: Manifest, dataset_id: str, image_size: int, backbone=None) -> np.ndarray:
    """[mean, std] of the frozen backbone features of the dataset's sampled train images."""
    feats, _ = split_features(store, manifest, dataset_id, "train", image_size, backbone)
    return np.concatenate([feats.mean(0), feats.std(0)]).astype(np.float32)


def load_prior(store: ZooStore, manifest: Manifest, dataset_ids: list[str], image_size: int, log=print) -> Prior:
    """Features of every dataset and profiles of every pool arch, computing what is missing."""
    profiles = profile_pool(store, manifest, image_size, log)
    backbone = load_backbone(store, manifest)
    features = {d: dataset_feature(store, manifest, d, image_size, backbone) for d in dataset_ids}
    return Prior(features, profiles)
