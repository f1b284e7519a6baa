"""Profiling candidate architectures before any training: parameters, FLOPs, batch-1
latency and functional embedding of each pool arch with the base weights. The driver has
them computed once per zoo, in parallel chunks on the workers (`RayExecutor.profile`)."""
from __future__ import annotations

from workers.measure import count_flops, functional_embedding, measure_latency_ms
from workers.nets import load_base_supernet
from workers.ofa_space import Arch, build_subnet
from zoo_schema.manifest import Manifest
from zoo_schema.records import ArchProfile
from zoo_schema.store import S3Settings, ZooStore, open_store

LATENCY_REPEATS = 10


def profile_archs(store: ZooStore, manifest: Manifest, arch_ids: list[str], image_size: int,
                  device=None, supernet=None) -> list[ArchProfile]:
    """The profiles of `arch_ids`, in order, measured on `device` (default: CPU), with the
    zoo's base supernet (`supernet` when the caller holds it already; it is not modified)."""
    import torch
    device = device or torch.device("cpu")
    if supernet is None:
        supernet = load_base_supernet(store, manifest.width, manifest.base_weights)
    profiles = []
    for arch_id in arch_ids:
        model = build_subnet(supernet, Arch.parse(arch_id), num_classes=10).eval()
        params, flops = sum(p.numel() for p in model.parameters()), count_flops(model, image_size)
        model.to(device)
        profiles.append(ArchProfile(
            arch=arch_id, params=params, flops=flops,
            latency_ms=measure_latency_ms(model, image_size, device, repeats=LATENCY_REPEATS),
            functional_embedding=functional_embedding(model, manifest.noise_seed, manifest.noise_shape, device)))
    return profiles


def profile_remote(zoo_uri: str, s3: S3Settings | None, manifest: Manifest, arch_ids: list[str],
                   image_size: int, threads: int, cache=None) -> list[ArchProfile]:
    """`profile_archs` on a worker: on its GPU when it has one, like its jobs. A warm worker
    passes its `JobCache`, so the base supernet it loads here serves its jobs afterwards."""
    import torch
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    store = open_store(zoo_uri, s3)
    supernet = cache.supernet(store, manifest.width, manifest.base_weights) if cache is not None else None
    return profile_archs(store, manifest, arch_ids, image_size, device, supernet)
